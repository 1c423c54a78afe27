"""The loss registry (a name → factory dict, :func:`register_loss`, :func:`list_losses`,
:func:`get_loss`) and the registered per-voxel losses. MONAI/torch do the maths; the wrappers only
add the sigmoid and the mask. The conventions every loss follows are in :mod:`pytc.losses`."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Callable, Optional

# torch at module level: only the engine (a heavy command) imports this package; MONAI is
# imported inside the factories that use it.
import torch
import torch.nn.functional as F
from torch import Tensor

from pytc.choices import BINARY_KINDS, REGRESSION_KINDS
from pytc.errors import ConfigError

ALL_KINDS = BINARY_KINDS | REGRESSION_KINDS

# (logits, target, mask or None) -> scalar; logits/target/mask share shape (mask broadcastable).
LossFn = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]


@dataclass(frozen=True)
class LossEntry:
    """A registered loss.

    Attributes:
        name: Registry name, as written in ``loss_functions`` / ``losses``.
        factory: ``factory(kind) -> LossFn`` for a target of that kind.
        kinds: Target kinds the loss is meaningful for.
        min_channels: Fewest channels a target needs (2 for softmax cross entropy).
    """

    name: str
    factory: Callable[[str], LossFn]
    kinds: frozenset[str]
    min_channels: int = 1


_REGISTRY: dict[str, LossEntry] = {}


def register_loss(
    name: str, *, kinds: frozenset[str] = BINARY_KINDS, min_channels: int = 1
) -> Callable[[Callable[[str], LossFn]], Callable[[str], LossFn]]:
    """Decorator registering ``factory(kind) -> LossFn`` under ``name``."""

    def decorator(factory: Callable[[str], LossFn]) -> Callable[[str], LossFn]:
        _REGISTRY[name] = LossEntry(name, factory, frozenset(kinds), min_channels)
        return factory

    return decorator


def list_losses(pattern: Optional[str] = None) -> list[str]:
    """Registered loss names, sorted; ``pattern`` is an optional shell-style filter (``"*Dice*"``)."""
    names = sorted(_REGISTRY)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def get_loss(name: str, where: str = "model.loss_functions") -> LossEntry:
    """The registry entry for ``name``.

    Raises:
        ConfigError: unknown name; the message names ``where``, suggests the closest name and lists all.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    # A name that contains what was typed first (torch's "BCELoss" -> "BCEWithLogitsLoss"), then spelling.
    stem = name.lower().removesuffix("loss")
    contains = sorted((n for n in _REGISTRY if len(stem) >= 3 and stem in n.lower()),
                      key=lambda n: (not n.lower().startswith(stem), len(n)))
    by_lower = {n.lower(): n for n in _REGISTRY}
    close = contains[:1] or [by_lower[c] for c in difflib.get_close_matches(name.lower(), list(by_lower), n=1)]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown loss {name!r} in {where}{hint}; available: {', '.join(list_losses())}")


# --------------------------------------------------------------------------------------------
# Registered losses. MONAI/torch do the maths; the wrappers only add the sigmoid and the mask.


def _masked_mean(per_voxel: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean of a per-voxel loss over the valid voxels (0 when none is valid)."""
    if mask is None:
        return per_voxel.mean()
    mask = mask.expand_as(per_voxel)
    return (per_voxel * mask).sum() / mask.sum().clamp_min(1.0)


def _masked_probs(logits: Tensor, target: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    probs = torch.sigmoid(logits)
    return (probs, target) if mask is None else (probs * mask, target * mask)


def _activate(kind: str, logits: Tensor) -> Tensor:
    return torch.sigmoid(logits) if kind in BINARY_KINDS else logits


@register_loss("DiceLoss")
def _dice(kind: str) -> LossFn:
    from monai.losses import DiceLoss

    # batch=True: one Dice over the whole batch (nnU-Net's batch Dice), stable for EM patches that
    # hold little or no foreground. Sigmoid is applied here, not by MONAI, so the mask can zero it.
    dice = DiceLoss(batch=True)
    return lambda logits, target, mask: dice(*_masked_probs(logits, target, mask))


@register_loss("TverskyLoss")
def _tversky(kind: str) -> LossFn:
    from monai.losses import TverskyLoss

    # MONAI's alpha=beta=0.5 is exactly Dice; 0.3/0.7 (Salehi et al. 2017) penalises missed
    # foreground more than false alarms, the reason to pick Tversky for thin EM structures.
    tversky = TverskyLoss(alpha=0.3, beta=0.7, batch=True)
    return lambda logits, target, mask: tversky(*_masked_probs(logits, target, mask))


@register_loss("FocalLoss")
def _focal(kind: str) -> LossFn:
    from monai.losses import FocalLoss

    focal = FocalLoss(use_softmax=False, gamma=2.0, reduction="none")  # sigmoid focal, per voxel
    return lambda logits, target, mask: _masked_mean(focal(logits, target), mask)


@register_loss("BCEWithLogitsLoss")
def _bce(kind: str) -> LossFn:
    return lambda logits, target, mask: _masked_mean(
        F.binary_cross_entropy_with_logits(logits, target, reduction="none"), mask
    )


@register_loss("DiceCELoss")
def _dice_ce(kind: str) -> LossFn:
    # MONAI's DiceCELoss switches to *softmax* cross entropy as soon as there is more than one
    # channel (wrong for independent affinity channels) and takes no voxel mask, so the same sum
    # (Dice + BCE, MONAI's lambda_dice = lambda_ce = 1) is composed from the masked parts.
    dice, bce = _dice(kind), _bce(kind)
    return lambda logits, target, mask: dice(logits, target, mask) + bce(logits, target, mask)


@register_loss("CrossEntropyLoss", min_channels=2)
def _cross_entropy(kind: str) -> LossFn:
    def ce(logits: Tensor, target: Tensor, mask: Optional[Tensor]) -> Tensor:
        per_voxel = F.cross_entropy(logits, target.argmax(dim=1), reduction="none")  # (N, *spatial)
        # A voxel counts when all of the target's channels are valid there.
        return _masked_mean(per_voxel, None if mask is None else mask.amin(dim=1))

    return ce


@register_loss("WeightedBCELoss")
def _weighted_bce(kind: str, max_ratio: float = 20.0) -> LossFn:
    # torch's pos_weight is a constant fixed before training and MONAI has no class-balanced BCE,
    # but the foreground share of EM patches swings from 0 to ~1 between batches. So each batch
    # weighs positives by its own background/foreground ratio (per channel, valid voxels only),
    # clipped to [1/max_ratio, max_ratio] so a nearly empty patch cannot blow up the gradient
    # (upstream PyTC clips the foreground share to [0.05, 0.99] for the same reason).
    def weighted_bce(logits: Tensor, target: Tensor, mask: Optional[Tensor]) -> Tensor:
        valid = torch.ones_like(target) if mask is None else mask.expand_as(target)
        dims = [d for d in range(target.ndim) if d != 1]
        with torch.no_grad():
            pos = (target * valid).sum(dims)
            neg = ((1 - target) * valid).sum(dims)
            ratio = (neg / pos.clamp_min(1.0)).clamp(1.0 / max_ratio, max_ratio)
            ratio = torch.where((pos > 0) & (neg > 0), ratio, torch.ones_like(ratio))  # one class: plain BCE
        pos_weight = ratio.view(-1, *([1] * (target.ndim - 2)))
        per_voxel = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
        return _masked_mean(per_voxel, mask)

    return weighted_bce


@register_loss("MSELoss", kinds=ALL_KINDS)
def _mse(kind: str) -> LossFn:
    return lambda logits, target, mask: _masked_mean(
        F.mse_loss(_activate(kind, logits), target, reduction="none"), mask
    )


@register_loss("SmoothL1Loss", kinds=ALL_KINDS)
def _smooth_l1(kind: str) -> LossFn:
    return lambda logits, target, mask: _masked_mean(
        F.smooth_l1_loss(_activate(kind, logits), target, reduction="none"), mask
    )
