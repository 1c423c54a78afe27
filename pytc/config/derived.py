"""Values worked out from a config, each in one place.

A setting that several parts of pytc read through a fallback ("null = data.patch_size", "default:
training.precision") is resolved here, so the training loop, validation and ``pytc infer`` agree:

- :func:`as_zyx`: sizes given per spatial axis of the model, lifted to (Z, Y, X) (2D: Z = 1).
- :func:`window_size`: the sliding window, ``inference.window_size`` or else ``data.patch_size``.
- :func:`inference_precision`: ``inference.precision`` or else ``training.precision``.

Example:
    >>> from pytc.config import PytcConfig, as_zyx, inference_precision, window_size
    >>> cfg = PytcConfig.model_validate({"data": {"patch_size": [64, 64]}})
    >>> window_size(cfg), as_zyx(window_size(cfg), cfg.model.spatial_dims), inference_precision(cfg)
    ((64, 64), (1, 64, 64), '32')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pytc.choices import Precision
from pytc.errors import ConfigError

if TYPE_CHECKING:
    from pytc.config.schema import PytcConfig


def as_zyx(sizes: Sequence[int], spatial_dims: int, key: str = "sizes") -> tuple[int, int, int]:
    """Sizes per spatial axis of a ``spatial_dims``-D model as (Z, Y, X).

    A 3D model takes (Z, Y, X) as given; a 2D model takes (Y, X), which becomes (1, Y, X): a 2D
    model sees one section at a time.

    Args:
        sizes: one size per spatial axis of the model.
        spatial_dims: 2 or 3 (``cfg.model.spatial_dims``).
        key: the config key the sizes come from, to name in the error.

    Returns:
        (Z, Y, X) as ints.

    Raises:
        ConfigError: the number of sizes does not match ``spatial_dims``.

    Example:
        >>> as_zyx([64, 64], 2), as_zyx((16, 64, 64), 3)
        ((1, 64, 64), (16, 64, 64))
    """
    values = [int(s) for s in sizes]
    if len(values) == spatial_dims == 3:
        return values[0], values[1], values[2]
    if len(values) == spatial_dims == 2:
        return 1, values[0], values[1]
    want = "(Z, Y, X)" if spatial_dims == 3 else "(Y, X)"
    raise ConfigError(f"{key} {values} does not fit the {spatial_dims}D model; give {spatial_dims} sizes as {want}")


def window_size(cfg: PytcConfig) -> tuple[int, ...]:
    """The sliding window of inference and validation, per spatial axis as configured (not lifted).

    ``inference.window_size``, or ``data.patch_size`` when that is null: by default the network
    predicts on windows the size it was trained on. Lift it with :func:`as_zyx`.
    """
    return tuple(int(s) for s in (cfg.inference.window_size or cfg.data.patch_size))


def inference_precision(cfg: PytcConfig) -> str:
    """The precision inference runs at, as configured: ``inference.precision``, else ``training.precision``.

    Returns:
        The :class:`~pytc.choices.Precision` value (``"32"``, ``"16-mixed"`` or ``"bf16-mixed"``);
        what a device actually runs is decided by :func:`pytc.runtime.resolve_precision`.
    """
    return Precision(cfg.inference.precision or cfg.training.precision).value
