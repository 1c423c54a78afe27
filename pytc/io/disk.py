"""Disk safety: one-line errors for a full or read-only disk (:func:`disk_errors`, :func:`errno_of`), small files
written all or nothing (:func:`write_atomic`), and checks before the work (:func:`check_writable`,
:func:`check_not_input`)."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
from pathlib import Path
from typing import Callable

from pytc.errors import PytcError, VolumeError
from pytc.io import common
from pytc.io.addresses import parse_spec
from pytc.io.volume import open_volume

# Errors of the disk rather than of pytc: reported as one line (VolumeError), never as a traceback.
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DISK_ERRNOS = _FULL_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


FULL_BELOW = 16 * 2**20  # free bytes under which a write that failed without saying why failed for want of space


# An errno written into a message: h5py ("errno = 28"), Rust's io::Error as safetensors prints it
# ("os error 28", "code: 28").
_ERRNO_IN_MESSAGE = re.compile(r"(?:os error |code: |errno = )(\d+)")


def errno_of(err: BaseException) -> int | None:
    """The errno an error carries: an ``OSError``'s own (when set), else the one its message names
    (h5py and safetensors put it only there), else None."""
    if isinstance(err, OSError) and err.errno:
        return err.errno
    found = _ERRNO_IN_MESSAGE.search(str(err))
    return int(found[1]) if found else None


def _disk_errno(err: BaseException, target: str | os.PathLike | None = None) -> int | None:
    """The errno of a failed write when the disk is to blame (:func:`errno_of`). numpy's ``tofile``
    (tifffile, zarr) raises ``OSError("N requested and M written")`` without one, and h5py some
    ``RuntimeError`` without one: those count as a full disk only when the disk of ``target`` is
    really (nearly) full."""
    if not isinstance(err, (OSError, RuntimeError)):
        return None
    code = errno_of(err)
    if code in _DISK_ERRNOS:
        return code
    if getattr(err, "errno", None) is None and target is not None and disk_is_full(target):
        return errno.ENOSPC
    return None


def disk_is_full(target: str | os.PathLike) -> bool:
    """Whether the file system of ``target`` has less than :data:`FULL_BELOW` free: the test every
    writer applies to a failure that does not say why it failed."""
    return _free_bytes(target) < FULL_BELOW


def _free_bytes(target: str | os.PathLike) -> float:
    """Free bytes on the file system of ``target`` (an address or a path; inf when unknown)."""
    try:
        here = parse_spec(target).path.absolute()
    except VolumeError:
        here = Path(os.fspath(target)).absolute()
    while not here.is_dir() and here != here.parent:
        here = here.parent
    try:
        disk = os.statvfs(here)
    except OSError:
        return math.inf
    return disk.f_bavail * disk.f_frsize


@contextlib.contextmanager
def disk_errors(target: str | os.PathLike):
    """Turn a disk-full / read-only / permission error while writing ``target`` into a one-line
    :class:`VolumeError`; other errors pass through."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        code = _disk_errno(err, target)
        if code is None:
            raise
        advice = "free some space or choose another output" if code in _FULL_ERRNOS else "choose another output"
        raise VolumeError(f"cannot write {target} ({os.strerror(code)}); {advice}, then rerun") from None


def write_atomic(path: str | os.PathLike, data: "str | bytes | Callable[[Path], object]") -> Path:
    """Write ``path`` all or nothing: into a temporary beside it, then renamed over it.

    Args:
        path: The file to write.
        data: Text, bytes, or a function that writes the temporary path it is given (e.g. an image's
            ``save``).

    Raises:
        VolumeError: the disk is full or the folder is not writable (one line); no temporary is left.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{common.TMP_TAG}{os.getpid()}")
    try:
        with disk_errors(path):
            if callable(data):
                data(tmp)
            elif isinstance(data, bytes):
                tmp.write_bytes(data)
            else:
                tmp.write_text(data)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_writable(path: str | os.PathLike, folder: bool = False) -> None:
    """Fail fast, before any long work, when ``path`` cannot be written.

    The nearest existing folder on the way to ``path`` (``path`` itself when ``folder`` and it
    exists) must be a folder that this process may write. A regular file in the way fails even for
    root, who ignores permission bits.

    Raises:
        VolumeError: a file where a folder is needed, or a folder without write permission.
    """
    import tempfile

    path = Path(os.fspath(path)).absolute()
    here = path if folder else path.parent
    while not here.exists() and here != here.parent:
        if here.is_symlink():  # a link to an unmounted share, say: mkdir would fail with "File exists"
            raise VolumeError(f"cannot write {path}: {here} links to {os.readlink(here)}, which does not exist; "
                              "fix the link or choose another output path")
        here = here.parent
    if not here.is_dir():
        raise VolumeError(f"cannot write {path}: {here} is a file, not a folder; choose another output path")
    if not os.access(here, os.W_OK | os.X_OK):
        raise VolumeError(f"cannot write {path}: folder {here} is not writable; choose another output path")
    try:  # what permission bits do not tell: read-only mounts, /proc and /sys, full quotas
        with tempfile.TemporaryFile(dir=here):
            pass
    except OSError as err:
        raise VolumeError(f"cannot write {path}: folder {here} takes no new files ({err.strerror or err}); "
                          "choose another output path") from None


def check_not_input(output: str | os.PathLike, inputs, what: str = "output") -> None:
    """Refuse an output that is (or holds, or lies inside) one of ``inputs``: with ``--force`` it
    would replace the data being read. Different datasets of one HDF5 file, or different arrays of
    one Zarr group, are distinct.

    Raises:
        VolumeError: ``output`` and an input are the same file, store, dataset or array.
    """
    out = _address(output)
    for given in inputs:
        if given is None:
            continue
        src = _address(given)
        if src[1] is None:  # the dataset or array a key-less address reads (the file's only one, OME's "0")
            try:
                with open_volume(given) as vol:
                    src = (src[0], vol.key.strip("/") if vol.key else None)
            except PytcError:
                pass  # unreadable: the command says why when it opens it
        if out[0] == src[0]:
            same = out[1] is None or src[1] is None or out[1] == src[1] or \
                out[1].startswith(src[1] + "/") or src[1].startswith(out[1] + "/")
        else:  # a file inside an input store (a JSON report in a Zarr folder, say), or a store around an input
            same = (out[0] in src[0].parents and out[0].is_dir()) or (src[0] in out[0].parents and src[0].is_dir())
        if same:
            raise VolumeError(f"{what} {os.fspath(output)} is also the input {os.fspath(given)}; writing it would "
                              "replace what is being read: choose another output")


def _address(spec) -> tuple[Path, str | None]:
    """(resolved path, inner key) of a volume address or a plain file path."""
    try:
        vs = parse_spec(spec)
        path, key = vs.path, (vs.key.strip("/") if vs.key else None)
    except VolumeError:  # not a volume (a .json report): a plain file
        path, key = Path(os.fspath(spec)), None
    return path.expanduser().resolve(), key


