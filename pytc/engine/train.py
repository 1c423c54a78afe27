"""The training loop: one readable :func:`fit` on HuggingFace Accelerate.

Accelerate owns devices, DDP, mixed precision and gradient accumulation; this file owns the order
of things: build → (resume) → loop {step, log, validate, early-stop, checkpoint} → summary. The run
folder (its lock, resolved config, metrics log, summary) is :mod:`pytc.engine.run_dir`'s, saving and
restoring the run's state :mod:`pytc.engine.run_state`'s, the file format :mod:`pytc.engine.checkpoint`'s.

Multi-GPU (or multi-process CPU) runs go through Accelerate's launcher; every process runs the
same ``fit`` and the data sampler gives each its own patches::

    accelerate launch --num_processes 4 $(which pytc) train configs/lucchi.yaml
    accelerate launch --cpu --num_processes 2 $(which pytc) train configs/lucchi.yaml

(The installed ``pytc`` script, not ``-m pytc.cli``: run from a folder holding a clone named
``pytc/``, ``-m`` would import that folder instead of the installed package.)

Validation (:func:`pytc.engine.validation.validate`) is sharded over the processes; see that module.

Example:
    >>> from pytc.config import load_config
    >>> from pytc.engine import fit
    >>> summary = fit(load_config("configs/lucchi.yaml"), run_dir="runs/lucchi")  # doctest: +SKIP
    >>> summary["best_checkpoint"]  # doctest: +SKIP
    'runs/lucchi/checkpoints/step-004000'
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Union

from pytc.engine import checkpoint as ckpt
from pytc.engine.run_dir import (
    METRICS, config_destination, last_validation, log_metrics, prepare_run_dir, run_dir_lock, summary,
)
from pytc.engine.run_state import restore_run_state, resume_checkpoint, save_run_state
from pytc.engine.validation import validate
from pytc.errors import OutputExistsError, PytcError
from pytc.io import check_writable
from pytc.progress import TrainBar

if TYPE_CHECKING:
    from accelerate import Accelerator

    from pytc.config import PytcConfig


_clock = time.monotonic  # training.max_minutes's clock (tests move it)


def fit(cfg: "PytcConfig", run_dir: Optional[Union[str, os.PathLike]] = None,
        resume: Optional[Union[str, os.PathLike]] = None, fast_dev_run: bool = False,
        inputs: Iterable[Union[str, os.PathLike]] = ()) -> dict:
    """Train a model as ``cfg`` says; write the run directory; return a summary.

    Args:
        cfg: The resolved config.
        run_dir: Where the run writes (default :func:`pytc.config.default_run_dir`: ``cfg.system.output_dir``,
            else ``runs/<name of the config file, inputs[0]>``, else ``runs/pytc``): ``config.yaml``,
            ``metrics.jsonl``, ``previews/``, ``checkpoints/`` and ``tensorboard/``.
        resume: ``"auto"`` (the newest complete checkpoint of ``run_dir``, or a fresh start if there
            is none) or a checkpoint path. Resuming on CPU reproduces an uninterrupted run bit for bit.
        fast_dev_run: Smoke test: one optimizer step, one validation volume, one checkpoint.
        inputs: Files the run reads and must never overwrite (the config file first). When ``RUN/config.yaml``
            is one of them (``pytc train RUN/config.yaml --run-dir RUN``), the resolved config is
            written to ``RUN/config.resolved.yaml`` instead.

    The run holds an exclusive lock on ``RUN/.pytc-lock`` (main process only) from before it reads the
    folder until it returns: a second ``fit`` into the same folder is refused, naming the holder.

    Returns:
        ``{"run_dir", "step", "steps_this_run", "best_checkpoint", "last_checkpoint", "metrics",
        "stopped_early", "out_of_time", "already_finished", "is_main_process", "model"}``; ``metrics`` are
        the last validation's (read back from ``metrics.jsonl`` when a resumed run had already finished),
        ``out_of_time``: ``training.max_minutes`` stopped the run (a checkpoint was saved, validated first),
        ``already_finished``: ``resume`` pointed at a run that had reached its step limit (nothing trained),
        ``model`` is this process's trained model (unwrapped, raw weights).

    Raises:
        PytcError: configuration mistakes (out_channels vs targets), a run
            directory that already has checkpoints (pass ``resume``) or that another process is
            training into, an incompatible or damaged checkpoint, or a loss that became NaN/inf.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from pytc.config import default_run_dir
    from pytc.data.dataset import build_train_loader, load_val_volumes
    from pytc.data.targets import check_out_channels
    from pytc.engine.optim import build_ema, build_optimizer, build_scheduler, is_plateau
    from pytc.losses import build_loss
    from pytc.models import build_model
    from pytc.runtime import accelerate_mixed_precision, resolve_precision, setup_threads, use_cpu

    # ---- check everything a user can get wrong before spending time on it
    check_out_channels(cfg.model.out_channels, cfg.data.targets, cfg.model.spatial_dims)
    training = cfg.training
    inputs = [Path(os.fspath(f)) for f in inputs]
    run_dir = Path(run_dir or default_run_dir(cfg, inputs[0] if inputs else None))
    ckpt_dir = run_dir / ckpt.CHECKPOINT_DIR
    check_writable(run_dir, folder=True)  # a file in the way, a read-only folder: say so before any work
    config_file = config_destination(run_dir, inputs)
    total_steps = 1 if fast_dev_run else (training.max_steps or training.max_epochs * training.iters_per_epoch)
    deadline = None if training.max_minutes is None or fast_dev_run else _clock() + training.max_minutes * 60
    started = time.monotonic()  # for the progress bar's share of the time limit
    log_every = 1 if fast_dev_run else cfg.logging.log_every_n_steps

    # ---- Accelerate: device, DDP, AMP, accumulation. The scheduler counts optimizer steps, so it is
    # stepped by us once per optimizer step (Accelerate would step it num_processes times).
    cpu = use_cpu(cfg.system.num_gpus)
    precision = resolve_precision(training.precision, "cpu" if cpu else "cuda", training=True)
    tensorboard = cfg.logging.tensorboard and _tensorboard_available()
    stack = contextlib.ExitStack()  # the run folder's lock, held until fit returns
    accelerator = Accelerator(
        cpu=cpu, mixed_precision=accelerate_mixed_precision(precision),
        gradient_accumulation_steps=training.accumulate_grad_batches, step_scheduler_with_optimizer=False,
        log_with="tensorboard" if tensorboard else None, project_dir=str(run_dir),
    )
    try:
        main = accelerator.is_main_process
        # One run per folder: a second process (a scheduler's requeue, a second terminal) is refused
        # before it reads or touches anything there.
        stack.enter_context(run_dir_lock(run_dir, accelerator))
        resume_from = resume_checkpoint(resume, run_dir)
        if resume_from is None and ckpt.list_checkpoints(ckpt_dir):
            raise OutputExistsError(
                f"run directory {run_dir} already has checkpoints; pass --resume auto to continue it, or "
                "choose another --run-dir / system.output_dir"
            )
        # A damaged checkpoint is refused now, naming the one before, not at the next save.
        state = ckpt.open_for_resume(resume_from, ckpt_dir) if resume_from is not None else None
        # Processes share the machine's cores: more threads than cores makes every process slower.
        setup_threads(max(1, cfg.system.num_cpus // accelerator.num_processes))
        if not cpu:
            torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick the fastest kernels
            if (cfg.system.num_gpus or 0) > accelerator.num_processes:
                n = accelerator.num_processes
                accelerator.print(f"system.num_gpus is {cfg.system.num_gpus} but this is {n} "
                                  f"process{'es' if n != 1 else ''}, one GPU each; use accelerate launch --num_processes "
                                  f"{cfg.system.num_gpus} $(which pytc) train ...")
        if cfg.logging.tensorboard and not tensorboard and "tensorboard" in cfg.logging.model_fields_set:
            accelerator.print("logging.tensorboard is on but tensorboard is not installed (pip install tensorboard); "
                              "skipping it")
        set_seed(cfg.system.seed)  # the same seed on every process: identical initial weights

        model = build_model(cfg.model)
        if cfg.model.init_from and resume_from is None:  # fine-tuning: weights only, a fresh optimizer/schedule
            init_checkpoint = ckpt.resolve_checkpoint(cfg.model.init_from)
            ckpt.load_into(model, ckpt.load_weights(init_checkpoint / ckpt.WEIGHTS), init_checkpoint)
            accelerator.print(f"initialised weights from {init_checkpoint}")
        criterion = build_loss(cfg.model, cfg.data.targets)
        optimizer = build_optimizer(model.parameters(), cfg.optimizer)
        scheduler = build_scheduler(optimizer, cfg.scheduler, training.iters_per_epoch, total_steps,
                                    monitor_mode=cfg.checkpoint.mode)
        ema = build_ema(model, training.ema_decay).to(accelerator.device) if training.ema_decay else None
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        raw_model = accelerator.unwrap_model(model)

        # ---- resume: weights, optimizer, scheduler, EMA, scaler, counters (RNG last, just before the loop)
        step, early_stop_state = 0, {"best": None, "bad_validations": 0}
        if resume_from is not None:
            restore_run_state(resume_from, state, cfg, raw_model, optimizer, scheduler, ema, accelerator)
            step, early_stop_state = int(state["step"]), dict(state["early_stopping"])
            if step >= total_steps:  # nothing to train: say so instead of an empty progress bar
                # the run that finished: the one the checkpoint belongs to (run_dir may be a new folder)
                done = resume_from.parent.parent if resume_from.parent.name == ckpt.CHECKPOINT_DIR else run_dir
                accelerator.print(f"{done} already finished at step {step} ({_step_limit(training)}); to train on, "
                                  f"raise training.max_steps (e.g. training.max_steps={2 * step}) and resume again")
                return summary(done, step, step, last_validation(done / METRICS), False, False, main, raw_model,
                               already_finished=True)
            accelerator.print(f"resuming from {resume_from} (step {step})")

        # Data before the run directory: a bad volume (shapes, labels, NaN) leaves nothing behind.
        val_volumes = load_val_volumes(cfg)[: 1 if fast_dev_run else None]
        loader = build_train_loader(cfg, start_step=step, process_index=accelerator.process_index,
                                    num_processes=accelerator.num_processes)
        if main:  # the resolved config, a log without a killed run's tail, newer checkpoints set aside
            prepare_run_dir(run_dir, config_file, cfg, step, accelerator.print)
        if tensorboard:
            accelerator.init_trackers("tensorboard")
        # Workers fork here. Freezing the heap first keeps the garbage collector from touching (and so
        # copying) the objects the workers share with this process.
        gc.collect()
        gc.freeze()
        with torch.random.fork_rng(devices=[]):  # creating the iterator draws a seed; keep the model's RNG stream
            batches = iter(loader)
        if state is not None:
            ckpt.restore_rng_state(state["rng"])

        # ---- the loop: one iteration = one optimizer step over accumulate_grad_batches micro-batches
        start_step, stopped_early, val_metrics = step, False, {}
        samples_per_step = cfg.data.batch_size * training.accumulate_grad_batches * accelerator.num_processes
        left = None if deadline is None else max(training.max_minutes * 60 - (time.monotonic() - started), 1e-3)
        progress = TrainBar(main, total_steps, step, left, training.max_minutes)
        tick, tick_step = time.perf_counter(), step
        with progress:
            while step < total_steps:
                loss, terms = train_step(accelerator, model, criterion, optimizer, scheduler,
                                         itertools.islice(batches, training.accumulate_grad_batches),
                                         training.gradient_clip_val, step_scheduler=not is_plateau(scheduler))
                step += 1
                if ema is not None:
                    ema.update_parameters(raw_model)
                # One reduction gives every process the same loss and the same verdict on the time limit.
                past_deadline = float(deadline is not None and _clock() >= deadline)
                loss_value, past_deadline = accelerator.reduce(
                    torch.stack([loss.detach().float(), loss.new_tensor(past_deadline, dtype=torch.float32)]), "mean"
                ).tolist()
                out_of_time = past_deadline > 0
                if not math.isfinite(loss_value):
                    raise PytcError(_nan_message(loss_value, step, cfg, optimizer.param_groups[0]["lr"], precision,
                                                 ckpt.find_resume_checkpoint(run_dir)))
                lr = optimizer.param_groups[0]["lr"]
                progress.update(step, loss_value, lr)
                if step % log_every == 0 or step == total_steps:
                    now = time.perf_counter()
                    rate = (step - tick_step) * samples_per_step / max(now - tick, 1e-9)
                    tick, tick_step = now, step
                    names = sorted(terms)  # loss terms averaged over processes, like the loss
                    values = accelerator.reduce(torch.stack([terms[k] for k in names]), "mean").tolist() if names else []
                    log_metrics(accelerator, run_dir, step, {
                        "epoch": step / training.iters_per_epoch, "loss": loss_value,
                        **{f"loss/{k}": v for k, v in zip(names, values)}, "lr": lr, "samples_per_s": rate,
                    })

                finished = step == total_steps or out_of_time
                validated = False
                if val_volumes and (step % training.val_check_interval == 0 or finished):
                    eval_model = ema.module if ema is not None else raw_model
                    preview = run_dir / "previews" / f"{ckpt.checkpoint_name(step)}.png" if main else None
                    val_metrics = validate(accelerator, eval_model, criterion, val_volumes, cfg, preview)
                    validated = True
                    log_metrics(accelerator, run_dir, step, val_metrics)
                    accelerator.print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in val_metrics.items()))
                    if is_plateau(scheduler):
                        scheduler.step(val_metrics[cfg.checkpoint.monitor])
                    if cfg.early_stopping.enabled:
                        stopped_early = _early_stop(early_stop_state, val_metrics, cfg.early_stopping)
                        if stopped_early:
                            accelerator.print(
                                f"early stopping at step {step}: {cfg.early_stopping.monitor} has not improved "
                                f"for {cfg.early_stopping.patience} validations "
                                f"(best {early_stop_state['best']:.4f})"
                            )

                # Save every n steps, at the end, and after a validation that enters the top k. Only
                # the main process reads the folder and writes; the others wait on a condition they share.
                ckpt_cfg = cfg.checkpoint
                scheduled = step % ckpt_cfg.every_n_steps == 0 or finished or stopped_early
                if main and (scheduled or (validated and ckpt.would_enter_top_k(
                        ckpt_dir, ckpt_cfg.monitor, ckpt_cfg.mode, ckpt_cfg.save_top_k,
                        val_metrics[ckpt_cfg.monitor]))):
                    save_run_state(ckpt_dir, step, cfg, raw_model, ema, optimizer, scheduler, accelerator,
                                   early_stop_state, {"loss": loss_value, **(val_metrics if validated else {})})
                if scheduled or validated:
                    accelerator.wait_for_everyone()
                if stopped_early:
                    break
                if out_of_time:
                    if step < total_steps:  # the time limit, not the step limit, ended the run
                        accelerator.print(f"stopped at step {step}: training.max_minutes={training.max_minutes:g} "
                                          "reached (`--resume auto` continues the run)")
                    break
        accelerator.end_training()

        return summary(run_dir, step, start_step, val_metrics, stopped_early, step < total_steps and not stopped_early,
                       main, raw_model)
    finally:
        gc.unfreeze()  # let a later fit (or the caller) collect what this run left behind
        stack.close()
        _release(accelerator)


def train_step(accelerator: "Accelerator", model, criterion, optimizer, scheduler, batches: Iterable[dict],
               clip_val: Optional[float] = None, step_scheduler: bool = True):
    """One optimizer step over the micro-batches in ``batches`` (``accumulate_grad_batches`` of them).

    This is the body of :func:`fit`'s loop, factored out so ``bench/train_step.py`` times the real code.

    Returns:
        ``(loss, terms)``: the detached mean loss over the micro-batches on this process and the
        mean of each logged loss term.
    """
    total, sums, n = None, {}, 0
    for batch in batches:
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
        with accelerator.accumulate(model):  # no DDP all-reduce until the last micro-batch
            outputs = model(batch["image"])
            loss, terms = criterion(outputs, batch["target"], batch.get("mask"))
            accelerator.backward(loss)  # divides by accumulate_grad_batches, scales under fp16
            if accelerator.sync_gradients and clip_val is not None:
                accelerator.clip_grad_norm_(model.parameters(), clip_val)
            optimizer.step()  # a no-op until the accumulation boundary
            if accelerator.sync_gradients and step_scheduler and not optimizer.step_was_skipped:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        total = loss.detach() if total is None else total + loss.detach()
        for k, v in terms.items():
            sums[k] = v if k not in sums else sums[k] + v
        n += 1
    if n == 0:
        raise RuntimeError("the training loader ran dry; it is supposed to be endless")
    return total / n, {k: v / n for k, v in sums.items()}


# --------------------------------------------------------------------------------------------
# Helpers (private: fit reads top to bottom, these keep it short)


def _step_limit(training) -> str:
    """How the config sets the number of steps, e.g. ``training.max_steps=20``."""
    if training.max_steps:
        return f"training.max_steps={training.max_steps}"
    return f"training.max_epochs={training.max_epochs} x training.iters_per_epoch={training.iters_per_epoch}"


def _nan_message(value: float, step: int, cfg, lr: float, precision: str, last: Optional[Path]) -> str:
    """The error for a non-finite loss, with only the remedies this run has not tried yet."""
    remedies = [f"lower optimizer.lr (the optimizer's lr is now {lr:.2e})"]
    if cfg.training.gradient_clip_val is None:
        remedies.append("set training.gradient_clip_val (e.g. 1.0)")
    if precision != "32":
        remedies.append("use training.precision=32")
    return (f"loss became {value} at step {step}; " + ", ".join(remedies[:-1])
            + (" or " if len(remedies) > 1 else "") + remedies[-1]
            + f" — last good checkpoint: {last if last else 'none saved yet'}")


def _early_stop(state: dict, metrics: dict, early_stopping) -> bool:
    """Update the early-stopping counters in ``state``; return whether to stop (``early_stopping``: its config)."""
    value = metrics[early_stopping.monitor]
    best, min_delta = state["best"], early_stopping.min_delta
    improved = best is None or (value < best - min_delta if early_stopping.mode == "min" else value > best + min_delta)
    if improved:
        state["best"], state["bad_validations"] = value, 0
    else:
        state["bad_validations"] += 1
    return state["bad_validations"] >= early_stopping.patience


def _tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _release(accelerator) -> None:
    """Let the next ``fit`` in this process choose its own precision/device (Accelerate keeps a singleton)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
