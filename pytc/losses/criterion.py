"""The training criterion: per-target weighted sums of registered losses (:class:`Criterion`, built by
:func:`build_loss` from the config) and nnU-Net style deep supervision (:func:`deep_supervision`,
:func:`deep_supervision_weights`). The conventions are in :mod:`pytc.losses`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pytc.choices import REGRESSION_KINDS
from pytc.errors import ConfigError, DataError
from pytc.losses.registry import LossFn, get_loss

if TYPE_CHECKING:
    from pytc.config import ModelConfig, TargetConfig


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
