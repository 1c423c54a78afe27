"""The architecture registry: a name → builder dict, in the style of timm's ``_registry.py``.

A builder is a function ``builder(model_cfg: ModelConfig) -> torch.nn.Module`` registered with
:func:`register_architecture`. :func:`build_model` looks the name up, checks the settings that apply
to every architecture (deep supervision, geometry, options the architecture ignores) and calls it.

This module (and ``pytc.models``) imports neither torch nor monai: builders import them inside their
bodies, so ``pytc --help`` and ``pytc list-archs`` start instantly.

Output contract (every registered architecture honours it, ``tests/test_models.py`` checks it):
    * ``model.eval()``: ``model(x)`` returns one tensor ``(N, out_channels, *spatial)`` with the
      spatial size of ``x``. Outputs are logits (no final activation); the loss/decoder applies one.
    * ``model.train()`` with ``deep_supervision=False``: the same single tensor.
    * ``model.train()`` with ``deep_supervision=True``: a ``list`` of tensors, full resolution first,
      then each coarser scale (MedNeXt: 1, 1/2, 1/4, 1/8, 1/16; DynUNet: its per-axis strides, e.g.
      z kept while y/x are halved); the loss resizes the target to each.
    * ``deep_supervision=True`` on an architecture without multi-scale heads raises ``ModelError``.

Example:
    >>> from pytc.config import ModelConfig
    >>> from pytc.models import build_model, list_architectures
    >>> list_architectures("mednext*")
    ['mednext', 'mednext_custom']
    >>> net = build_model(ModelConfig(architecture="mednext", input_size=[32, 32, 32]))  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from pytc.errors import ModelError

if TYPE_CHECKING:  # annotations only: importing torch here would slow down the CLI
    import torch

    from pytc.config import ModelConfig

Builder = Callable[["ModelConfig"], "torch.nn.Module"]

# ModelConfig fields every architecture reads (or that belong to the loss, not the network); any
# other field is architecture-specific and listed in the entry's `uses`.
_COMMON_FIELDS = frozenset(
    {"architecture", "in_channels", "out_channels", "spatial_dims", "input_size", "deep_supervision",
     "loss_functions", "loss_weights", "init_from"}
)


@dataclass(frozen=True)
class Architecture:
    """A registered architecture.

    Attributes:
        name: Registry name (``model.architecture``).
        builder: ``builder(model_cfg) -> torch.nn.Module``.
        family: Short family label shown by ``pytc list-archs``.
        good_for: One-line hint on when to pick it.
        uses: Architecture-specific ``ModelConfig`` fields the builder reads; setting any other
            non-common field away from its default triggers a warning.
        deep_supervision: Whether the network can return multi-scale outputs.
    """

    name: str
    builder: Builder
    family: str
    good_for: str
    uses: frozenset[str]
    deep_supervision: bool


_REGISTRY: dict[str, Architecture] = {}


def register_architecture(
    name: str,
    *,
    family: str,
    good_for: str,
    uses: tuple[str, ...] = (),
    deep_supervision: bool = False,
) -> Callable[[Builder], Builder]:
    """Decorator that registers a model builder under ``name``.

    Args:
        name: Registry name, used as ``model.architecture``.
        family: Short family label (e.g. ``"MedNeXt"``).
        good_for: One-line hint on when to pick this architecture.
        uses: Architecture-specific ``ModelConfig`` fields the builder reads.
        deep_supervision: Whether the builder honours ``deep_supervision=True``.

    Returns:
        The decorator; it returns the builder unchanged.

    Example:
        >>> @register_architecture("tiny_net", family="demo", good_for="docs")  # doctest: +SKIP
        ... def build_tiny(cfg): ...
    """

    def decorator(builder: Builder) -> Builder:
        old = _REGISTRY.get(name)
        # Re-registering the same function (e.g. importlib.reload) is fine; two builders under one
        # name is a programming error.
        if old is not None and _qualname(old.builder) != _qualname(builder):
            raise ValueError(f"architecture {name!r} is already registered by {_qualname(old.builder)}")
        _REGISTRY[name] = Architecture(name, builder, family, good_for, frozenset(uses), deep_supervision)
        return builder

    return decorator


def _qualname(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def list_architectures(pattern: Optional[str] = None) -> list[str]:
    """Names of the registered architectures, sorted.

    Args:
        pattern: Optional shell-style pattern (``fnmatch``), e.g. ``"mednext*"``.

    Returns:
        The matching names.
    """
    names = sorted(_REGISTRY)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def get_architecture(name: str) -> Architecture:
    """The registry entry for ``name``.

    Raises:
        ModelError: unknown name; the message lists the registered names (with a did-you-mean).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        pass
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ModelError(
        f"unknown model.architecture {name!r}{hint}; available: {', '.join(list_architectures())} "
        "(see `pytc list-archs`)"
    ) from None


def geometry(model_cfg: ModelConfig) -> tuple[int, list[int]]:
    """Resolve ``(spatial_dims, input_size)`` of a model config.

    ``PytcConfig`` fills both from ``data.patch_size``; a bare ``ModelConfig()`` falls back to the
    default patch size (its last two entries for 2D), so builders never see ``None``.

    Raises:
        ModelError: the two disagree or a size is not positive.
    """
    from pytc.config import DataConfig

    default_patch = list(DataConfig.model_fields["patch_size"].default)  # the one default patch size
    dims, size = model_cfg.spatial_dims, model_cfg.input_size
    if dims is None:
        dims = len(size) if size is not None else len(default_patch)
    if size is None:
        size = default_patch[-dims:]
    size = list(size)
    if len(size) != dims or any(s < 1 for s in size):
        raise ModelError(
            f"model.input_size {size} does not fit model.spatial_dims {dims}; give {dims} positive sizes"
        )
    return dims, size


def require_divisible(model_cfg: ModelConfig, factor: int, why: str) -> list[int]:
    """Check that every input size is a multiple of ``factor``; return the resolved input size.

    Raises:
        ModelError: naming the architecture, the factor, the reason and the nearest valid size.
    """
    _, size = geometry(model_cfg)
    if any(s % factor for s in size):
        fixed = [max(factor, round(s / factor) * factor) for s in size]
        raise ModelError(
            f"{model_cfg.architecture} needs model.input_size (default data.patch_size) divisible by "
            f"{factor} ({why}), got {size}; use e.g. {fixed}"
        )
    return size


def require_coarsest_above_one_voxel(model_cfg: ModelConfig, factor: int) -> None:
    """Check that the coarsest level (input size // ``factor``) holds more than one voxel.

    Instance and group normalisation reject a one-voxel feature map, in eval mode too, so such an
    input fails deep inside the forward pass; say so at build time instead.

    Raises:
        ModelError: with a size that works.
    """
    _, size = geometry(model_cfg)
    if math.prod(s // factor for s in size) <= 1:
        fixed = [max(s, factor) for s in size[:-1]] + [2 * factor]
        raise ModelError(
            f"model.input_size {size} is too small for {model_cfg.architecture}: its coarsest level "
            f"(1/{factor}) would be a single voxel, which its normalisation layers reject; use e.g. {fixed}"
        )


def _warn_unused(model_cfg: ModelConfig, entry: Architecture) -> None:
    fields = type(model_cfg).model_fields
    assert entry.uses <= fields.keys(), f"{entry.name}: uses unknown fields {entry.uses - fields.keys()}"
    for key, field in fields.items():
        if key in _COMMON_FIELDS or key in entry.uses:
            continue
        value = getattr(model_cfg, key)
        if value != field.get_default(call_default_factory=True):
            warnings.warn(
                f"model.{key}={value!r} is not used by {entry.name} and has no effect",
                UserWarning,
                stacklevel=3,  # point at build_model's caller
            )


def build_model(model_cfg: ModelConfig) -> torch.nn.Module:
    """Build the network described by ``model_cfg`` (see the output contract in this module's docstring).

    Args:
        model_cfg: The ``model`` section of the config.

    Returns:
        A freshly initialised ``torch.nn.Module`` (on the current default device).

    Raises:
        ModelError: unknown architecture, deep supervision on an architecture without it, or
            settings the architecture cannot be built with.

    Example:
        >>> from pytc.config import ModelConfig
        >>> net = build_model(ModelConfig(architecture="monai_unet", input_size=[32, 32, 32]))  # doctest: +SKIP
    """
    entry = get_architecture(model_cfg.architecture)
    if model_cfg.deep_supervision and not entry.deep_supervision:
        capable = [a.name for a in _REGISTRY.values() if a.deep_supervision]
        raise ModelError(
            f"{entry.name} has no deep-supervision outputs; set model.deep_supervision=false or use one "
            f"of: {', '.join(sorted(capable))}"
        )
    geometry(model_cfg)  # fail early, with our message, on inconsistent geometry
    _warn_unused(model_cfg, entry)
    try:
        return entry.builder(model_cfg)
    except ValueError as err:  # MONAI validates its own arguments with ValueError
        raise ModelError(f"cannot build {entry.name} with these settings: {err}") from err


def count_parameters(model_cfg: ModelConfig) -> int:
    """Number of parameters of the network ``model_cfg`` describes, without allocating its weights.

    The model is built on the ``meta`` device; a few MONAI networks call ``.item()`` while building
    (SwinUNETR), which meta tensors cannot do, so those are built on the CPU instead.
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # counting must not repeat build_model's warnings
        try:
            with torch.device("meta"):
                model = build_model(model_cfg)
        except (RuntimeError, NotImplementedError):
            model = build_model(model_cfg)
    return sum(p.numel() for p in model.parameters())


def architecture_table(pattern: Optional[str] = None) -> list[dict[str, Any]]:
    """Describe the registered architectures, one row each (what ``pytc list-archs`` shows).

    Each row has ``name``, ``family``, ``good_for``, ``deep_supervision`` and ``params``, the
    parameter count at the default settings (``PytcConfig().model`` with only
    ``architecture`` replaced).

    Args:
        pattern: Optional shell-style pattern on the names, as in :func:`list_architectures`.

    Returns:
        Rows sorted by name, JSON-serialisable.
    """
    from pytc.config import PytcConfig

    rows = []
    for name in list_architectures(pattern):
        entry = _REGISTRY[name]
        default_cfg = PytcConfig.model_validate({"model": {"architecture": name}}).model
        rows.append(
            {"name": name, "family": entry.family, "good_for": entry.good_for,
             "params": count_parameters(default_cfg), "deep_supervision": entry.deep_supervision}
        )
    return rows
