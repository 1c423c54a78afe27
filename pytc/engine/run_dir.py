"""A training run's folder: its lock, where the resolved config goes, the metrics log and :func:`fit`'s summary.

Layout (besides ``checkpoints/``, see :mod:`pytc.engine.checkpoint`)::

    RUN/
      .pytc-lock             held by the main process while a run trains into the folder (pytc.locks)
      config.yaml            the resolved config (config.resolved.yaml when RUN/config.yaml is an input)
      metrics.jsonl          one JSON line per logged step and per validation
      previews/              image | label | prediction PNG of each validation
      tensorboard/           with logging.tensorboard
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pytc.choices import VAL_METRICS
from pytc.engine import checkpoint as ckpt
from pytc.errors import OutputExistsError
from pytc.io import disk_errors, write_atomic

if TYPE_CHECKING:
    from pytc.config import PytcConfig

RUN_LOCK = ".pytc-lock"  # inside the run folder: the folder's lock file (pytc.locks)
METRICS = "metrics.jsonl"


def config_destination(run_dir: Path, inputs) -> Path:
    """Where the resolved config goes: ``RUN/config.yaml``, unless that file is an input of this run."""
    inputs = [Path(os.fspath(f)) for f in inputs]
    for name in (ckpt.CONFIG, ckpt.RESOLVED_CONFIG):
        if not any(_same_file(run_dir / name, f) for f in inputs):
            return run_dir / name
    raise OutputExistsError(f"{run_dir / ckpt.CONFIG} and {run_dir / ckpt.RESOLVED_CONFIG} are both inputs of this "
                            "run; choose another --run-dir")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.absolute() == b.absolute()


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, accelerator):
    """Hold ``RUN/.pytc-lock`` for the run; a second process is refused at once, naming the holder.

    Only the main process takes it (it alone writes the folder); when it is refused, every process
    stops. A run folder this creates is removed again if the run ends before writing into it, so a
    refused or failed start leaves nothing behind.
    """
    from accelerate.utils import broadcast_object_list

    from pytc.locks import LockedError, exclusive

    created = []
    with contextlib.ExitStack() as stack:
        refusal = None
        if accelerator.is_main_process:
            for folder in [*reversed(run_dir.absolute().parents), run_dir.absolute()]:
                if not folder.exists():
                    with disk_errors(folder):
                        folder.mkdir()
                    created.append(folder)
            try:
                stack.enter_context(exclusive(run_dir / RUN_LOCK, f"run folder {run_dir}"))
            except LockedError as err:
                refusal = str(err)
        if accelerator.num_processes > 1:  # the others learn the main process's verdict
            refusal = broadcast_object_list([refusal])[0]
        try:
            if refusal:
                raise LockedError(refusal)
            yield
        finally:
            stack.close()  # the lock file goes first, then the folders it was alone in
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()


def prepare_run_dir(run_dir: Path, config_file: Path, cfg: "PytcConfig", step: int,
                    say: Callable[[str], None]) -> None:
    """Make ``run_dir`` ready for a run that starts after ``step`` (main process only).

    Writes the resolved config to ``config_file``, removes stale checkpoint temporaries, drops the
    log lines past ``step`` and sets aside the checkpoints newer than ``step`` (a resume from an
    older checkpoint starts a new branch); ``say`` prints what the user should know.
    """
    from pytc.config import dump_config

    ckpt_dir = run_dir / ckpt.CHECKPOINT_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.clean_stale(ckpt_dir)
    if config_file.name != ckpt.CONFIG:
        say(f"{run_dir / ckpt.CONFIG} is the config being read; the resolved config goes to {config_file}")
    write_atomic(config_file, dump_config(cfg))
    truncate_metrics(run_dir / METRICS, after=step)
    moved = ckpt.set_aside_after(ckpt_dir, step)
    if moved:
        say(f"moved {len(moved)} checkpoint{'s' if len(moved) != 1 else ''} newer than step {step} to "
            f"{moved[0].parent}")
        ckpt_cfg = cfg.checkpoint
        ckpt.update_pointers_and_prune(ckpt_dir, ckpt_cfg.monitor, ckpt_cfg.mode, ckpt_cfg.save_top_k,
                                       ckpt_cfg.save_last)


def log_metrics(accelerator, run_dir: Path, step: int, values: dict) -> None:
    """One JSON line in ``metrics.jsonl`` (main process) and the trackers (TensorBoard)."""
    if accelerator.is_main_process:
        with disk_errors(run_dir / METRICS), open(run_dir / METRICS, "a") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")
    if accelerator.trackers:
        accelerator.log({k if k.startswith("val/") else f"train/{k}": v for k, v in values.items()}, step=step)


def truncate_metrics(path: Path, after: int) -> None:
    """Drop log lines past step ``after`` (an interrupted run's tail that a resume will redo)."""
    if not path.exists():
        return

    def keep(line: str) -> bool:
        try:
            return json.loads(line).get("step", 0) <= after
        except json.JSONDecodeError:  # a line cut short when the run was killed
            return False

    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and keep(ln)]
    write_atomic(path, "".join(ln + "\n" for ln in lines))


def last_validation(path: Path) -> dict:
    """The last validation metrics logged in ``metrics.jsonl`` ({} when there are none)."""
    found: dict = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short when a run was killed
                continue
            if any(k in row for k in VAL_METRICS):
                found = {k: v for k, v in row.items() if k in VAL_METRICS}
    return found


def summary(run_dir: Path, step: int, start_step: int, metrics: dict, stopped_early: bool, out_of_time: bool,
            main: bool, raw_model, already_finished: bool = False) -> dict:
    """:func:`pytc.engine.fit`'s return value (documented there)."""
    best = run_dir / ckpt.CHECKPOINT_DIR / "best"
    last = ckpt.find_resume_checkpoint(run_dir)
    return {
        "run_dir": str(run_dir),
        "step": step,
        "steps_this_run": step - start_step,
        "best_checkpoint": str(ckpt.resolve_checkpoint(best)) if best.is_file() else None,
        "last_checkpoint": str(last) if last else None,
        "metrics": metrics,
        "stopped_early": stopped_early,
        "out_of_time": out_of_time,
        "already_finished": already_finished,
        "is_main_process": main,
        "model": raw_model,
    }
