"""Exclusive locks (pytc.locks): real processes hold them, a kill -9 frees them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pytc import locks
from pytc.locks import LockedError, exclusive, lock_path_for

_HOLD = """
import sys, time
from pytc.locks import exclusive
with exclusive(sys.argv[1], "test"):
    print("held", flush=True)
    time.sleep(60)
"""


def _hold_in_child(lock):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    lock = lock_path_for(tmp_path / "out.zarr")
    assert lock.name == ".out.zarr.pytc-lock"
    proc = _hold_in_child(lock)
    try:
        with pytest.raises(LockedError) as err, exclusive(lock, "output out.zarr"):
            pass
        msg = str(err.value)
        assert f"output out.zarr is in use by pid {proc.pid} on host {socket.gethostname()}" in msg
        assert "\n" not in msg
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_of_a_killed_process_is_taken_over(tmp_path):
    lock = tmp_path / ".pytc-lock"
    proc = _hold_in_child(lock)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock.exists()  # the file outlives its holder...
    with exclusive(lock, "run folder") as held:  # ...but its flock died with it
        assert json.loads(held.read_text())["pid"] == os.getpid()
    assert not lock.exists()  # released locks leave no file


def test_waiting_for_a_holder_that_finishes(tmp_path):
    lock = tmp_path / ".x.pytc-lock"
    proc = _hold_in_child(lock)
    told = []
    subprocess.Popen(["sh", "-c", f"sleep 0.5; kill {proc.pid}"])
    start = time.monotonic()
    with exclusive(lock, "x", wait_s=20, on_wait=told.append):
        pass
    proc.wait()
    assert 0.3 < time.monotonic() - start < 15
    assert told and f"pid {proc.pid}" in told[0]


def test_two_locks_in_one_process_exclude_each_other(tmp_path):
    lock = tmp_path / ".l.pytc-lock"
    with exclusive(lock, "x"):
        with pytest.raises(LockedError):
            with exclusive(lock, "x"):
                pass
    with exclusive(lock, "x"):  # free again
        pass


def test_without_flock_a_dead_holder_on_this_host_is_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "fcntl", None)  # file systems without flock: the O_EXCL protocol
    lock = tmp_path / ".l.pytc-lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with exclusive(lock, "x"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(LockedError, match=f"if host elsewhere is gone, remove {lock}"):
        with exclusive(lock, "x"):
            pass


def test_a_second_writer_of_one_output_is_refused(tmp_path):
    import numpy as np

    from pytc.io import create_volume, output_lock_path

    out = tmp_path / "o.zarr"
    with create_volume(out, (4, 8, 8), "uint8") as w:
        assert output_lock_path(out).exists()
        with pytest.raises(LockedError, match=f"output {out} is in use by pid {os.getpid()}"):
            create_volume(out, (4, 8, 8), "uint8", force=True)
        w[...] = 3
    assert not output_lock_path(out).exists()
    # different datasets of one HDF5 file have different locks
    h5 = tmp_path / "f.h5"
    assert output_lock_path(f"{h5}:a/b") != output_lock_path(f"{h5}:c")
    with create_volume(f"{h5}:a", (2, 2, 2), "uint8") as a:
        a[...] = 1
        with pytest.raises(LockedError):
            create_volume(f"{h5}:a", (2, 2, 2), "uint8", force=True)
    assert np.asarray(__import__("pytc.io", fromlist=["x"]).open_volume(f"{h5}:a")[...]).sum() == 8


def test_small_fs_is_a_real_full_disk(small_fs):
    import errno

    from conftest import fill_up

    where = small_fs("256k")
    fill_up(where)
    with pytest.raises(OSError) as err:
        (where / "x").write_bytes(b"1" * 8192)
    assert err.value.errno == errno.ENOSPC
