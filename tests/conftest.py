"""Shared test fixtures: tiny random volumes and a writer for them in any supported format."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

# One address per format, relative to a folder (see pytc.io for the scheme).
VOLUME_SPECS = {"hdf5": "vol.h5:raw", "zarr": "vol.zarr", "tiff": "vol.tif", "slices": "vol_slices/"}


def _random_volume(shape, dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":  # the whole range, so a lossy or truncating path can't hide
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    return (rng.standard_normal(shape) * 1e3).astype(dtype)


def _write_volume(spec: str, data: np.ndarray, **kwargs) -> str:
    from pytc.io import create_volume

    with create_volume(spec, data.shape, data.dtype, **kwargs) as out:
        out[...] = data
    return spec


@pytest.fixture(scope="session")
def random_volume():
    """``random_volume(shape, dtype, seed=0)`` → numpy array spanning the dtype's range."""
    return _random_volume


@pytest.fixture(scope="session")
def write_volume():
    """``write_volume(spec, data, **create_volume_kwargs)`` writes ``data`` and returns ``spec``."""
    return _write_volume


@pytest.fixture
def volume_factory(tmp_path):
    """``volume_factory(fmt, data, name=None, **kw)`` writes ``data`` under tmp_path as a
    'hdf5' / 'zarr' / 'tiff' / 'slices' volume and returns its address."""

    def make(fmt: str, data: np.ndarray, name: str | None = None, **kwargs) -> str:
        return _write_volume(f"{tmp_path}/{name or VOLUME_SPECS[fmt]}", data, **kwargs)

    return make


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(size="1m")`` mounts a real tmpfs of that size (a real disk that fills up) and
    returns its path; unmounted after the test. Skipped, with the reason, where this process may
    not mount (not root, or a container without the capability): the simulated-ENOSPC tests in
    test_faults.py still cover the handlers there."""
    import os
    import subprocess

    mounts = []

    def mount(size: str = "1m"):
        where = tmp_path / f"small_fs{len(mounts)}"
        where.mkdir()
        if os.geteuid() != 0:
            pytest.skip("a real full disk needs a tmpfs mount, which needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill_up(folder, leave: int = 0) -> None:
    """Fill the file system of ``folder`` until at most ``leave`` bytes are free."""
    import os

    with open(os.path.join(folder, ".filler"), "wb") as f:
        chunk = b"\0" * 65536
        try:
            while True:
                free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
                if free <= leave:
                    break
                f.write(chunk[: max(1, min(len(chunk), free - leave))])
                f.flush()
        except OSError:
            pass


PYTC = [sys.executable, "-m", "pytc.cli"]  # the real command, in a process of its own


def pytc(*args, **kwargs) -> subprocess.CompletedProcess:
    """Run ``pytc ARGS`` in a real process; stdout and stderr captured as text."""
    return subprocess.run([*PYTC, *map(str, args)], capture_output=True, text=True, timeout=120, **kwargs)


def one_line(done: subprocess.CompletedProcess) -> str:
    """The single `Error: ...` line of a failed command (exit code 2, no traceback)."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("Error: "), (done.returncode, done.stderr)
    return lines[0]


def docs_script(name: str):
    """A fresh module object of ``docs/<name>.py`` (the docs generators are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "docs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
