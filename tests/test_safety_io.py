"""Data safety of volume I/O under concurrency, resumes, real full disks, broken files and odd paths.

Where a guarantee is about processes or disks, the test uses real ones: `pytc convert` processes
running at once or interrupted with SIGINT, and a real tmpfs that fills up (``small_fs``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import PYTC, fill_up, one_line, pytc

from pytc import io
from pytc.errors import OutputExistsError, PytcError, VolumeError
from pytc.io import common as io_common
from pytc.io import hdf5 as io_hdf5



def h5_datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, o: out.__setitem__(name, o[...]) if isinstance(o, h5py.Dataset) else None)
    return out


def noise(shape, seed, dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)


# ------------------------------------------------------------- HDF5 keyed writes keep the file --
def test_two_concurrent_converts_into_one_hdf5_file_keep_both_datasets(tmp_path):
    a, b = noise((32, 256, 256), 1), noise((32, 256, 256), 2)  # 4 MB each: gzip takes a while
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["a"], f["b"] = a, b
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["earlier"] = np.arange(10)
    procs = [subprocess.Popen([*PYTC, "convert", f"{tmp_path / 'src.h5'}:{k}", f"{tmp_path / 'f.h5'}:{k.upper()}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in "ab"]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.startswith("Wrote"), err
    got = h5_datasets(tmp_path / "f.h5")
    assert sorted(got) == ["A", "B", "earlier"]
    np.testing.assert_array_equal(got["A"], a)
    np.testing.assert_array_equal(got["B"], b)
    np.testing.assert_array_equal(got["earlier"], np.arange(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "src.h5"]


def test_resumed_hdf5_write_keeps_a_dataset_added_to_the_file_meanwhile(tmp_path):
    target = tmp_path / "f.h5"
    with h5py.File(target, "w") as f:
        f["raw"] = np.arange(8 * 16 * 16, dtype=np.uint16).reshape(8, 16, 16)
    out = io.create_volume(f"{target}:pred", (8, 16, 16), np.uint8, chunks=(4, 16, 16), resumable=True)
    out[:4] = 1
    out.suspend()
    with h5py.File(target, "a") as f:  # another program adds a dataset while the write is interrupted
        f["added"] = np.full(5, 7)
    out = io.create_volume(f"{target}:pred", (8, 16, 16), np.uint8, chunks=(4, 16, 16), resumable=True)
    assert out.resumed
    out[4:] = 2
    out.commit()
    got = h5_datasets(target)
    assert sorted(got) == ["added", "pred", "raw"]
    np.testing.assert_array_equal(got["added"], np.full(5, 7))
    np.testing.assert_array_equal(got["pred"], np.repeat([1, 2], 4)[:, None, None] * np.ones((8, 16, 16), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]


def test_resumable_writers_of_two_datasets_of_one_file_have_their_own_partial_files(tmp_path):
    target = tmp_path / "f.h5"
    first = io.create_volume(f"{target}:A", (4, 8, 8), np.uint8, resumable=True)
    first[...] = 1
    first.suspend()
    second = io.create_volume(f"{target}:B", (4, 8, 8), np.uint8, resumable=True)
    assert not second.resumed and second.partial_path != first.partial_path  # B does not pick up A's data
    second[...] = 2
    second.commit()
    first = io.create_volume(f"{target}:A", (4, 8, 8), np.uint8, resumable=True)
    assert first.resumed and (first[...] == 1).all()
    first.commit()
    got = h5_datasets(target)
    assert (got["A"] == 1).all() and (got["B"] == 2).all()


def test_reading_one_dataset_and_writing_another_of_the_same_hdf5_file_in_one_process(tmp_path):
    """Guard: the in-file commit must not break what worked when the file was replaced whole."""
    target = tmp_path / "f.h5"
    raw = noise((8, 32, 32), 3)
    with h5py.File(target, "w") as f:
        f["raw"] = raw
    with io.open_volume(f"{target}:raw") as src:  # what `pytc infer f.h5:raw -o f.h5:pred` does
        with io.create_volume(f"{target}:pred", src.shape, src.dtype) as out:
            out[...] = src[...] // 2
        np.testing.assert_array_equal(src[:2], raw[:2])  # the input still reads after the commit
    io.convert(f"{target}:raw", f"{target}:copy", progress=False)
    got = h5_datasets(target)
    np.testing.assert_array_equal(got["pred"], raw // 2)
    np.testing.assert_array_equal(got["copy"], raw)


def test_a_commit_killed_after_its_copy_is_finished_by_the_next_writer(tmp_path):
    target = tmp_path / "f.h5"
    with h5py.File(target, "w") as f:  # what a commit of f.h5:pred killed before its rename leaves
        f["raw"] = np.arange(4)
        f[".pytc-commit-" + "pred".encode().hex()] = np.arange(3)
        f[".pytc-commit-" + "raw".encode().hex()] = np.zeros(2)  # raw is there: this one is dropped
    io.convert(f"{target}:raw", f"{target}:other", progress=False)
    got = h5_datasets(target)
    assert sorted(got) == ["other", "pred", "raw"]
    np.testing.assert_array_equal(got["pred"], np.arange(3))


# ----------------------------------------------------------------------- real full disks --
@pytest.fixture
def big_source(tmp_path) -> Path:
    """1.5 MB of incompressible voxels: more than the 1 MB test file system holds."""
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f["raw"] = noise((24, 128, 256), 4, np.uint8)
    return tmp_path / "r.h5"


@pytest.mark.parametrize("leave", [0, 100_000])
@pytest.mark.parametrize("dst", ["o.h5", "o.h5:k", "o.zarr", "o.tif"])
def test_convert_onto_a_real_full_disk_is_one_line_and_leaves_nothing(small_fs, big_source, dst, leave):
    where = small_fs("1m")
    fill_up(where, leave=leave)
    before = sorted(os.listdir(where))
    done = pytc("convert", f"{big_source}:raw", f"{where}/{dst}", "--compression", "none")
    line = one_line(done)  # no segfault (rc 139), no traceback
    assert f"cannot write {where}/{dst} (No space left on device); free some space" in line
    assert sorted(os.listdir(where)) == before


@pytest.mark.parametrize("leave, fits", [(700_000, True), (400_000, False), (300_000, False)])
def test_adding_a_dataset_to_an_hdf5_file_on_a_nearly_full_disk_keeps_the_file(small_fs, tmp_path, leave, fits):
    where = small_fs("2m")
    raw = noise((8, 128, 256), 5, np.uint8)  # 256 KB: the partial file fits; a second copy only with 700 KB free
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f["raw"] = raw
    with h5py.File(where / "o.h5", "w") as f:
        f["x"] = np.arange(10)
    fill_up(where, leave=leave)
    before = sorted(os.listdir(where))
    done = pytc("convert", f"{tmp_path / 'r.h5'}:raw", f"{where}/o.h5:k", "--compression", "none")
    if not fits:
        assert "(No space left on device)" in one_line(done)
    assert sorted(os.listdir(where)) == before
    got = h5_datasets(where / "o.h5")
    assert sorted(got) == (["k", "x"] if fits else ["x"]) and (got["x"] == np.arange(10)).all()
    if fits:
        np.testing.assert_array_equal(got["k"], raw)


def test_errno_less_write_errors_are_a_full_disk_only_when_the_disk_is_full(small_fs, tmp_path):
    where = small_fs("1m")
    fill_up(where, leave=0)
    numpy_error = OSError("16384 requested and 11936 written")  # numpy's tofile gives no errno
    for err in (numpy_error, RuntimeError("Can't decrement id ref count (unable to flush file)")):
        with pytest.raises(VolumeError, match=r"cannot write .*o.zarr \(No space left on device\)"):
            with io.disk_errors(f"{where}/o.zarr"):
                raise err
        with pytest.raises(type(err)):  # a disk with room: not a disk error, the traceback stays
            with io.disk_errors(f"{tmp_path}/o.zarr"):
                raise err


# ------------------------------------------------------------------------------------ Ctrl-C --
def test_ctrl_c_stops_a_zarr_convert_at_once_and_leaves_nothing(tmp_path):
    # Page-shaped source chunks into 64³ destination chunks: 128 MB copy blocks, seconds of work each.
    with h5py.File(tmp_path / "pages.h5", "w") as f:
        f.create_dataset("raw", data=noise((64, 1024, 1024), 6), chunks=(1, 1024, 1024))
    proc = subprocess.Popen([*PYTC, "convert", f"{tmp_path / 'pages.h5'}:raw", str(tmp_path / "out.zarr")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".out.zarr.pytc-tmp-") and any(p.rglob("c/*")) for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - start
    assert proc.returncode == 130 and "Wrote" not in out, (proc.returncode, out, err)
    assert took < 2.0, f"took {took:.1f} s to stop"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pages.h5"]


# ------------------------------------------------------------------- broken files, odd paths --
def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def small_h5(tmp_path) -> Path:
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["raw"] = np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8)
    return tmp_path / "src.h5"


def test_a_corrupt_zarr_chunk_is_one_line_when_converting_or_describing(tmp_path, small_h5):
    io.convert(f"{small_h5}:raw", tmp_path / "c.zarr", chunks=(2, 4, 4), progress=False)
    chunk = next(p for p in sorted((tmp_path / "c.zarr").rglob("*")) if p.is_file() and p.parent.name != "c.zarr"
                 and p.name != "zarr.json")
    chunk.write_bytes(b"\x1f\x8b not gzip at all" * 8)  # a gzip header, then garbage: BadGzipFile
    before = tree(tmp_path)
    for argv in (["convert", tmp_path / "c.zarr", tmp_path / "out.h5"], ["info", "--stats", tmp_path / "c.zarr"]):
        line = one_line(pytc(*argv))
        assert f"cannot read {tmp_path / 'c.zarr'}/0 (BadGzipFile" in line and "corrupted or truncated" in line
    assert tree(tmp_path) == before


def test_a_compound_dtype_hdf5_input_is_refused_in_one_line(tmp_path):
    with h5py.File(tmp_path / "rec.h5", "w") as f:
        f["rec"] = np.zeros((2, 3, 4), np.dtype([("a", "<i4"), ("b", "<f8")]))
    before = tree(tmp_path)
    for argv in (["convert", tmp_path / "rec.h5", tmp_path / "out.zarr"], ["info", f"{tmp_path / 'rec.h5'}:rec"]):
        line = one_line(pytc(*argv))
        assert f"{tmp_path / 'rec.h5'}:rec has a compound dtype" in line and "pytc reads numeric volumes" in line
    assert tree(tmp_path) == before


@pytest.mark.parametrize("dst", ["x.zarr/..", "x.zarr/.", "x.zarr/a/../..", "f.h5:.."])
def test_an_output_that_climbs_out_of_its_store_is_refused_even_with_force(tmp_path, small_h5, dst):
    work = tmp_path / "work"
    work.mkdir()
    io.convert(f"{small_h5}:raw", work / "x.zarr", progress=False)
    before = tree(tmp_path)
    line = one_line(pytc("convert", f"{small_h5}:raw", f"{work}/{dst}", "--force"))
    assert "may not contain '.' or '..'" in line
    assert tree(tmp_path) == before


def test_a_folder_named_with_a_colon_is_read_as_itself(tmp_path, small_h5):
    import zarr

    group = zarr.open_group(str(tmp_path / "z.zarr:x"), mode="w")  # no z.zarr: a store named z.zarr:x
    group.create_array("a", shape=(4, 8, 8), dtype="u2", chunks=(4, 8, 8))[...] = 1
    done = pytc("info", "--json", tmp_path / "z.zarr:x")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert (info["path"], info["key"], info["shape"]) == (str(tmp_path / "z.zarr:x"), "a", [4, 8, 8])
    io.convert(f"{small_h5}:raw", f"{tmp_path / 'z.zarr:x'}/extra", progress=False)  # an array inside it
    with io.open_volume(f"{tmp_path / 'z.zarr:x'}/extra") as vol:
        assert vol.path == tmp_path / "z.zarr:x" and vol.key == "extra" and int(vol[...].sum()) == 32640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.h5", "z.zarr:x"]


# ------------------------------------------------- HDF5 commits racing with other processes --
HOLD = "import h5py, sys, time; f = h5py.File(sys.argv[1], sys.argv[2]); print('open', flush=True); " \
       "time.sleep(float(sys.argv[3])); f.close()"


def hold_open(path: Path, mode: str, seconds: float) -> subprocess.Popen:
    """A real process that keeps ``path`` open (``r`` or ``r+``) for ``seconds``; returns once it is open."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode, str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "open\n"
    return proc


@pytest.fixture
def short_commit_wait(monkeypatch):
    monkeypatch.setattr(io_hdf5, "COMMIT_WAIT_S", 0.5)


def test_a_whole_hdf5_file_write_never_replaces_a_file_that_appeared_meanwhile(tmp_path, small_h5):
    target = tmp_path / "f.h5"
    whole = io.create_volume(target, (4, 8, 8), np.uint8)  # f.h5 does not exist yet
    whole[...] = 1
    done = pytc("convert", f"{small_h5}:raw", f"{target}:B")  # another process adds f.h5:B meanwhile
    assert done.returncode == 0, done.stderr
    with pytest.raises(OutputExistsError, match=r"f.h5 appeared while .* was written; pass --force"):
        whole.commit()
    got = h5_datasets(target)
    assert sorted(got) == ["B"] and int(got["B"].sum()) == int(np.arange(256).sum())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "src.h5"]


def test_a_whole_hdf5_file_write_with_force_replaces_the_file_as_documented(tmp_path, small_h5):
    target = tmp_path / "f.h5"
    with h5py.File(target, "w") as f:
        f["old"] = np.arange(3)
    whole = io.create_volume(target, (4, 8, 8), np.uint8, force=True)
    whole[...] = 1
    assert pytc("convert", f"{small_h5}:raw", f"{target}:B").returncode == 0
    whole.commit()
    got = h5_datasets(target)
    assert sorted(got) == ["main"] and (got["main"] == 1).all()


@pytest.mark.parametrize("form", ["hdf5", "zarr"])
def test_a_failed_commit_of_a_resumable_write_keeps_the_partial_data_and_its_record(tmp_path, short_commit_wait,
                                                                                    monkeypatch, form):
    if form == "hdf5":
        target = tmp_path / "f.h5"
        with h5py.File(target, "w") as f:
            f["raw"] = np.zeros(3)
        spec, error = f"{target}:pred", "another process keeps .*f.h5 open"
        holder = hold_open(target, "r", 30)  # a viewer keeps f.h5 open past the commit's wait
    else:
        spec, error, holder = str(tmp_path / "o.zarr"), r"cannot write .*o.zarr \(Permission denied\)", None
        monkeypatch.setattr(io_common, "swap_in", lambda tmp, final: (_ for _ in ()).throw(PermissionError(13, "no")))
    try:
        out = io.create_volume(spec, (4, 8, 8), np.uint8, chunks=(2, 8, 8), resumable=True)
        (out.record_dir / "done").write_text("0 1")
        out[...] = 3
        partial, record = out.partial_path, out.record_dir
        with pytest.raises(VolumeError, match=error):
            out.commit()
        assert partial.exists() and (record / "done").read_text() == "0 1"
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    monkeypatch.undo()
    again = io.create_volume(spec, (4, 8, 8), np.uint8, chunks=(2, 8, 8), resumable=True)
    assert again.resumed and (again.record_dir / "done").read_text() == "0 1" and (again[...] == 3).all()
    again.commit()  # the rerun only finishes the commit
    with io.open_volume(spec) as vol:
        assert (vol[...] == 3).all()
    assert not record.exists() and not partial.exists()


def test_reading_an_hdf5_file_another_process_is_writing_waits_for_it(tmp_path, capfd):
    target = tmp_path / "f.h5"
    with h5py.File(target, "w") as f:
        f["raw"] = np.arange(4)
    holder = hold_open(target, "r+", 1.0)  # a commit holds the file read-write for a moment
    with io.open_volume(f"{target}:raw") as vol:
        assert list(vol[...]) == [0, 1, 2, 3]
    holder.wait()
    assert "waiting for another process to finish writing" in capfd.readouterr().err
    holder = hold_open(target, "r+", 1.0)
    assert io.output_exists(f"{target}:new") is False and io.output_exists(f"{target}:raw") is True
    holder.wait()


def test_an_hdf5_file_written_for_too_long_by_another_process_is_one_line(tmp_path, short_commit_wait):
    target = tmp_path / "f.h5"
    with h5py.File(target, "w") as f:
        f["raw"] = np.arange(4)
    holder = hold_open(target, "r+", 30)
    try:
        for call in (lambda: io.open_volume(f"{target}:raw"), lambda: io.output_exists(f"{target}:new")):
            with pytest.raises(VolumeError, match=r"another process is writing .*f.h5; wait for it to finish"):
                call()
    finally:
        holder.kill()
        holder.wait()
    done = subprocess.run([*PYTC, "info", f"{target}:raw"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_failing_last_flush_of_an_hdf5_commit_is_one_line_and_closes_the_file_once(tmp_path, monkeypatch):
    out = io.create_volume(f"{tmp_path / 'o.h5'}:pred", (4, 8, 8), np.uint8, resumable=True)
    out[...] = 1
    closes = []
    file = out._backend._file
    real_close = type(file).close

    def full(self):
        raise RuntimeError("Can't flush cache (file write failed: errno = 28, error message = 'No space left')")

    monkeypatch.setattr(type(file), "flush", full)
    monkeypatch.setattr(type(file), "close", lambda self: (closes.append(1), real_close(self))[1])
    with pytest.raises(VolumeError, match=r"cannot write .*o.h5:pred \(No space left on device\); free some space"):
        out.commit()
    assert closes == [1] and not file.id.valid  # closed, exactly once
    out.suspend()
    out.abort()
    assert closes == [1]


@pytest.mark.parametrize("key", ["raw/x", "raw/x/y", "grp"])
def test_a_key_under_a_dataset_or_naming_a_group_is_refused_before_any_work(tmp_path, key):
    target = tmp_path / "f.h5"
    with h5py.File(target, "w") as f:
        f["raw"] = np.arange(4)
        f["grp/inner"] = np.arange(2)
    before = tree(tmp_path)
    with pytest.raises(VolumeError, match=r"f.h5:(raw is a dataset|grp is a group)") as err:
        io.create_volume(f"{target}:{key}", (2, 2, 2), np.uint8, force=True)
    assert "\n" not in str(err.value) and "choose another" in str(err.value)
    assert tree(tmp_path) == before


def test_a_parent_of_the_key_that_became_a_dataset_meanwhile_fails_the_commit_in_one_line(tmp_path):
    target = tmp_path / "f.h5"
    with h5py.File(target, "w") as f:
        f["other"] = np.arange(4)
    out = io.create_volume(f"{target}:a/x", (2, 2, 2), np.uint8)
    out[...] = 1
    with h5py.File(target, "a") as f:
        f["a"] = np.arange(2)  # another program makes a dataset where the key's group should be
    with pytest.raises(VolumeError, match=r"f.h5:a is a dataset"):
        out.commit()
    assert sorted(h5_datasets(target)) == ["a", "other"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]


def test_a_writer_never_removes_the_temporary_of_another_live_writer_in_this_process(tmp_path):
    # f.h5.k.h5 (the whole file) and f.h5:k.h5 (a dataset) name their temporaries alike.
    whole = io.create_volume(tmp_path / "f.h5.k.h5", (2, 2, 2), np.uint8)
    whole[...] = 5
    with pytest.raises(VolumeError, match="temporary .* is in use by another writer"):
        io.create_volume(f"{tmp_path / 'f.h5'}:k.h5", (2, 2, 2), np.uint8)
    whole.commit()
    with io.open_volume(tmp_path / "f.h5.k.h5") as vol:
        assert (vol[...] == 5).all()
