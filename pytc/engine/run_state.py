"""A training run's state and its checkpoints: which checkpoint ``resume`` names, saving the run
(weights, optimizer, scheduler, grad scaler, EMA count, RNG, early-stopping counters) and putting
a saved run back into the prepared objects. The file format is :mod:`pytc.engine.checkpoint`'s."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pytc.engine import checkpoint as ckpt
from pytc.errors import CheckpointError

if TYPE_CHECKING:
    from pytc.config import PytcConfig


def resume_checkpoint(resume, run_dir: Path) -> Optional[Path]:
    """The checkpoint ``resume`` names: ``None`` (start fresh), ``"auto"`` (the newest of ``run_dir``) or a path."""
    if resume is None:
        return None
    if str(resume) == "auto":
        return ckpt.find_resume_checkpoint(run_dir)  # nothing yet: a fresh start, so `--resume auto` is idempotent
    return ckpt.resolve_checkpoint(resume)


def restore_run_state(path: Path, state: dict, cfg: "PytcConfig", raw_model, optimizer, scheduler, ema,
                      accelerator) -> None:
    """Load the weights of checkpoint ``path`` and its training ``state`` into the prepared objects.

    Raises:
        CheckpointError: the checkpoint was trained with other model, optimizer or scheduler settings.
    """
    saved = ckpt.read_config(path)
    for section, differs in (("model", saved.model != cfg.model),
                             ("optimizer.name", saved.optimizer.name != cfg.optimizer.name),
                             ("scheduler.name", saved.scheduler.name != cfg.scheduler.name)):
        if differs:
            raise CheckpointError(
                f"cannot resume from {path}: it was trained with other {section} settings; resume with its "
                "config.yaml (other settings may change) or start a new run directory"
            )
    raw_file = path / (ckpt.RAW_WEIGHTS if (path / ckpt.RAW_WEIGHTS).exists() else ckpt.WEIGHTS)
    ckpt.load_into(raw_model, ckpt.load_weights(raw_file), path)
    optimizer.load_state_dict(state["optimizer"])
    sched_state = dict(state["scheduler"])
    if "lr_lambdas" in sched_state:  # the schedule's shape comes from this config (e.g. a longer max_steps)
        sched_state["lr_lambdas"] = [None] * len(sched_state["lr_lambdas"])
    scheduler.load_state_dict(sched_state)
    if accelerator.scaler is not None and state.get("scaler"):
        accelerator.scaler.load_state_dict(state["scaler"])
    if ema is not None:
        if state.get("ema_n_averaged") is not None:
            ckpt.load_into(ema.module, ckpt.load_weights(path / ckpt.WEIGHTS), path)
            ema.n_averaged.copy_(state["ema_n_averaged"])
        else:  # the run had no EMA before: start averaging from the resumed weights
            ema.module.load_state_dict(raw_model.state_dict())
            ema.n_averaged.zero_()


def save_run_state(ckpt_dir: Path, step: int, cfg: "PytcConfig", raw_model, ema, optimizer, scheduler, accelerator,
                   early_stop_state: dict, metrics: dict) -> Path:
    """Save checkpoint ``step`` of the run (main process), update ``last``/``best`` and prune; return its folder."""
    from pytc.config import dump_config

    training_state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        "ema_n_averaged": ema.n_averaged.detach().cpu().clone() if ema is not None else None,
        # Every process seeds alike and draws alike (dropout on equal shapes), so rank 0's RNG is everyone's.
        "rng": ckpt.capture_rng_state(),
        "early_stopping": dict(early_stop_state),
    }
    ckpt_cfg = cfg.checkpoint
    path = ckpt.save_checkpoint(
        ckpt_dir, step,
        weights=(ema.module if ema is not None else raw_model).state_dict(),
        raw_weights=raw_model.state_dict() if ema is not None else None,
        config_yaml=dump_config(cfg), training_state=training_state,
        meta={"epoch": step / cfg.training.iters_per_epoch, "metrics": metrics, "monitor": ckpt_cfg.monitor,
              "architecture": cfg.model.architecture, "ema": ema is not None},
    )
    ckpt.update_pointers_and_prune(ckpt_dir, ckpt_cfg.monitor, ckpt_cfg.mode, ckpt_cfg.save_top_k, ckpt_cfg.save_last)
    return path
