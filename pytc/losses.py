"""Losses: a name → factory registry, per-target weighted sums and deep supervision.

:func:`build_loss` turns the ``model`` section and the ``data.targets`` list into one criterion::

    loss, terms = criterion(outputs, target, mask=None)

Conventions (every registered loss follows them; ``tests/test_losses.py`` checks them):

* **Outputs are logits.** The *target kind* decides the activation, never the loss: binary-like
  kinds (``binary``, ``contour``, ``affinity``) are sigmoid probabilities (channels are independent,
  so never softmax), ``distance`` channels are regressed raw (no activation; the normalised
  distance lies in [0, 1] and the signed one (tanh) in (-1, 1), so predictions are read as is). Dice,
  Tversky, Focal, BCE and WeightedBCE take logits and apply the sigmoid in their numerically stable
  form; regression losses (MSE, SmoothL1) compare sigmoid(logits) with binary-like targets and raw
  outputs with distance targets. Classification losses on a distance target are a ``ConfigError``.
  ``CrossEntropyLoss`` is the one exception: softmax over the channels of one target, whose
  ``argmax`` is the class, so it needs a target with at least 2 channels.
* **Channels.** Each target owns its slice of the output channels, in ``data.targets`` order (as
  ``pytc.data.targets.build_targets`` stacks them), and its own ``losses``/``loss_weights``
  (default ``model.loss_functions``/``model.loss_weights``); total = Σ targets Σ losses w·loss.
* **Mask** ``(N, 1 or C, *spatial)``, voxels ``<= 0`` are ignored. Voxel-wise losses average the
  per-voxel loss over valid voxels only; Dice and Tversky multiply both the probabilities and the
  target by the mask, so ignored voxels add nothing to the overlap sums. A voxel's output there
  never changes the loss (nor gets a gradient).
* **Precision.** Losses are computed in float32 even under mixed precision (Dice sums overflow fp16).
* **Terms** (for logging): one detached, *unweighted* scalar per (target, loss), named like
  ``binary/DiceLoss``; a repeated target name gets a suffix (``affinity``, ``affinity_2``).
* **Deep supervision** (``outputs`` is a list, full resolution first): nnU-Net style
  ``Σ_i w_i · loss(out_i, target_i)`` with targets and mask resized to each output (nearest for
  {0,1} kinds and the mask, area averaging for distance). Weights are
  ``model.deep_supervision_weights`` or 1, 1/2, 1/4, …, **normalised to sum 1** as in nnU-Net, so
  the loss keeps the scale of a single-output loss (comparable to validation, which runs one
  output). Terms are those of the full-resolution output plus ``scale0``, ``scale1``, … (the
  unweighted total of each scale).

Example:
    >>> import torch
    >>> from pytc.config import ModelConfig, TargetConfig
    >>> criterion = build_loss(ModelConfig(), [TargetConfig(name="binary")])
    >>> loss, terms = criterion(torch.randn(2, 1, 8, 8, 8), torch.ones(2, 1, 8, 8, 8))
    >>> sorted(terms)
    ['binary/BCEWithLogitsLoss', 'binary/DiceLoss']
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

# torch at module level: only the engine (a heavy command) imports this module; MONAI is
# imported inside the factories that use it.
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pytc.choices import BINARY_KINDS, REGRESSION_KINDS
from pytc.errors import ConfigError, DataError

if TYPE_CHECKING:
    from pytc.config import ModelConfig, TargetConfig

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


# --------------------------------------------------------------------------------------------
# Criterion


@dataclass(frozen=True)
class _Term:
    key: str  # e.g. "binary/DiceLoss"
    weight: float
    channels: slice
    fn: LossFn


def _target_losses(
    i: int, target: "TargetConfig", kind: str, model_cfg: "ModelConfig"
) -> list[tuple[str, float]]:
    """``(loss name, weight)`` pairs of one target, with its defaults resolved and checked."""
    where = f"data.targets[{i}]"
    names = target.losses if target.losses is not None else model_cfg.loss_functions
    if target.loss_weights is not None:
        weights = target.loss_weights
    elif target.losses is None:
        weights = model_cfg.loss_weights
    else:
        weights = [1.0] * len(names)  # own losses without own weights: model.loss_weights may not fit
    if len(weights) != len(names):
        raise ConfigError(
            f"{where}.loss_weights has {len(weights)} entries but its losses ({', '.join(names)}) "
            f"are {len(names)}; give one weight per loss"
        )
    source = f"{where}.losses" if target.losses is not None else "model.loss_functions"
    for name in names:
        entry = get_loss(name, where=source)
        if kind not in entry.kinds:
            raise ConfigError(
                f"{where} ({target.name}) cannot use {name} from {source}: it is a classification loss "
                f"and {target.name} targets are real-valued; set {where}.losses to [MSELoss] or [SmoothL1Loss]"
            )
        if target.channels < entry.min_channels:
            raise ConfigError(
                f"{where} ({target.name}) has {target.channels} channel but {name} from {source} "
                f"needs at least {entry.min_channels} (softmax over the target's channels); "
                "use BCEWithLogitsLoss or DiceLoss for a single channel"
            )
    return list(zip(names, weights))


class Criterion(nn.Module):
    """The training loss: per-target weighted sums, deep supervision when given a list of outputs.

    Built by :func:`build_loss`; call it as ``loss, terms = criterion(outputs, target, mask)``.
    """

    def __init__(self, terms: list[_Term], target_names: list[str], kinds: list[str],
                 ds_weights: Optional[list[float]] = None):
        super().__init__()
        self.terms = terms
        self.target_names = target_names  # "name channels" per target, for error messages
        self.kinds = kinds  # one per output channel
        self.channels = len(kinds)
        self.ds_weights = ds_weights

    def extra_repr(self) -> str:
        return ", ".join(f"{t.weight:g}*{t.key}[{t.channels.start}:{t.channels.stop}]" for t in self.terms)

    def forward(
        self, outputs: Union[Tensor, Sequence[Tensor]], target: Tensor, mask: Optional[Tensor] = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of logits ``outputs`` (N, C, *spatial) — or a list of them, finest first — against
        ``target`` (N, C, *spatial); ``mask`` (N, 1 or C, *spatial) marks valid voxels (> 0).

        Returns:
            ``(total, terms)``: the scalar to back-propagate and detached scalars for logging.
        """
        if not target.is_floating_point():
            target = target.float()
        if mask is not None:
            mask = (mask > 0).to(target.dtype)
        if isinstance(outputs, Tensor):
            return self._single(outputs, target, mask)
        weights = deep_supervision_weights(len(outputs), self.ds_weights)
        smooth = [c for c, kind in enumerate(self.kinds) if kind in REGRESSION_KINDS]
        return deep_supervision(self._single, list(outputs), target, mask, weights, smooth)

    def _single(self, logits: Tensor, target: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        self._check(logits, target, mask)
        # At least float32 even under autocast (Dice sums overflow fp16); float64 stays float64.
        dtype = torch.promote_types(logits.dtype, torch.float32)
        logits, target = logits.to(dtype), target.to(dtype)
        mask = None if mask is None else mask.to(dtype)
        total = logits.new_zeros(())
        terms: dict[str, Tensor] = {}
        for term in self.terms:
            sub_mask = None if mask is None else (mask if mask.shape[1] == 1 else mask[:, term.channels])
            value = term.fn(logits[:, term.channels], target[:, term.channels], sub_mask)
            terms[term.key] = value.detach()
            total = total + term.weight * value
        return total, terms

    def _check(self, logits: Tensor, target: Tensor, mask: Optional[Tensor]) -> None:
        need = f"data.targets ({', '.join(self.target_names)}) need {self.channels}"
        if logits.ndim < 3 or logits.shape[1] != self.channels:
            raise ConfigError(
                f"the model outputs {logits.shape[1] if logits.ndim > 1 else 1} channels but {need}; "
                f"set model.out_channels={self.channels}"
            )
        if target.shape[1] != self.channels:
            raise ConfigError(f"the target has {target.shape[1]} channels but {need}; build it with build_targets")
        if target.shape != logits.shape:
            raise DataError(f"target shape {tuple(target.shape)} differs from output shape {tuple(logits.shape)}")
        if mask is not None and (mask.shape[1] not in (1, self.channels) or mask.shape[2:] != logits.shape[2:]):
            raise DataError(
                f"mask shape {tuple(mask.shape)} does not fit output shape {tuple(logits.shape)}; "
                f"give (N, 1 or {self.channels}, *spatial)"
            )


def build_loss(model_cfg: "ModelConfig", targets: list["TargetConfig"]) -> Criterion:
    """Build the training criterion for ``targets`` (``data.targets``) and ``model_cfg``'s losses.

    Args:
        model_cfg: The ``model`` section (default ``loss_functions``/``loss_weights``,
            ``deep_supervision_weights``).
        targets: The ``data.targets`` list; each target's ``losses``/``loss_weights`` override the
            model's for its channels.

    Returns:
        A :class:`Criterion`; ``criterion(outputs, target, mask=None) -> (loss, terms)``.

    Raises:
        ConfigError: unknown loss (with a did-you-mean), a classification loss on a distance target,
            CrossEntropyLoss on a 1-channel target, mismatched or negative weights.

    Example:
        >>> from pytc.config import ModelConfig, TargetConfig
        >>> build_loss(ModelConfig(), [TargetConfig(name="binary"), TargetConfig(name="distance",
        ...            losses=["MSELoss"])]).channels
        2
    """
    if not targets:
        raise ConfigError("data.targets is empty; give at least one target, e.g. [{name: binary}]")
    from pytc.data.targets import channel_kinds

    kinds = channel_kinds(targets)  # the channel layout build_targets stacks
    terms: list[_Term] = []
    names: list[str] = []
    seen: dict[str, int] = {}
    start = 0
    for i, target in enumerate(targets):
        seen[target.name] = seen.get(target.name, 0) + 1
        label = target.name if seen[target.name] == 1 else f"{target.name}_{seen[target.name]}"
        channels = slice(start, start + target.channels)
        kind = kinds[start]
        for name, weight in _target_losses(i, target, kind, model_cfg):
            terms.append(_Term(f"{label}/{name}", float(weight), channels, get_loss(name).factory(kind)))
        names.append(f"{label} {target.channels}")
        start += target.channels
    ds = model_cfg.deep_supervision_weights
    if ds is not None and (any(w < 0 for w in ds) or sum(ds) <= 0):
        raise ConfigError(f"model.deep_supervision_weights {ds} must be >= 0 with a positive sum")
    return Criterion(terms, names, kinds, ds)


# --------------------------------------------------------------------------------------------
# Deep supervision (nnU-Net's deep_supervision.py, as a function)


def deep_supervision_weights(n: int, configured: Optional[Sequence[float]] = None) -> list[float]:
    """Per-output weights, finest first: ``configured`` or 1, 1/2, 1/4, …, normalised to sum 1.

    Raises:
        ConfigError: ``configured`` does not have one weight per output.
    """
    if configured is not None and len(configured) != n:
        raise ConfigError(
            f"model.deep_supervision_weights has {len(configured)} entries but the model returns "
            f"{n} outputs; give {n} weights (full resolution first) or null for 1, 1/2, 1/4, ..."
        )
    weights = list(configured) if configured is not None else [0.5**i for i in range(n)]
    return [w / sum(weights) for w in weights]


def _resize(x: Tensor, size: Sequence[int], smooth_channels: Sequence[int] = ()) -> Tensor:
    """Nearest-neighbour resize (keeps {0, 1} values); area average for ``smooth_channels``."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    out = F.interpolate(x, size=tuple(size), mode="nearest")
    if smooth_channels:
        out[:, smooth_channels] = F.interpolate(x[:, smooth_channels], size=tuple(size), mode="area")
    return out


def deep_supervision(
    loss: Callable[[Tensor, Tensor, Optional[Tensor]], tuple[Tensor, dict[str, Tensor]]],
    outputs: list[Tensor],
    target: Tensor,
    mask: Optional[Tensor],
    weights: Sequence[float],
    smooth_channels: Sequence[int] = (),
) -> tuple[Tensor, dict[str, Tensor]]:
    """``Σ_i w_i · loss(outputs[i], target and mask resized to outputs[i])``.

    Args:
        loss: Single-output criterion returning ``(value, terms)``.
        outputs: Logits, full resolution first.
        target: Full-resolution target.
        mask: Full-resolution valid-voxel mask, or None.
        weights: One weight per output (zero-weight outputs are skipped).
        smooth_channels: Target channels resized by area averaging (distance) instead of nearest.

    Returns:
        The weighted total and the terms of the first output plus ``scale<i>`` per output.
    """
    total = outputs[0].new_zeros((), dtype=torch.promote_types(outputs[0].dtype, torch.float32))
    terms: dict[str, Tensor] = {}
    for i, (weight, out) in enumerate(zip(weights, outputs, strict=True)):
        if weight == 0:
            continue
        size = out.shape[2:]
        value, scale_terms = loss(out, _resize(target, size, smooth_channels),
                                  None if mask is None else _resize(mask, size))
        if i == 0:
            terms.update(scale_terms)
        terms[f"scale{i}"] = value.detach()
        total = total + weight * value
    return total, terms
