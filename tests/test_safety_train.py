"""`pytc train` keeps users' files and runs safe: its own config file, one process per run folder,
real full disks, damaged or incomplete checkpoints, Ctrl-C.

Where a guarantee is about processes or disks, the test uses real `pytc` processes (two at once,
SIGKILL, SIGINT) or a real small file system (a tmpfs, see ``small_fs`` in conftest.py).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import fill_up
from pytc.cli import app
from pytc.config import load_config
from pytc.engine import checkpoint as ckpt
from test_faults import TRAIN, kill, logged_step, one_line_error, start, wait_until, write_train_data

runner = CliRunner()
QUIET = [*TRAIN, "logging.tensorboard=false"]
PYTC = ["-m", "pytc.cli", "train"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Tiny training data and a config that reads it (the config of test_faults.py)."""
    root = tmp_path_factory.mktemp("data")
    return {"root": root, "cfg": write_train_data(root), "h5": root / "blobs.h5"}


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A run with checkpoints at steps 2, 4 and 6 (validated, all kept), trained with EMA."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    h5 = data["h5"]
    result = runner.invoke(app, ["train", str(data["cfg"]), *QUIET, "training.max_steps=6",
                                 f"data.val_image={h5}:raw", f"data.val_label={h5}:label",
                                 "training.val_check_interval=2", "checkpoint.save_top_k=5",
                                 "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert [p.name for p in ckpt.list_checkpoints(run_dir / "checkpoints")] == [
        "step-000002", "step-000004", "step-000006"]
    return run_dir


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def error_line(text: str) -> str:
    """The one error line of a real process's output (the progress bar may precede it)."""
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip() and not re.match(r"\s*step +\d+", ln)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    return lines[0]


# ------------------------------------------------------------------------ the config is an input --
def test_train_with_run_dir_at_the_config_folder_keeps_the_config_byte_identical(data, tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    folder.mkdir()
    original = data["cfg"].read_bytes() + b"# my notes: keep them\n"
    (folder / "config.yaml").write_bytes(original)
    monkeypatch.chdir(folder)
    result = runner.invoke(app, ["train", "config.yaml", *QUIET, "training.max_steps=2", "--run-dir", "."])
    assert result.exit_code == 0, result.output
    assert (folder / "config.yaml").read_bytes() == original  # the input, untouched
    assert "the resolved config goes to config.resolved.yaml" in result.output
    resolved = load_config(folder / "config.resolved.yaml")
    assert resolved == load_config(folder / "config.yaml", [*QUIET, "training.max_steps=2"])
    # The checkpoint's own config.yaml (what infer and resume read) is the resolved one, as always.
    assert ckpt.read_config(folder / "checkpoints" / "step-000002") == resolved


# --------------------------------------------------------------------- one process per run folder --
def test_a_second_train_into_the_same_run_folder_is_refused_and_the_first_finishes(data, tmp_path):
    run_dir = tmp_path / "run"
    # Long enough that each of the two finds the other: a time limit ends it normally (exit 0).
    argv = [*PYTC, data["cfg"], *QUIET, "training.max_steps=100000", "training.max_minutes=0.15",
            "checkpoint.every_n_steps=50", "--run-dir", run_dir]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start(argv, log) for log in logs]  # at once, as a scheduler's requeue does
    first_done = None
    while first_done is None:
        first_done = next((i for i, p in enumerate(procs) if p.poll() is not None), None)
        time.sleep(0.05)
    loser, winner = procs[first_done], procs[1 - first_done]
    assert loser.returncode == 2, logs[first_done].read_text()
    assert winner.poll() is None, "the winner must still be running when the second one is refused"
    line = error_line(logs[first_done].read_text())
    assert re.fullmatch(rf"Error: run folder {re.escape(str(run_dir))} is in use by pid {winner.pid} on host "
                        rf"{re.escape(os.uname().nodename)} .*; wait for it to finish or stop it, then rerun", line), line
    assert winner.wait(timeout=300) == 0, logs[1 - first_done].read_text()
    steps = steps_logged(run_dir)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2  # each step once, in order
    assert not (run_dir / ".pytc-lock").exists()  # released at the end


def test_under_accelerate_every_rank_stops_when_the_run_folder_is_taken(data, tmp_path):
    """Only the main process takes the lock (two ranks of one run are not refused: see
    test_engine.py::test_two_processes_stay_in_sync); when it is refused, no rank trains or hangs."""
    from pytc.locks import exclusive

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    overrides = [f"data.train_image={data['h5']}:raw", f"data.train_label={data['h5']}:label", *QUIET]
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from accelerate import debug_launcher
        from pytc.config import load_config
        from pytc.engine import fit
        from pytc.locks import LockedError

        def main():
            try:
                fit(load_config(None, {overrides!r}), run_dir={str(run_dir)!r})
                outcome = "trained"
            except LockedError as err:
                outcome = str(err)
            with open({str(tmp_path)!r} + f"/rank{{torch.distributed.get_rank()}}.txt", "w") as fh:
                fh.write(outcome)

        if __name__ == "__main__":
            debug_launcher(main, num_processes=2)
    """))
    with exclusive(run_dir / ".pytc-lock", "run folder"):
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        outcome = (tmp_path / f"rank{rank}.txt").read_text()
        assert outcome.startswith(f"run folder {run_dir} is in use by pid {os.getpid()} on host "), outcome
    assert sorted(p.name for p in run_dir.iterdir()) == []  # nothing written (the lock file went with its holder)


def test_after_a_kill_9_of_the_holder_resume_auto_takes_the_lock(data, tmp_path):
    run_dir = tmp_path / "run"
    argv = [*PYTC, data["cfg"], *QUIET, "training.max_steps=100000", "--run-dir", run_dir]
    proc = start(argv, tmp_path / "killed.log")
    wait_until(lambda: ckpt.find_resume_checkpoint(run_dir) is not None, proc, tmp_path / "killed.log")
    kill(proc)
    assert (run_dir / ".pytc-lock").exists()  # left behind by the dead holder
    newest = ckpt.find_resume_checkpoint(run_dir)
    step = int(newest.name[5:])
    result = runner.invoke(app, ["train", str(data["cfg"]), *QUIET, f"training.max_steps={step + 2}",
                                 "--run-dir", str(run_dir), "--resume", "auto"])
    assert result.exit_code == 0, result.output
    assert f"resuming from {newest} (step {step})" in result.output
    assert ckpt.find_resume_checkpoint(run_dir).name == ckpt.checkpoint_name(step + 2)


def test_a_refused_start_leaves_no_run_folder_behind(data, tmp_path):
    """Guard: taking the run folder's lock creates the folder; a refused start removes it again."""
    run_dir = tmp_path / "new" / "run"
    result = runner.invoke(app, ["train", str(data["cfg"]), *QUIET, "--run-dir", str(run_dir),
                                 "--resume", str(tmp_path / "nowhere")])
    assert "not found" in one_line_error(result)
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------- real full disk --
def test_a_real_full_disk_while_saving_a_checkpoint_is_one_line(data, trained, tmp_path, small_fs):
    where = small_fs("8m")
    run_dir = where / "run"
    size = sum(f.stat().st_size for f in (trained / "checkpoints" / "step-000002").iterdir())
    # Room for the weights, not for the training state: torch.save fails with an errno-less
    # RuntimeError (safetensors' error: the next test). The log's lines still fit.
    leave = size // 2
    argv = [*PYTC, data["cfg"], *QUIET, "training.max_steps=100000", "--run-dir", run_dir]
    proc = start(argv, tmp_path / "full.log")
    wait_until(lambda: ckpt.find_resume_checkpoint(run_dir) is not None, proc, tmp_path / "full.log")
    fill_up(where, leave=leave)
    assert proc.wait(timeout=300) == 2, (tmp_path / "full.log").read_text()
    newest = ckpt.find_resume_checkpoint(run_dir)
    line = error_line((tmp_path / "full.log").read_text())
    assert re.fullmatch(rf"Error: cannot write checkpoint {re.escape(str(run_dir))}/checkpoints/step-\d+ \(No space "
                        rf"left on device\); free some space and rerun with --resume auto \(newest complete "
                        rf"checkpoint: {newest.name}\)", line), line
    assert not [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    ckpt.open_for_resume(newest)  # the earlier checkpoint is whole
    ckpt.load_weights(newest / ckpt.WEIGHTS)


# --------------------------------------------------------------------------- damaged checkpoints --
def _damage(folder: Path, how: str) -> None:
    if how == "meta.json not JSON":
        (folder / "meta.json").write_text('{"name": "step-0000')
    elif how == "meta.json of another step":
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "step": 2}))
    elif how == "model.safetensors missing":
        (folder / "model.safetensors").unlink()
    elif how == "model_raw.safetensors missing":
        (folder / "model_raw.safetensors").unlink()
    elif how == "model.safetensors cut short":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:40])
    elif how == "training_state.pt cut short":
        data = (folder / "training_state.pt").read_bytes()
        (folder / "training_state.pt").write_bytes(data[: len(data) // 2])


EXPECTED = {
    "meta.json not JSON": r"is damaged \(meta\.json: not readable JSON: .*\)",
    "meta.json of another step": r"is damaged \(meta\.json: its step is 2, the folder's is 6\)",
    "model.safetensors missing": r"is missing model\.safetensors \(deleted, or not copied with the folder\)",
    "model_raw.safetensors missing": r"is missing model_raw\.safetensors \(deleted, or not copied with the folder\)",
    "model.safetensors cut short": r"is damaged \(model\.safetensors: .*\)",
    "training_state.pt cut short": r"is damaged \(training_state\.pt: .*\); use another checkpoint; or",
}


@pytest.mark.parametrize("how", list(EXPECTED))
def test_a_damaged_checkpoint_is_refused_at_resume_naming_the_one_before(data, trained, tmp_path, how):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    damaged, before = run_dir / "checkpoints" / "step-000006", run_dir / "checkpoints" / "step-000004"
    _damage(damaged, how)
    argv = ["train", str(data["cfg"]), *QUIET, "training.max_steps=8", "--run-dir", str(run_dir)]
    line = one_line_error(runner.invoke(app, [*argv, "--resume", "auto"]))
    assert re.fullmatch(rf"Error: (refusing to load .*|)checkpoint {re.escape(str(damaged))} {EXPECTED[how]}.*"
                        rf"resume from the one before with --resume {re.escape(str(before))}", line), line
    assert steps_logged(run_dir) == steps_logged(trained)  # refused before anything was touched
    if how == "meta.json not JSON":  # the advice works: the damaged one is set aside, the run goes on
        result = runner.invoke(app, [*argv, "--resume", str(before)])
        assert result.exit_code == 0, result.output
        assert ckpt.find_resume_checkpoint(run_dir).name == "step-000008"
        assert (run_dir / "checkpoints" / "abandoned" / "step-000006").is_dir()


def test_a_damaged_earlier_checkpoint_is_named_at_resume_not_at_the_next_save(data, trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    older = run_dir / "checkpoints" / "step-000002"
    (older / "meta.json").write_text("\0\0\0")
    result = runner.invoke(app, ["train", str(data["cfg"]), *QUIET, "training.max_steps=8",
                                 "--run-dir", str(run_dir), "--resume", "auto"])
    line = one_line_error(result)
    assert line.startswith(f"Error: checkpoint {older} is damaged (meta.json: ")
    assert line.endswith(f"move it out of {older.parent} (or put back a good copy), then rerun"), line
    assert steps_logged(run_dir) == steps_logged(trained)


def test_a_missing_weights_file_is_called_missing_not_damaged(trained, tmp_path):
    folder = tmp_path / "step-000006"
    shutil.copytree(trained / "checkpoints" / "step-000006", folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_checkpoint_for_inference(folder)
    assert str(err.value) == (f"checkpoint {folder} has no model.safetensors (the file is missing: deleted, or not "
                              "copied with the folder); copy the whole checkpoint folder again or use another checkpoint")


# ------------------------------------------------------------------------------------------ Ctrl-C --
def test_ctrl_c_exits_130_naming_the_last_checkpoint_and_resume_auto(data, tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "train.log"
    proc = start([*PYTC, data["cfg"], *QUIET, "training.max_steps=100000", "--run-dir", run_dir], log)
    wait_until(lambda: ckpt.find_resume_checkpoint(run_dir) is not None and logged_step(run_dir) >= 3, proc, log)
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()
    last = ckpt.find_resume_checkpoint(run_dir)
    text = log.read_text()
    assert "Traceback" not in text, text
    assert f"Interrupted: the last checkpoint is {last}; continue with --resume auto (and --run-dir {run_dir})" in text
    assert not (run_dir / ".pytc-lock").exists()


def _save_with(save_file, trained, tmp_path, monkeypatch) -> tuple[Path, str]:
    """Save step 4 beside a copy of ``trained``'s step 2 with safetensors' ``save_file`` replaced by
    ``save_file`` (which fails); the checkpoint folder and the one-line error."""
    import safetensors.torch as st

    ckpt_dir = tmp_path / "run" / "checkpoints"
    shutil.copytree(trained / "checkpoints" / "step-000002", ckpt_dir / "step-000002")
    monkeypatch.setattr(st, "save_file", save_file)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.save_checkpoint(ckpt_dir, 4, weights={}, config_yaml="", training_state={}, meta={})
    return ckpt_dir, str(err.value)


def test_a_full_disk_that_safetensors_reports_only_in_its_message_is_one_line(trained, tmp_path, monkeypatch):
    """safetensors' error has no errno (``... (os error 28)``); on a disk with room to spare, the
    message alone says it is a full disk."""
    from safetensors import SafetensorError

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)  # a partly written file
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    ckpt_dir, err = _save_with(save_file, trained, tmp_path, monkeypatch)
    assert err == (f"cannot write checkpoint {ckpt_dir / 'step-000004'} (No space left on device); free "
                   "some space and rerun with --resume auto (newest complete checkpoint: step-000002)")
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-000002"]


def test_a_permission_error_while_saving_is_not_called_a_full_disk(trained, tmp_path, monkeypatch):
    """Only a full disk (or quota) is told to free space; a folder that refuses writes is named."""

    def save_file(tensors, filename, metadata=None):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(filename))

    ckpt_dir, err = _save_with(save_file, trained, tmp_path, monkeypatch)
    assert err == (f"cannot write checkpoint {ckpt_dir / 'step-000004'} (Permission denied); make "
                   f"{ckpt_dir} writable and rerun with --resume auto (newest complete checkpoint: step-000002)")


def test_no_file_of_the_base_chain_is_a_dump_destination(tmp_path):
    """`pytc train RUN/exp.yaml --run-dir RUN` where exp.yaml's _base_ is RUN/config.yaml: the
    resolved config goes elsewhere (the files read are listed by config_files)."""
    from pytc.config import config_files
    from pytc.engine.run_dir import config_destination

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("training:\n  max_steps: 3\n")
    (tmp_path / "exp.yaml").write_text("_base_: run/config.yaml\noptimizer:\n  lr: 0.01\n")
    files = config_files(tmp_path / "exp.yaml")
    assert files == [(tmp_path / "exp.yaml").resolve(), (run / "config.yaml").resolve()]
    assert config_destination(run, [tmp_path / "exp.yaml", *files]).name == "config.resolved.yaml"
    assert config_destination(tmp_path / "other", files).name == "config.yaml"
