"""Faults survived: real `pytc` processes SIGKILLed, disks that fill up, outputs that cannot be written.

Each test causes its fault for real and checks one guarantee of docs/reliability.md:

* `pytc train` killed at a random step and inside every stage of a checkpoint write resumes with
  `--resume auto` to final weights bit-identical to an uninterrupted run; a checkpoint folder that
  looks complete always is.
* `pytc infer` killed mid-volume finishes only the missing blocks on the rerun, and its output equals
  an uninterrupted run's.
* `pytc convert` killed mid-write leaves no destination (only a clearly named temporary, cleaned by
  the next run) and an untouched source.
* A disk that fills up mid-write is a one-line error that keeps earlier outputs; an output path that
  cannot be written is refused before the long work starts.

The kill points inside a checkpoint write come from a small wrapper around the real CLI (below): it
arms one fault point, pauses the process there and tells the test, which then SIGKILLs it. The
product code has no test hooks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from pytc.cli import app
from pytc.config import dump_config, load_config
from pytc.engine import checkpoint as ckpt
from pytc.io import blocks as io_blocks
from pytc.io import open_volume, zarr_store
from pytc.models import build_model

runner = CliRunner()
# Set PYTC_FAULT_SEED to replay a run: the seed of the random kill points is in every failure message.
SEED = int(os.environ.get("PYTC_FAULT_SEED", time.time_ns() % 2**32))

# Everything that carries state across steps (AdamW moments, warm-up + cosine, EMA, dropout,
# augmentation RNG) on a 3-level U-Net with 4..16 features: ~20 ms a step on one core.
TRAIN = ["data.patch_size=[8,16,16]", "data.batch_size=2", "data.num_workers=0", "model.architecture=monai_unet",
         "model.filters=[4,8,16]", "model.dropout=0.1", "training.ema_decay=0.9", "system.num_cpus=1",
         "system.num_gpus=0", "optimizer.name=AdamW", "optimizer.lr=0.01", "scheduler.name=CosineAnnealingLR",
         "scheduler.warmup_epochs=1", "training.iters_per_epoch=4", "training.max_steps=20",
         "checkpoint.every_n_steps=2", "logging.log_every_n_steps=1"]
MAX_STEPS = 20

# Test-only wrapper: run the real CLI with one fault point armed. At the point it writes the marker
# file and sleeps, so the test can SIGKILL the process exactly there.
FAULT_WRAPPER = textwrap.dedent('''
    import os, re, shutil, sys, time
    from pathlib import Path

    point, marker = os.environ["FAULT_POINT"], Path(os.environ["FAULT_MARKER"])

    def pause():
        marker.write_text(str(os.getpid()))
        time.sleep(600)

    if point == "weights":  # model.safetensors written, nothing else yet
        import safetensors.torch as st
        real_save_file = st.save_file
        def save_file(tensors, filename, metadata=None):
            real_save_file(tensors, filename, metadata=metadata)
            if Path(filename).parent.name.startswith(".tmp-step-"):
                pause()
        st.save_file = save_file
    elif point == "state":  # weights, config and training_state.pt written; meta.json not yet
        import torch
        real_save = torch.save
        def save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            if Path(f).name == "training_state.pt":
                pause()
        torch.save = save
    elif point == "meta":  # meta.json written, the folder not yet renamed to its final name
        real_rename = os.rename
        def rename(src, dst, *args, **kwargs):
            if Path(src).name.startswith(".tmp-step-") and (Path(src) / "meta.json").exists():
                pause()
            return real_rename(src, dst, *args, **kwargs)
        os.rename = rename
    elif point == "prune":  # deleting an old checkpoint: its weights gone, its meta.json still there
        real_rmtree = shutil.rmtree
        def rmtree(path, *args, **kwargs):
            p = Path(path)
            if re.fullmatch(r"(\\.tmp-del-)?step-\\d+(-\\d+)?", p.name) and (p / "model.safetensors").exists():
                (p / "model.safetensors").unlink()  # a real rmtree takes the files in directory order
                pause()
            return real_rmtree(path, *args, **kwargs)
        shutil.rmtree = rmtree

    from pytc.cli import main
    main(sys.argv[1:])
''')


# ------------------------------------------------------------------------------------ helpers --
def start(argv: list, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a process in its own session (so a kill takes its whole group) with output to ``log``."""
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, *map(str, argv)], stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def wait_until(condition, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll ``condition`` every 2 ms; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before the fault point (seed {SEED}):\n"
                        f"{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            kill(proc)
            pytest.fail(f"no fault point within {timeout} s (seed {SEED})")
        time.sleep(0.002)


def run(argv: list, log: Path) -> str:
    proc = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=300)
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"(seed {SEED})\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc.stdout


def one_line_error(result) -> str:
    """The error line of a failed command; only the training progress bar may precede it."""
    assert result.exit_code == 2, f"{result.output}\n{result.exception!r}"
    lines = [line for line in result.output.splitlines() if line.strip() and not re.match(r"step +\d+/\d+", line)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def tree_hash(path: Path) -> str:
    """sha256 over every file under ``path`` (or of the file), names included."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def logged_step(run_dir: Path) -> int:
    try:
        text = (run_dir / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in text.splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):  # a line being written right now
            pass
    return max(steps)


def assert_complete_checkpoints_are_whole(run_dir: Path) -> None:
    """Every folder that looks complete (final name + meta.json) loads in full."""
    for folder in (run_dir / ckpt.CHECKPOINT_DIR).iterdir():
        if not ckpt.is_complete(folder):
            continue
        meta = ckpt.read_meta(folder)
        assert meta["step"] == int(folder.name.removeprefix("step-")), folder
        ckpt.load_weights(folder / ckpt.WEIGHTS)
        if meta["ema"]:
            ckpt.load_weights(folder / ckpt.RAW_WEIGHTS)
        assert ckpt.load_training_state(folder)["step"] == meta["step"]
        ckpt.read_config(folder)


def blobs(shape=(16, 32, 32), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    label = np.zeros(shape, np.uint8)
    for _ in range(6):
        c, r = rng.uniform([3, 6, 6], [shape[0] - 3, shape[1] - 6, shape[2] - 6]), rng.uniform(3, 5)
        label[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r * r] = 1
    image = (rng.normal(60, 20, shape) + label * 120).clip(0, 255).astype(np.uint8)
    return image, label


# ------------------------------------------------------------------------------------ training --
def write_train_data(root: Path) -> Path:
    """Tiny training data in ``root/blobs.h5`` and a config ``root/cfg.yaml`` that reads it."""
    image, label = blobs()
    with h5py.File(root / "blobs.h5", "w") as f:
        f["raw"], f["label"] = image, label
    cfg = root / "cfg.yaml"
    cfg.write_text(f"data:\n  train_image: {root / 'blobs.h5'}:raw\n  train_label: {root / 'blobs.h5'}:label\n")
    return cfg


@pytest.fixture(scope="module")
def train_setup(tmp_path_factory) -> dict:
    """A config and the final weights of an uninterrupted `pytc train` run (a real process)."""
    root = tmp_path_factory.mktemp("train")
    cfg = write_train_data(root)
    run(["-m", "pytc.cli", "train", cfg, *TRAIN, "--run-dir", root / "straight"], root / "straight.log")
    final = root / "straight" / ckpt.CHECKPOINT_DIR / ckpt.checkpoint_name(MAX_STEPS)
    return {"root": root, "cfg": cfg, "final": final}


def assert_same_final_weights(run_dir: Path, reference: Path) -> None:
    final = run_dir / ckpt.CHECKPOINT_DIR / reference.name
    for name in (ckpt.WEIGHTS, ckpt.RAW_WEIGHTS):  # EMA (inference) and raw (optimizer) weights
        a, b = load_file(reference / name), load_file(final / name)
        assert a.keys() == b.keys()
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{name}: {len(differ)} tensors differ, e.g. {differ[:3]} (seed {SEED})"


def test_train_killed_at_a_random_step_and_inside_checkpoint_writes_resumes_bit_exact(train_setup, tmp_path):
    rng = random.Random(SEED)
    run_dir, ckpts = tmp_path / "run", tmp_path / "run" / ckpt.CHECKPOINT_DIR
    train = ["-m", "pytc.cli", "train", train_setup["cfg"], *TRAIN, "--run-dir", run_dir]

    # 1. SIGKILL at a random step, whatever the process is doing then.
    k = rng.randint(3, 8)
    proc = start(train, tmp_path / "kill.log")
    wait_until(lambda: logged_step(run_dir) >= k, proc, tmp_path / "kill.log")
    kill(proc)
    assert_complete_checkpoints_are_whole(run_dir)

    # 2. SIGKILL inside each stage of a checkpoint write, and while an old checkpoint is deleted.
    wrapper = tmp_path / "faulty_pytc.py"
    wrapper.write_text(FAULT_WRAPPER)
    for point in ("weights", "state", "meta", "prune"):
        newest = ckpt.find_resume_checkpoint(run_dir)
        marker = tmp_path / f"paused-{point}"
        log = tmp_path / f"{point}.log"
        proc = start([wrapper, *train[2:], "--resume", "auto"], log, {"FAULT_POINT": point, "FAULT_MARKER": marker})
        wait_until(marker.exists, proc, log)
        kill(proc)
        assert f"resuming from {newest} (step {int(newest.name[5:])})" in log.read_text(), log.read_text()
        assert_complete_checkpoints_are_whole(run_dir)
        leftovers = [p.name for p in ckpts.iterdir() if p.name.startswith(".tmp-")]
        if point == "prune":  # the new checkpoint is in place; the old one is a temporary being deleted
            assert ckpt.find_resume_checkpoint(run_dir).name == ckpt.checkpoint_name(int(newest.name[5:]) + 2)
            assert any(name.startswith(f".tmp-del-{newest.name}-") for name in leftovers), leftovers
        else:  # the checkpoint being written is a temporary; the newest complete one is unchanged
            assert ckpt.find_resume_checkpoint(run_dir) == newest
            assert any(name.startswith(".tmp-step-") for name in leftovers), leftovers

    # 3. Resume to the end: the same weights as the run that was never interrupted.
    newest = ckpt.find_resume_checkpoint(run_dir)
    out = run([*train, "--resume", "auto"], tmp_path / "resume.log")
    assert f"resuming from {newest} (step {int(newest.name[5:])})" in out
    assert_same_final_weights(run_dir, train_setup["final"])
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".tmp-")]  # temporaries of the dead cleaned
    steps = [line["step"] for line in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    assert steps == list(range(1, MAX_STEPS + 1)), f"the log repeats or skips steps (seed {SEED})"


@pytest.mark.parametrize("where", ["checkpoint", "log"])
def test_train_disk_full_keeps_the_earlier_checkpoints_and_resumes(train_setup, tmp_path, monkeypatch, where):
    import builtins

    import safetensors.torch as st

    import pytc.engine.run_dir as run_dir_mod

    def enospc(filename):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    calls = []
    if where == "checkpoint":  # step 6's model.safetensors (two files per checkpoint with EMA)
        real_save = st.save_file

        def save_file(tensors, filename, metadata=None):
            calls.append(filename)
            if len(calls) == 5:
                Path(filename).write_bytes(b"\0" * 100)  # a partly written file, as a full disk leaves it
                raise enospc(filename)
            return real_save(tensors, filename, metadata=metadata)

        monkeypatch.setattr(st, "save_file", save_file)
        expected = [f"cannot write checkpoint {tmp_path / 'run' / 'checkpoints' / 'step-000006'}",
                    "No space left on device", "--resume auto (newest complete checkpoint: step-000004)"]
    else:  # step 6's line in metrics.jsonl
        def open_(file, *args, **kwargs):
            if Path(file).name == "metrics.jsonl":
                calls.append(file)
                if len(calls) == 6:
                    raise enospc(file)
            return builtins.open(file, *args, **kwargs)

        monkeypatch.setattr(run_dir_mod, "open", open_, raising=False)  # the module's `open`, not the builtin
        expected = [f"cannot write {tmp_path / 'run' / 'metrics.jsonl'} (No space left on device)"]

    run_dir = tmp_path / "run"
    argv = ["train", str(train_setup["cfg"]), *TRAIN, "--run-dir", str(run_dir)]
    line = one_line_error(runner.invoke(app, argv))
    assert all(word in line for word in expected), line
    assert sorted(p.name for p in (run_dir / ckpt.CHECKPOINT_DIR).iterdir()) == ["last", "step-000004"]
    assert_complete_checkpoints_are_whole(run_dir)

    monkeypatch.undo()
    result = runner.invoke(app, [*argv, "--resume", "auto"])
    assert result.exit_code == 0, result.output
    assert_same_final_weights(run_dir, train_setup["final"])
    steps = [line["step"] for line in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    assert steps == list(range(1, MAX_STEPS + 1))


# ----------------------------------------------------------------------------------- inference --
INFER = ["data.patch_size=[8,16,16]", "model.architecture=monai_unet", "model.filters=[4,8,16]", "system.num_cpus=1",
         "system.num_gpus=0", "inference.sw_batch_size=1", "inference.block_size=[8,16,16]"]


def tiny_checkpoint(root: Path):
    """The config (INFER) and folder of an untrained tiny U-Net checkpoint under ``root/run``."""
    cfg = load_config(None, INFER)
    torch.manual_seed(0)
    folder = ckpt.save_checkpoint(root / "run" / ckpt.CHECKPOINT_DIR, 1, weights=build_model(cfg.model).state_dict(),
                                  config_yaml=dump_config(cfg), training_state={}, meta={})
    return cfg, folder


@pytest.fixture(scope="module")
def infer_setup(tmp_path_factory) -> dict:
    """A tiny checkpoint and an input of 2×4×8 = 64 blocks (~5 ms each: a kill lands mid-volume)."""
    root = tmp_path_factory.mktemp("infer")
    cfg, folder = tiny_checkpoint(root)
    image, _ = blobs((16, 64, 128), seed=1)
    with h5py.File(root / "raw.h5", "w") as f:
        f.create_dataset("raw", data=image, chunks=(8, 16, 16))
    return {"root": root, "ckpt": folder, "input": f"{root / 'raw.h5'}:raw", "blocks": 64}


def partial_store(out: Path, key: str | None = None) -> tuple[Path, Path]:
    """The partial data and the done/ folder of a resumable prediction store (HDF5: one per key)."""
    partial = out.with_name(f".{out.name}.{key}.pytc-partial" if key else f".{out.name}.pytc-partial")
    record = partial / ".pytc-record" if out.suffix == ".zarr" else partial.with_name(partial.name + ".pytc-record")
    return partial, record / "done"


def done_blocks(done_dir: Path) -> int:
    try:
        return sum(1 for p in done_dir.iterdir() if p.name.isdigit())
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("fmt_name", ["zarr", "hdf5"])
def test_infer_killed_mid_volume_finishes_only_the_missing_blocks(infer_setup, tmp_path, fmt_name):
    s, n = infer_setup, infer_setup["blocks"]
    out = tmp_path / ("pred.zarr" if fmt_name == "zarr" else "pred.h5")
    spec = str(out) if fmt_name == "zarr" else f"{out}:prob"
    partial, done_dir = partial_store(out, None if fmt_name == "zarr" else "prob")
    argv = ["-m", "pytc.cli", "infer", "--ckpt", s["ckpt"], "--input", s["input"], "--output", spec]

    k = random.Random(SEED).randint(2, n // 4)
    proc = start(argv, tmp_path / "kill.log")
    wait_until(lambda: done_blocks(done_dir) >= k, proc, tmp_path / "kill.log")
    kill(proc)
    done = done_blocks(done_dir)
    assert k <= done < n and not out.exists() and partial.exists(), f"seed {SEED}"

    stdout = run(argv, tmp_path / "rerun.log")
    assert f"{n} blocks: {n - done} computed, {done} skipped (finished by an earlier run)" in stdout, stdout
    assert not partial.exists() and not done_dir.parent.exists()

    other = spec.replace("pred.", "straight.")  # the same format: HDF5 falls back to gzip, recorded in the attrs
    straight = runner.invoke(app, ["infer", "--ckpt", str(s["ckpt"]), "--input", s["input"], "--output", other])
    assert straight.exit_code == 0, straight.output
    with open_volume(spec) as a, open_volume(other) as b:
        np.testing.assert_array_equal(a[...], b[...])
        assert a.attrs == b.attrs


def test_infer_disk_full_keeps_finished_blocks_and_resumes(infer_setup, tmp_path, monkeypatch):
    s, n, k = infer_setup, infer_setup["blocks"], 7
    real, calls = zarr_store.ZarrWriter.write, []

    def full_disk(self, sel, value):
        calls.append(sel)
        if len(calls) > k:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, sel, value)

    out = tmp_path / "pred.zarr"
    argv = ["infer", "--ckpt", str(s["ckpt"]), "--input", s["input"], "--output", str(out)]
    monkeypatch.setattr(zarr_store.ZarrWriter, "write", full_disk)
    line = one_line_error(runner.invoke(app, argv))
    assert f"cannot write {out}" in line and "No space left on device" in line
    assert not out.exists() and done_blocks(partial_store(out)[1]) == k  # the blocks written before are kept

    monkeypatch.setattr(zarr_store.ZarrWriter, "write", real)
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert f"{n} blocks: {n - k} computed, {k} skipped" in result.output
    assert runner.invoke(app, [*argv[:-1], str(tmp_path / "straight.zarr")]).exit_code == 0
    with open_volume(out) as a, open_volume(tmp_path / "straight.zarr") as b:
        np.testing.assert_array_equal(a[...], b[...])


# ------------------------------------------------------------------------------------- convert --
@pytest.fixture(scope="module")
def big_source(tmp_path_factory) -> Path:
    """32 MB of incompressible uint16: gzip takes about a second, time enough to kill mid-write."""
    path = tmp_path_factory.mktemp("convert") / "src.h5"
    data = np.random.default_rng(0).integers(0, 2**16, (64, 512, 512), dtype=np.uint16)
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=data, chunks=(16, 128, 128))
    return path


def _temporaries(folder: Path, name: str) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(f".{name}.pytc-tmp-")]


@pytest.mark.parametrize("dst_name, replace", [("out.zarr", False), ("out.h5", False), ("out.tif", False),
                                               ("out.zarr", True)])
def test_convert_killed_mid_write_leaves_no_destination(big_source, tmp_path, dst_name, replace):
    src_hash = tree_hash(big_source)
    dst = tmp_path / dst_name
    if replace:  # an earlier output that --force is replacing
        assert runner.invoke(app, ["convert", f"{big_source}:raw", str(dst), "--chunks", "64,64,64"]).exit_code == 0
        old_hash = tree_hash(dst)
    argv = ["-m", "pytc.cli", "convert", f"{big_source}:raw", dst, *(["--force"] if replace else [])]
    proc = start(argv, tmp_path / "convert.log")
    tmp = tmp_path / f".{dst_name}.pytc-tmp-{proc.pid}"

    def writing() -> bool:  # the temporary holds some data already
        try:
            return sum(f.stat().st_size for f in ([tmp] if tmp.is_file() else tmp.rglob("*"))) > 2**20
        except FileNotFoundError:
            return False

    wait_until(writing, proc, tmp_path / "convert.log", timeout=60)
    kill(proc)
    assert tmp.exists(), "the kill missed the write"
    assert _temporaries(tmp_path, dst_name) == [tmp.name]  # named after the output and the dead process
    if replace:
        assert tree_hash(dst) == old_hash  # the earlier output is untouched
    else:
        assert not dst.exists()
    assert tree_hash(big_source) == src_hash

    result = runner.invoke(app, ["convert", f"{big_source}:raw", str(dst), "--force"])  # the next run
    assert result.exit_code == 0, result.output
    assert _temporaries(tmp_path, dst_name) == []
    with open_volume(f"{big_source}:raw") as a, open_volume(dst) as b:
        assert a[...].tobytes() == b[...].tobytes()
    assert tree_hash(big_source) == src_hash


def test_convert_disk_full_keeps_the_earlier_output(tmp_path, monkeypatch):
    data = np.random.default_rng(1).integers(0, 255, (8, 64, 64), dtype=np.uint8)
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["raw"] = data
    dst = tmp_path / "out.zarr"
    assert runner.invoke(app, ["convert", str(tmp_path / "src.h5"), str(dst), "--chunks", "2,16,16"]).exit_code == 0
    before = tree_hash(dst)
    real, calls = zarr_store.ZarrWriter.write, []

    def full_disk(self, sel, value):
        calls.append(sel)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, sel, value)

    monkeypatch.setattr(zarr_store.ZarrWriter, "write", full_disk)
    monkeypatch.setattr(io_blocks, "BLOCK_BYTES", 4096)  # many small blocks: the disk fills up halfway
    line = one_line_error(runner.invoke(app, ["convert", str(tmp_path / "src.h5"), str(dst), "--force",
                                              "--chunks", "2,16,16"]))
    assert f"cannot write {dst}" in line and "No space left on device" in line and len(calls) > 3
    assert tree_hash(dst) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr", "src.h5"]


def test_evaluate_disk_full_keeps_the_earlier_report(tmp_path, monkeypatch):
    _, label = blobs()
    with h5py.File(tmp_path / "gt.h5", "w") as f:
        f["gt"] = label
    argv = ["evaluate", f"{tmp_path / 'gt.h5'}:gt", f"{tmp_path / 'gt.h5'}:gt", "--json", str(tmp_path / "m.json")]
    assert runner.invoke(app, argv).exit_code == 0
    before = (tmp_path / "m.json").read_text()
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name.startswith(".m.json"):
            real(self, "{")  # half a report
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    line = one_line_error(runner.invoke(app, [*argv, "--task", "instance", "--force"]))
    assert f"cannot write {tmp_path / 'm.json'} (No space left on device)" in line
    assert (tmp_path / "m.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.h5", "m.json"]  # no temporary left


# -------------------------------------------------------------------------- unwritable outputs --
def _refuse_if_reached(monkeypatch, target: str, name: str) -> None:
    """Make the long work of a command fail loudly, to prove an error came before it."""
    import importlib

    def reached(*args, **kwargs):
        raise AssertionError(f"{target}.{name} ran: the output should have been refused before")

    monkeypatch.setattr(importlib.import_module(target), name, reached)


UNWRITABLE = {  # command -> (argv with OUT as the output path, the long work that must not start)
    "convert": (lambda s, out: ["convert", s["input"], out], ("pytc.io.blocks", "map_blocks")),
    "infer": (lambda s, out: ["infer", "--ckpt", s["ckpt"], "--input", s["input"], "--output", out],
              ("pytc.models", "build_model")),
    "train": (lambda s, out: ["train", s["cfg"], *TRAIN, "--run-dir", out], ("pytc.models", "build_model")),
    "evaluate --json": (lambda s, out: ["evaluate", s["input"], s["input"], "--json", out],
                        ("pytc.metrics", "evaluate_volumes")),
    "decode": (lambda s, out: ["decode", s["input"], "--channels", "binary", "-o", out],
               ("pytc.decode.volume", "decode_blockwise")),
}


@pytest.mark.parametrize("command", list(UNWRITABLE))
def test_the_work_each_refusal_test_guards_is_reached_with_a_good_output(setups, tmp_path, monkeypatch, command):
    """The guards above are live: with a writable output each command does reach its long work."""
    make_argv, (module, function) = UNWRITABLE[command]
    _refuse_if_reached(monkeypatch, module, function)
    result = runner.invoke(app, [str(a) for a in make_argv(setups, tmp_path / "fine" / "out.zarr")])
    assert isinstance(result.exception, AssertionError) and f"{module}.{function} ran" in str(result.exception)


@pytest.fixture
def setups(infer_setup, train_setup) -> dict:
    return {**infer_setup, "cfg": train_setup["cfg"]}


@pytest.mark.parametrize("command", list(UNWRITABLE))
def test_output_under_a_regular_file_is_refused_before_the_work(setups, tmp_path, monkeypatch, command):
    """A path through a regular file cannot be created, even by root (CI runs as root)."""
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    make_argv, (module, function) = UNWRITABLE[command]
    _refuse_if_reached(monkeypatch, module, function)
    line = one_line_error(runner.invoke(app, [str(a) for a in make_argv(setups, blocker / "sub" / "out.zarr")]))
    assert f"cannot write {blocker / 'sub'}" in line and f"{blocker} is a file, not a folder" in line
    assert [p.name for p in tmp_path.iterdir()] == ["results"] and blocker.read_text().startswith("a file")


@pytest.mark.parametrize("command", list(UNWRITABLE))
def test_output_through_a_broken_link_is_refused_before_the_work(setups, tmp_path, monkeypatch, command):
    """A link to an unmounted share, say: one line naming the link, not a FileExistsError traceback."""
    (tmp_path / "share").symlink_to(tmp_path / "not-mounted")
    make_argv, (module, function) = UNWRITABLE[command]
    _refuse_if_reached(monkeypatch, module, function)
    line = one_line_error(runner.invoke(app, [str(a) for a in make_argv(setups, tmp_path / "share" / "out.zarr")]))
    assert f"{tmp_path / 'share'} links to {tmp_path / 'not-mounted'}, which does not exist" in line


@pytest.mark.parametrize("command", [c for c in UNWRITABLE if c != "train"])
def test_an_input_is_never_the_output_even_with_force(setups, monkeypatch, command):
    """`--force` replaces outputs, never the data being read."""
    source = setups["input"]
    target = source.split(":")[0] if command == "evaluate --json" else source  # a report would replace the file
    before = Path(source.split(":")[0]).read_bytes()
    make_argv, (module, function) = UNWRITABLE[command]
    _refuse_if_reached(monkeypatch, module, function)
    line = one_line_error(runner.invoke(app, [str(a) for a in [*make_argv(setups, target), "--force"]]))
    assert f"is also the input {source}" in line and "choose another output" in line
    assert Path(source.split(":")[0]).read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits: a read-only folder cannot be made; "
                                              "test_output_under_a_regular_file_is_refused_before_the_work covers it")
@pytest.mark.parametrize("command", list(UNWRITABLE))
def test_read_only_output_folder_is_refused_before_the_work(setups, tmp_path, monkeypatch, command):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        make_argv, (module, function) = UNWRITABLE[command]
        _refuse_if_reached(monkeypatch, module, function)
        line = one_line_error(runner.invoke(app, [str(a) for a in make_argv(setups, folder / "out.zarr")]))
        assert f"folder {folder} is not writable" in line
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_a_checkpoint_folder_is_deleted_by_renaming_it_first(tmp_path, monkeypatch):
    """The unit behind the "prune" kill point: a half-deleted folder never keeps its final name."""
    import shutil

    cfg = load_config(None, INFER)
    model = build_model(cfg.model)
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, weights=model.state_dict(), config_yaml=dump_config(cfg),
                             training_state={"step": step}, meta={"metrics": {}})
    seen = []
    monkeypatch.setattr(shutil, "rmtree", lambda path, *a, **k: seen.append(Path(path).name))
    ckpt.update_pointers_and_prune(tmp_path, "val/loss", "min", save_top_k=0, save_last=True)
    monkeypatch.undo()
    assert re.fullmatch(rf"\.tmp-del-step-000001-{os.getpid()}", seen[-1]), seen
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000002"]
    assert ckpt.clean_stale(tmp_path) and not list(tmp_path.glob(".tmp-*"))
