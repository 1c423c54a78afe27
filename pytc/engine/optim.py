"""Optimizer, per-step learning-rate schedule and weight EMA.

Schedules are stepped once per optimizer step; an "epoch" is ``training.iters_per_epoch`` steps.
Cosine, constant and StepLR are one :class:`~torch.optim.lr_scheduler.LambdaLR` with a pure factor
function (linear warm-up, then the schedule), so their state is a few numbers and resuming is exact.
``ReduceLROnPlateau`` is stepped with the monitored validation metric instead (see ``fit``).

Example:
    >>> import torch
    >>> from pytc.config import OptimizerConfig, SchedulerConfig
    >>> net = torch.nn.Linear(2, 1)
    >>> opt = build_optimizer(net.parameters(), OptimizerConfig(lr=1e-3))
    >>> sched = build_scheduler(opt, SchedulerConfig(warmup_epochs=1), iters_per_epoch=10, total_steps=100)
    >>> round(opt.param_groups[0]["lr"], 6)  # first step of a 10-step warm-up
    0.0001
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import torch

    from pytc.config import OptimizerConfig, SchedulerConfig


def build_optimizer(params: Iterable["torch.nn.Parameter"], cfg: "OptimizerConfig") -> "torch.optim.Optimizer":
    """AdamW, Adam or SGD from the ``optimizer`` section."""
    import torch

    if cfg.name == "AdamW":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "Adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "SGD":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise AssertionError(f"optimizer {cfg.name} is in the config schema but not built here")


def lr_factor(step: int, *, name: str, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float,
              step_size: int, gamma: float) -> float:
    """Multiplier of ``optimizer.lr`` after ``step`` optimizer steps (a pure function, so resumable).

    Warm-up ramps linearly over ``warmup_steps`` (first step at ``1/warmup_steps``); then cosine decays
    to ``min_lr`` at ``total_steps``, StepLR multiplies by ``gamma`` every ``step_size`` steps after the
    warm-up, and constant stays at 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "CosineAnnealingLR":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        floor = min(min_lr / base_lr, 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if name == "StepLR":
        return gamma ** ((step - warmup_steps) // step_size)
    return 1.0  # constant


def build_scheduler(optimizer: "torch.optim.Optimizer", cfg: "SchedulerConfig", iters_per_epoch: int,
                    total_steps: int, monitor_mode: str = "min"):
    """The LR scheduler of the ``scheduler`` section, in optimizer steps.

    Args:
        optimizer: The optimizer whose ``lr`` is the peak learning rate.
        cfg: The ``scheduler`` section.
        iters_per_epoch: Steps per epoch (``warmup_epochs`` and StepLR's ``step_size`` are epochs).
        total_steps: Length of the run in optimizer steps (cosine reaches ``min_lr`` there).
        monitor_mode: ``"min"`` or ``"max"``: whether the metric ReduceLROnPlateau watches
            (``checkpoint.monitor``) improves downwards or upwards.

    Returns:
        A ``LambdaLR`` (call ``.step()`` after each optimizer step) or, for ``ReduceLROnPlateau``, a
        ``ReduceLROnPlateau`` (call ``.step(metric)`` after each validation; no warm-up).
    """
    import torch

    if cfg.name == "ReduceLROnPlateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=monitor_mode, factor=cfg.gamma, patience=cfg.patience, min_lr=cfg.min_lr
        )
    base_lr = optimizer.param_groups[0]["lr"]
    factor = _Factor(
        name=cfg.name, base_lr=base_lr, warmup_steps=round(cfg.warmup_epochs * iters_per_epoch),
        total_steps=total_steps, min_lr=cfg.min_lr, step_size=cfg.step_size * iters_per_epoch, gamma=cfg.gamma,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _Factor:
    """``lr_factor`` with its settings bound. A class (not a lambda) so ``LambdaLR.state_dict`` stores
    the settings as plain numbers (a resume replaces them with the current config's: a longer
    ``max_steps`` stretches the schedule)."""

    def __init__(self, **settings):
        self.settings = settings

    def __call__(self, step: int) -> float:
        return lr_factor(step, **self.settings)


def is_plateau(scheduler) -> bool:
    """Whether ``scheduler`` is stepped with a validation metric rather than every optimizer step."""
    import torch

    inner = getattr(scheduler, "scheduler", scheduler)  # Accelerate wraps schedulers
    return isinstance(inner, torch.optim.lr_scheduler.ReduceLROnPlateau)


def build_ema(model: "torch.nn.Module", decay: float) -> "torch.optim.swa_utils.AveragedModel":
    """An exponential moving average of ``model``'s weights (buffers copied), for validation/checkpoints.

    ``ema.update_parameters(model)`` after each optimizer step; ``ema.module`` is a model with the
    averaged weights. The first update copies the weights, later ones average with ``decay``.
    """
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    return ema.to(next(model.parameters(), torch.empty(0)).device)
