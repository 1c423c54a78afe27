"""`pytc infer` keeps its data safe: a resume never mixes blocks of another input, checkpoint or
config; non-finite network input or output stops with one line naming the block; two processes
never write one output; a real full disk is one line and the finished blocks survive; a window
that cannot fit in memory is refused before anything is allocated.

Faults are caused for real where the guarantee is about them: real `pytc` processes (SIGKILLed,
or run side by side) and a real small file system (a tmpfs, see ``small_fs`` in conftest.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import fill_up
from safetensors.torch import save_file
from typer.testing import CliRunner

from pytc.inference import record
from pytc.cli import app
from pytc.engine import checkpoint as ckpt
from pytc.errors import DataError
from pytc.inference import predict_volume
from pytc.io import open_volume
from pytc.models import build_model
from test_faults import tiny_checkpoint

runner = CliRunner()
# A 3-level U-Net with 4..16 features and blocks of one window: ~0.1 s a block on one core.
SHAPE = (16, 32, 64)  # 2×2×4 = 16 blocks


def _image(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _write_h5(path: Path, data: np.ndarray) -> str:
    """Write ``data`` as ``path:raw``, replacing the file as a whole (a new inode, new contents)."""
    tmp = path.with_name(path.name + ".new")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("raw", data=data, chunks=(8, 16, 16))
    os.replace(tmp, path)
    return f"{path}:raw"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("infer_safety")
    cfg, folder = tiny_checkpoint(root)
    return {"root": root, "ckpt": folder, "cfg": cfg}


def _copy_ckpt(setup, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(setup["ckpt"], dst)
    return dst


def _fresh(setup, input_spec: str, out, ckpt_dir=None, extra=()) -> np.ndarray:
    result = runner.invoke(app, ["infer", "--ckpt", str(ckpt_dir or setup["ckpt"]), "--input", input_spec,
                                 "--output", str(out), *extra])
    assert result.exit_code == 0, result.output
    with open_volume(out) as v:
        return v[...]


def _partial(out: Path) -> tuple[Path, Path]:
    partial = out.with_name(f".{out.name}.pytc-partial")
    return partial, partial / ".pytc-record" / "done"


def _done(done_dir: Path) -> int:
    try:
        return sum(1 for p in done_dir.iterdir() if p.name.isdigit())
    except FileNotFoundError:
        return 0


def _argv(ckpt_dir, input_spec, out) -> list[str]:
    return [sys.executable, "-m", "pytc.cli", "infer", "--ckpt", str(ckpt_dir), "--input", input_spec,
            "--output", str(out)]


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:  # its own session: a kill takes the whole group
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_until(condition, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) too early:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"nothing happened within {timeout} s")
        time.sleep(0.002)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _one_line(output: str, rc: int) -> str:
    assert rc == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert "Traceback" not in output
    return lines[0]


def _interrupt_after(monkeypatch, k: int) -> None:
    """Make the next in-process run stop (as Ctrl-C would) once ``k`` blocks are marked finished."""
    real, marked = record.mark_done, []

    def mark(done_dir, index):
        if len(marked) == k:
            raise KeyboardInterrupt
        real(done_dir, index)
        marked.append(index)

    monkeypatch.setattr(record, "mark_done", mark)


# ---------------------------------------------------------------- resume with changed arguments --
def test_resume_after_kill_refuses_a_changed_input_and_restart_equals_a_fresh_run(setup, tmp_path):
    raw = _write_h5(tmp_path / "raw.h5", _image(1))
    out = tmp_path / "pred.zarr"
    partial, done_dir = _partial(out)
    argv = _argv(setup["ckpt"], raw, out)
    proc = _start(argv, tmp_path / "kill.log")
    _wait_until(lambda: _done(done_dir) >= 3, proc, tmp_path / "kill.log")
    _kill(proc)
    done = _done(done_dir)
    assert 3 <= done < 16 and partial.exists() and not out.exists()

    _write_h5(tmp_path / "raw.h5", _image(2))  # new contents: same path, key, shape and dtype
    rerun = runner.invoke(app, argv[3:])  # gets past the lock: it died with the killed process
    line = _one_line(rerun.output, rerun.exit_code)
    assert "input" in line and f"{tmp_path / 'raw.h5'}:raw" in line and "--restart" in line, line
    assert "checkpoint" not in line.split("--restart")[0].split("written with")[-1], line
    assert partial.exists() and _done(done_dir) == done and not out.exists()  # refused: nothing touched

    restarted = runner.invoke(app, ["infer", "--ckpt", str(setup["ckpt"]), "--input", raw, "--output", str(out),
                                    "--restart"])
    assert restarted.exit_code == 0, restarted.output
    assert "16 blocks: 16 computed;" in restarted.output  # no stale block kept
    with open_volume(out) as v:
        np.testing.assert_array_equal(v[...], _fresh(setup, raw, tmp_path / "fresh.zarr"))


@pytest.mark.parametrize("change", ["checkpoint", "config"])
def test_resume_refuses_a_changed_checkpoint_or_config_naming_it(setup, tmp_path, monkeypatch, change):
    raw = _write_h5(tmp_path / "raw.h5", _image(3, (8, 32, 64)))
    folder, out = _copy_ckpt(setup, tmp_path), tmp_path / "pred.zarr"
    argv = ["infer", "--ckpt", str(folder), "--input", raw, "--output", str(out)]
    _interrupt_after(monkeypatch, 2)
    assert runner.invoke(app, argv).exit_code == 130
    monkeypatch.undo()
    assert _done(_partial(out)[1]) == 2

    extra = []
    if change == "checkpoint":  # other weights, same names, shapes, file name and size
        torch.manual_seed(1)
        save_file(build_model(setup["cfg"].model).state_dict(), folder / ckpt.WEIGHTS)
    else:
        extra = ["inference.overlap=0.5"]
    result = runner.invoke(app, [*argv, *extra])
    line = _one_line(result.output, result.exit_code)
    assert f"another {change}" in line and "--restart" in line, line
    assert _done(_partial(out)[1]) == 2

    result = runner.invoke(app, [*argv, *extra, "--restart"])
    assert result.exit_code == 0 and "8 blocks: 8 computed;" in result.output, result.output


def test_resume_with_the_same_arguments_from_a_moved_checkpoint_is_accepted(setup, tmp_path, monkeypatch):
    """The checkpoint is identified by its weights, not its path: a copy resumes."""
    raw = _write_h5(tmp_path / "raw.h5", _image(3, (8, 32, 64)))
    out = tmp_path / "pred.zarr"
    _interrupt_after(monkeypatch, 2)
    assert runner.invoke(app, ["infer", "--ckpt", str(setup["ckpt"]), "--input", raw, "--output", str(out)]).exit_code == 130
    monkeypatch.undo()
    result = runner.invoke(app, ["infer", "--ckpt", str(_copy_ckpt(setup, tmp_path)), "--input", raw, "--output", str(out)])
    assert result.exit_code == 0 and "8 blocks: 6 computed, 2 skipped" in result.output, result.output


# ----------------------------------------------------------------- non-finite input and output --
def test_input_beyond_the_float32_range_is_refused_naming_the_maximum(setup, tmp_path):
    data = np.random.default_rng(0).normal(0, 1, (8, 32, 32))
    data[3, 4, 5] = 1e39  # finite in float64, infinite in float32
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset("raw", data=data)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["infer", "--ckpt", str(setup["ckpt"]), "--input", f"{tmp_path / 'big.h5'}:raw",
                                 "--output", str(tmp_path / "pred.zarr")])
    line = _one_line(result.output, result.exit_code)
    assert "1e+39" in line and "float32" in line and "(3, 4, 5)" in line and "rescale" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_input_beyond_the_float16_range_is_refused_under_fp16(setup):
    cfg = setup["cfg"].model_copy(deep=True)
    cfg.data.normalize = "none"
    model = build_model(cfg.model)
    image = np.full((8, 16, 16), 1e5, np.float32)  # fine in float32, infinite in float16

    from pytc.inference import BlockPredictor

    engine = BlockPredictor(model, image, cfg, torch.device("cpu"), stats=None)
    engine.precision = "16-mixed"  # what an fp16 GPU run computes in
    with pytest.raises(DataError, match=r"1e\+05.*float16"):
        engine.read_block(0)


def test_a_checkpoint_with_nan_weights_is_refused_before_any_output(setup, tmp_path):
    folder = _copy_ckpt(setup, tmp_path)
    weights = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
               for k, v in build_model(setup["cfg"].model).state_dict().items()}
    save_file(weights, folder / ckpt.WEIGHTS)
    raw = _write_h5(tmp_path / "raw.h5", _image(4, (8, 32, 32)))
    result = runner.invoke(app, ["infer", "--ckpt", str(folder), "--input", raw, "--output", str(tmp_path / "p.zarr")])
    line = _one_line(result.output, result.exit_code)
    assert "NaN" in line and str(folder) in line, line
    assert not any(p.name.startswith((".p.zarr", "p.zarr")) for p in tmp_path.iterdir())


def test_non_finite_network_output_stops_naming_the_block(setup):
    class Overflowing(torch.nn.Module):  # finite weights, but its output overflows where the input is bright
        def forward(self, x):
            big = x * 3e38 * 3e38
            return torch.where(x > 0.9, big - big, x)  # inf - inf

    image = np.zeros((16, 32, 32), np.uint8)
    image[12, 20, 20] = 255  # in block 7 of 2×2×2: z 8:16, y 16:32, x 16:32
    cfg = setup["cfg"].model_copy(deep=True)
    cfg.inference.overlap = 0  # windows = blocks: only block 7 sees the bright voxel
    with pytest.raises(DataError) as err:
        predict_volume(Overflowing(), image, cfg, device="cpu", progress=False)
    message = str(err.value)
    assert "block 7" in message and "z 8:16, y 16:32, x 16:32" in message, message
    assert "NaN weights" in message and "overflow" in message, message


# ------------------------------------------------------------------------------- concurrency --
def test_two_infers_of_one_output_at_once_refuse_the_second_and_the_first_finishes(setup, tmp_path):
    from pytc.locks import read_holder

    raw = _write_h5(tmp_path / "raw.h5", _image(5))
    out = tmp_path / "pred.zarr"
    partial, done_dir = _partial(out)
    argv = _argv(setup["ckpt"], raw, out)
    procs = [_start(argv, tmp_path / f"run{i}.log") for i in range(2)]  # started together: either may win
    _wait_until(lambda: _done(done_dir) >= 2, procs[0], tmp_path / "run0.log")
    holder_pid = read_holder(tmp_path / ".pred.zarr.pytc-lock")["pid"]
    first, second = sorted(procs, key=lambda p: p.pid != holder_pid)
    os.killpg(first.pid, signal.SIGSTOP)  # a slow holder (a busy node): the other one must meet its lock
    try:
        record_before = sorted(p.name for p in (partial / ".pytc-record").rglob("*"))
        second.wait(timeout=300)
        record_after = sorted(p.name for p in (partial / ".pytc-record").rglob("*"))
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    line = _one_line((tmp_path / f"run{procs.index(second)}.log").read_text(), second.returncode)
    assert f"pid {first.pid}" in line and "pred.zarr" in line, line
    assert record_after == record_before  # refused before touching the partial store or its carries
    assert first.wait(timeout=300) == 0, (tmp_path / f"run{procs.index(first)}.log").read_text()
    assert "16 blocks: 16 computed;" in (tmp_path / f"run{procs.index(first)}.log").read_text()
    with open_volume(out) as v:
        np.testing.assert_array_equal(v[...], _fresh(setup, raw, tmp_path / "fresh.zarr"))


# ------------------------------------------------------------------------------ full disks --
@pytest.mark.parametrize("fmt_name", ["zarr", "hdf5"])
def test_infer_on_a_real_full_disk_is_one_line_keeps_finished_blocks_and_resumes(setup, tmp_path, small_fs, fmt_name):
    raw = _write_h5(tmp_path / "raw.h5", _image(6))
    where = small_fs("2m")
    out = where / ("pred.zarr" if fmt_name == "zarr" else "pred.h5")
    spec = str(out) if fmt_name == "zarr" else f"{out}:prob"
    # Zarr: a 4 KB file per chunk; HDF5: the chunks and their B-tree grow one file.
    fill_up(where, leave=64 * 1024 if fmt_name == "zarr" else 24 * 1024)
    full = subprocess.run(_argv(setup["ckpt"], raw, spec), capture_output=True, text=True, timeout=300)
    line = _one_line(full.stdout + full.stderr, full.returncode)
    assert "cannot write" in line and "pred." in line and "No space left on device" in line, line
    partial = where / f".{out.name}{'.prob' if fmt_name == 'hdf5' else ''}.pytc-partial"
    done_dir = partial / ".pytc-record" / "done" if fmt_name == "zarr" else \
        partial.with_name(partial.name + ".pytc-record") / "done"
    done = _done(done_dir)
    assert 0 < done < 16 and not out.exists(), (done, line, sorted(p.name for p in where.iterdir()))
    assert not [p.name for p in where.rglob("*") if ".pytc-tmp-" in p.name]  # no half-written temporary

    (where / ".filler").unlink()  # more space
    result = runner.invoke(app, ["infer", "--ckpt", str(setup["ckpt"]), "--input", raw, "--output", spec])
    assert result.exit_code == 0, result.output
    assert f"16 blocks: {16 - done} computed, {done} skipped" in result.output
    fresh = str(tmp_path / "fresh.zarr") if fmt_name == "zarr" else f"{tmp_path / 'fresh.h5'}:prob"
    with open_volume(spec) as v:
        np.testing.assert_array_equal(v[...], _fresh(setup, raw, fresh))


# -------------------------------------------------------------------------- impossible windows --
def test_a_window_too_large_for_memory_is_refused_before_allocating(setup, tmp_path):
    raw = _write_h5(tmp_path / "raw.h5", _image(7, (8, 32, 32)))
    before = sorted(p.name for p in tmp_path.iterdir())
    start = time.perf_counter()
    result = runner.invoke(app, ["infer", "--ckpt", str(setup["ckpt"]), "--input", raw, "--output",
                                 str(tmp_path / "pred.zarr"), "inference.window_size=[100000,100000,100000]"])
    line = _one_line(result.output, result.exit_code)
    assert "inference.window_size [100000, 100000, 100000]" in line and "memory" in line, line
    assert re.search(r"needs at least [\d.]+ [KMGTPE]?B", line), line
    assert time.perf_counter() - start < 30
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ------------------------------------------------------------------ what identifies the input --
def test_adding_a_dataset_to_the_input_hdf5_file_keeps_its_identity(tmp_path):
    from pytc.io import create_volume

    path = tmp_path / "f.h5"
    raw = _write_h5(path, _image(8, (16, 32, 32)))
    with open_volume(raw) as v:
        before = record.input_identity(v)
    with create_volume(f"{path}:other", (2, 8, 8), "uint8") as w:  # added in place, as a commit does
        w[...] = 1
    with h5py.File(path, "a") as f:  # and by any other program
        f.create_dataset("notes", data=np.arange(1000))
    with open_volume(raw) as v:
        assert record.input_identity(v) == before
    with h5py.File(path, "a") as f:  # the dataset itself rewritten: noticed
        f["raw"][0, 0, :4] = f["raw"][0, 0, :4] + 1
    with open_volume(raw) as v:
        assert record.input_identity(v) != before


def test_adding_a_sibling_array_to_the_input_zarr_group_keeps_its_identity(tmp_path):
    import zarr

    from pytc.io import create_volume

    root = zarr.open_group(str(tmp_path / "vol.zarr"), mode="w")
    root.create_array("raw", shape=(16, 32, 32), chunks=(8, 16, 16), dtype="uint8")[...] = _image(9, (16, 32, 32))
    spec = str(tmp_path / "vol.zarr" / "raw")
    with open_volume(spec) as v:
        before = record.input_identity(v)
    with create_volume(str(tmp_path / "vol.zarr" / "pred"), (2, 8, 8), "uint8") as w:
        w[...] = 1
    root = zarr.open_group(str(tmp_path / "vol.zarr"), mode="a")
    root.create_array("other", shape=(4,), dtype="uint8")[...] = 3
    root.attrs["note"] = "a group attribute"
    with open_volume(spec) as v:
        assert record.input_identity(v) == before
    zarr.open_array(spec, mode="a")[0, 0, :4] = 255 - _image(9, (16, 32, 32))[0, 0, :4]
    with open_volume(spec) as v:
        assert record.input_identity(v) != before


def test_resume_of_hdf5_input_into_the_same_file_survives_a_dataset_added_meanwhile(setup, tmp_path, monkeypatch):
    """Guard for the input fingerprint: ``pytc infer f.h5:raw -o f.h5:pred``, interrupted; another
    dataset lands in f.h5; the rerun resumes (the file changed, the dataset did not)."""
    from pytc.io import convert

    raw = _write_h5(tmp_path / "f.h5", _image(10, (8, 32, 64)))
    argv = ["infer", "--ckpt", str(setup["ckpt"]), "--input", raw, "--output", f"{tmp_path / 'f.h5'}:pred"]
    _interrupt_after(monkeypatch, 2)
    assert runner.invoke(app, argv).exit_code == 130
    monkeypatch.undo()
    convert(raw, f"{tmp_path / 'f.h5'}:copy", progress=False)
    result = runner.invoke(app, argv)
    assert result.exit_code == 0 and "8 blocks: 6 computed, 2 skipped" in result.output, result.output
    with open_volume(f"{tmp_path / 'f.h5'}:pred") as v:
        np.testing.assert_array_equal(v[...], _fresh(setup, raw, tmp_path / "fresh.zarr"))


def _count_decodes(monkeypatch) -> list:
    """Record every page of a TIFF stack and every slice file decoded (the units these formats read)."""
    from pytc.io import slices, tiff

    decoded = []
    page, load = tiff.TiffReader._page, slices.SlicesReader._load
    monkeypatch.setattr(tiff.TiffReader, "_page", lambda self, z: decoded.append(z) or page(self, z))
    monkeypatch.setattr(slices.SlicesReader, "_load", lambda self, f: decoded.append(f.name) or load(self, f))
    return decoded


@pytest.mark.parametrize("form", ["tiff stack", "slice folder"])
def test_identifying_a_page_based_input_decodes_three_planes(tmp_path, monkeypatch, form):
    import tifffile

    data = _image(11, (64, 24, 40))
    if form == "tiff stack":  # compressed: read page by page, not memory-mapped
        spec = tmp_path / "stack.tif"
        tifffile.imwrite(spec, data, compression="zlib")
    else:
        spec = tmp_path / "slices"
        spec.mkdir()
        for z, plane in enumerate(data):
            tifffile.imwrite(spec / f"s_{z:03d}.tif", plane, compression="zlib")
    decoded = _count_decodes(monkeypatch)
    with open_volume(spec) as v:
        before = record.input_identity(v)
    assert len(decoded) == 3, decoded  # the first, middle and last planes, each once
    if form == "slice folder":  # files beside the slices are not the input
        (spec / "notes.txt").write_text("acquired on ...")
        (spec / ".DS_Store").write_bytes(b"\0")
        with open_volume(spec) as v:
            assert record.input_identity(v) == before

    changed = data.copy()
    changed[32, 20, 3] ^= 1  # one voxel of a sampled plane, away from every 16³ corner box
    if form == "tiff stack":
        tifffile.imwrite(spec, changed, compression="zlib")
    else:
        tifffile.imwrite(spec / "s_032.tif", changed[32], compression="zlib")
        os.utime(spec / "s_032.tif", ns=(os.stat(spec / "s_031.tif").st_mtime_ns,) * 2)
    with open_volume(spec) as v:
        after = record.input_identity(v)
    assert after["sample"] != before["sample"]  # the whole sampled plane is hashed, not boxes of it


def test_an_output_being_written_is_refused_before_the_model_is_loaded(setup, tmp_path, monkeypatch):
    from pytc.engine import checkpoint as engine_ckpt
    from pytc.io import output_lock_path

    raw = _write_h5(tmp_path / "raw.h5", _image(12, (8, 32, 32)))
    out = f"{tmp_path / 'f.h5'}:pred"
    holder = subprocess.Popen(  # another process writing this output (a real one: its own flock)
        [sys.executable, "-c", "import sys, time; from pytc.locks import exclusive\n"
         "with exclusive(sys.argv[1], 'output'):\n    print('held', flush=True); time.sleep(120)",
         str(output_lock_path(out))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        loaded = []
        real = engine_ckpt.load_checkpoint_for_inference
        monkeypatch.setattr(engine_ckpt, "load_checkpoint_for_inference", lambda f: loaded.append(f) or real(f))
        result = runner.invoke(app, ["infer", "--ckpt", str(setup["ckpt"]), "--input", raw, "--output", out])
        line = _one_line(result.output, result.exit_code)
        assert f"pid {holder.pid}" in line and "f.h5:pred" in line, line
        assert loaded == []  # refused before the model was loaded or the input read
    finally:
        holder.kill()
        holder.wait()
    result = runner.invoke(app, ["infer", "--ckpt", str(setup["ckpt"]), "--input", raw, "--output", out])
    assert result.exit_code == 0, result.output  # the lock of the killed holder is taken over
