"""Exclusive locks on run folders and outputs, so two pytc processes never write one place.

A lock is a small file (``.NAME.pytc-lock`` beside an output, ``.pytc-lock`` inside a run folder)
holding the holder's pid, host, start time and command. Two processes are kept apart by an
operating-system lock on that file (``fcntl.flock``), which the kernel drops when its process
dies — so a lock left by a ``kill -9`` or a crashed node is never *stale*: the next process simply
takes it. The file's content is only there to name the holder in the refusal.

Where the file system has no ``flock`` (some FUSE or Lustre mounts without the ``flock`` option),
the lock falls back to creating the file exclusively (``O_EXCL``); a leftover file whose holder ran
on this host and is no longer alive is detected as stale and taken over; one from another host is
named in the refusal, with the file to remove if that host is gone.

Why not ``filelock`` (which torch already installs): it truncates the lock file when it opens it,
which would erase the holder's name before we could show it, and it has no stale-holder check for
its ``O_EXCL`` variant.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from pytc.errors import PytcError

try:  # POSIX only; see the O_EXCL fallback below
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_SUFFIX = ".pytc-lock"
_NO_FLOCK = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL}


class LockedError(PytcError):
    """Another process holds the lock on a run folder or output."""


def lock_path_for(target: str | os.PathLike) -> Path:
    """The lock file that guards ``target``: ``.NAME.pytc-lock`` beside it."""
    target = Path(os.fspath(target)).absolute()
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


def _holder_info() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200],
    }


def read_holder(path: str | os.PathLike) -> dict | None:
    """The holder recorded in lock file ``path`` (None when absent or unreadable)."""
    try:
        with open(path, "rb") as f:
            info = json.loads(f.read(4096).decode("utf-8", "replace") or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe(info: dict | None) -> str:
    if not info:
        return "another process"
    text = f"pid {info.get('pid')} on host {info.get('host')}"
    if info.get("since"):
        text += f" since {info['since']}"
    if info.get("command"):
        text += f" ({info['command']})"
    return text


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Held:
    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    def release(self) -> None:
        # Unlink before unlocking: a process that opened the old file then finds, once it holds the
        # flock, that the path now names another (or no) file, and starts over (see _try_flock).
        with contextlib.suppress(OSError):
            if self.fd is None or os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock


def _write_info(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(_holder_info()).encode())


def _try_flock(path: Path) -> _Held | None | bool:
    """Held lock, None when someone else holds it, False when the file system has no flock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            if err.errno in _NO_FLOCK:
                return False
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                _write_info(fd)
            except OSError:  # a full disk: the flock alone still excludes; the refusal names no holder
                pass
            return _Held(path, fd)
        os.close(fd)  # the previous holder removed the file after we opened it: open the new one


def _try_exclusive_create(path: Path) -> _Held | None:
    """The O_EXCL fallback; a leftover file of a dead process on this host is stale and removed."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            info = read_holder(path)
            same_host = info is not None and info.get("host") == socket.gethostname()
            if same_host and isinstance(info.get("pid"), int) and not pid_alive(info["pid"]):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # stale: its holder died without releasing it
                continue
            return None
        try:
            _write_info(fd)
        finally:
            os.close(fd)
        return _Held(path, None)
    return None


@contextlib.contextmanager
def exclusive(lock_file: str | os.PathLike, what: str, wait_s: float = 0.0, on_wait=None) -> Iterator[Path]:
    """Hold an exclusive lock on ``lock_file`` for the ``with`` block.

    Args:
        lock_file: The lock file (see :func:`lock_path_for`); its folder must exist.
        what: What the lock guards, for the refusal (e.g. ``"run folder runs/x"``).
        wait_s: Wait up to this many seconds for the holder to finish (0: refuse at once).
        on_wait: Called once with the holder's description when the wait starts.

    Raises:
        LockedError: another live process holds the lock (the message names it).
    """
    path = Path(os.fspath(lock_file))
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        held = _try_flock(path) if fcntl is not None else False
        if held is False:
            held = _try_exclusive_create(path)
        if held is not None:
            break
        info = read_holder(path)
        if time.monotonic() >= deadline:
            hint = "wait for it to finish or stop it"
            if info and info.get("host") != socket.gethostname():
                hint += f" (if host {info.get('host')} is gone, remove {path})"
            raise LockedError(f"{what} is in use by {_describe(info)}; {hint}, then rerun")
        if on_wait is not None and not told:
            on_wait(_describe(info))
            told = True
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    try:
        yield path
    finally:
        held.release()
