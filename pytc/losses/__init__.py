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

Modules: :mod:`pytc.losses.registry` (the registry and the registered per-voxel losses) and
:mod:`pytc.losses.criterion` (:class:`Criterion`, :func:`build_loss`, deep supervision).

Example:
    >>> import torch
    >>> from pytc.config import ModelConfig, TargetConfig
    >>> criterion = build_loss(ModelConfig(), [TargetConfig(name="binary")])
    >>> loss, terms = criterion(torch.randn(2, 1, 8, 8, 8), torch.ones(2, 1, 8, 8, 8))
    >>> sorted(terms)
    ['binary/BCEWithLogitsLoss', 'binary/DiceLoss']
"""

from pytc.losses.criterion import Criterion, build_loss, deep_supervision, deep_supervision_weights
from pytc.losses.registry import ALL_KINDS, LossEntry, LossFn, get_loss, list_losses, register_loss

__all__ = [
    "ALL_KINDS",
    "Criterion",
    "LossEntry",
    "LossFn",
    "build_loss",
    "deep_supervision",
    "deep_supervision_weights",
    "get_loss",
    "list_losses",
    "register_loss",
]
