"""MONAI's DynUNet (the nnU-Net architecture) with per-level strides and kernels, planned from the voxel size.

Serial-section EM is often 30–40 nm thick in z and 4–8 nm in y/x, so halving every axis at every
level makes z collapse long before y/x. ``monai_dynunet`` takes one stride and one kernel per level
and axis, either from ``model.strides`` / ``model.kernel_size`` or planned by :func:`plan_dynunet`
from ``model.voxel_size`` and the patch size. The levels used are printed by ``pytc config show``.

MONAI's ``DynUNet`` stacks its deep-supervision heads, upsampled to full resolution, into one tensor
in training mode. A forward hook returns the registry's ``list`` instead: the full-resolution output
first, then each head at its own (coarser) resolution, as nnU-Net trains them; the loss resizes the
target to each. A hook rather than a wrapper module keeps the state-dict keys those of MONAI's
``DynUNet``, with or without deep supervision, so weights stay interchangeable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from pytc.errors import ModelError
from pytc.models.registry import geometry, register_architecture

if TYPE_CHECKING:
    import torch

    from pytc.config import ModelConfig

MIN_BOTTLENECK = 4  # voxels along a strided axis at the coarsest level (nnU-Net's minimum feature map)
_MIN_LEVELS = 3  # DynUNet needs an input block, one down-sampling block and a bottleneck


def plan_dynunet(
    patch_size: Sequence[int],
    voxel_size: Optional[Sequence[float]],
    levels: int,
    min_size: int = MIN_BOTTLENECK,
) -> tuple[list[list[int]], list[list[int]]]:
    """Plan per-level kernels and strides for an anisotropic voxel size, after nnU-Net's heuristic.

    The rule (nnU-Net's published planning heuristic, restated): level 0 keeps the input resolution
    (stride 1). Each further level halves (stride 2) every axis whose current spacing is at most
    twice the finest current spacing, as long as that axis has an even size and keeps at least
    ``min_size`` voxels; the other axes keep stride 1. Halving an axis doubles its spacing. A level's
    kernel is 1 along axes whose spacing at that level is more than twice the finest (too coarse for
    a 3-voxel neighbourhood to mean the same thing as along the fine axes) and 3 elsewhere. Planning
    stops after ``levels`` levels, or earlier when no axis can be halved.

    Args:
        patch_size: Input size per axis, e.g. ``[16, 128, 128]`` (Z, Y, X).
        voxel_size: Spacing per axis in any one unit (e.g. nm); None means isotropic.
        levels: Most levels to plan (the input level included), e.g. ``len(model.filters)``.
        min_size: Fewest voxels a halved axis may keep.

    Returns:
        ``(kernel_sizes, strides)``, one ``[k per axis]`` / ``[s per axis]`` list per level, finest first.

    Raises:
        ModelError: ``voxel_size`` does not have one positive entry per axis.

    Example:
        >>> plan_dynunet([16, 128, 128], [40, 4, 4], 5)[1]
        [[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
    """
    size = [int(s) for s in patch_size]
    spacing = [1.0] * len(size) if voxel_size is None else [float(v) for v in voxel_size]
    if len(spacing) != len(size) or any(v <= 0 for v in spacing):
        raise ModelError(
            f"model.voxel_size {list(voxel_size or [])} needs one positive value per axis of the patch {size}"
        )

    def kernel(current: list[float]) -> list[int]:
        return [1 if v > 2 * min(current) else 3 for v in current]

    kernels, strides = [kernel(spacing)], [[1] * len(size)]
    while len(strides) < levels:
        finest = min(spacing)
        stride = [2 if v <= 2 * finest and s % 2 == 0 and s // 2 >= min_size else 1 for v, s in zip(spacing, size)]
        if all(s == 1 for s in stride):
            break
        spacing = [v * s for v, s in zip(spacing, stride)]
        size = [n // s for n, s in zip(size, stride)]
        strides.append(stride)
        kernels.append(kernel(spacing))
    return kernels, strides


def dynunet_levels(cfg: ModelConfig) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """The ``(kernel_sizes, strides, filters)`` a ``monai_dynunet`` config builds, checked.

    Explicit ``model.kernel_size`` / ``model.strides`` win; otherwise :func:`plan_dynunet` plans up to
    ``len(model.filters)`` levels from ``model.voxel_size`` and the input size, and the network uses
    the first ``filters`` entries, one per planned level.

    Raises:
        ModelError: levels that do not fit the input size or the number of axes, or too few levels.
    """
    dims, size = geometry(cfg)
    filters = list(cfg.filters)
    if cfg.strides is None or cfg.kernel_size is None:
        kernels, strides = plan_dynunet(size, cfg.voxel_size, len(filters))
        if len(strides) < _MIN_LEVELS:
            raise ModelError(
                f"monai_dynunet: input size {size} allows only {len(strides)} levels (at least {_MIN_LEVELS} "
                f"needed, each halving keeps >= {MIN_BOTTLENECK} voxels); use a larger patch, e.g. "
                f"{[max(s, 4 * MIN_BOTTLENECK) for s in size]}"
            )
        return kernels, strides, filters[: len(strides)]

    kernels, strides = [list(k) for k in cfg.kernel_size], [list(s) for s in cfg.strides]
    return _checked("monai_dynunet", "model.strides", kernels, strides, filters, dims, size)


def _checked(name: str, source: str, kernels: list[list[int]], strides: list[list[int]], filters: list[int],
             dims: int, size: Sequence[int]) -> tuple[list[list[int]], list[list[int]], list[int]]:  # fmt: skip
    """``(kernels, strides, filters)`` after checking they build a network for ``size``."""
    if any(len(level) != dims for level in kernels + strides):
        raise ModelError(f"{name}: every model.kernel_size / model.strides entry needs {dims} values (one per axis)")
    if len(strides) < _MIN_LEVELS or len(filters) != len(strides):
        raise ModelError(
            f"{name}: {source} has {len(strides)} levels and model.filters {len(filters)}; give one "
            f"filter count per level and at least {_MIN_LEVELS} levels"
        )
    if any(s != 1 for s in strides[0]):
        raise ModelError(f"{name}: model.strides[0] must be all 1 (the output keeps the input size), got {strides[0]}")
    factor = [math.prod(level[a] for level in strides) for a in range(dims)]
    if any(n % f for n, f in zip(size, factor)) or math.prod(n // f for n, f in zip(size, factor)) <= 1:
        fixed = [max(2 * f, round(n / f) * f) for n, f in zip(size, factor)]
        raise ModelError(
            f"{name}: {source} down-sample by {factor} in total, so model.input_size (default "
            f"data.patch_size) must be a multiple of that with more than one voxel left, got {size}; use e.g. {fixed}"
        )
    return kernels, strides, filters


def rsunet_levels(cfg: ModelConfig) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """The levels of ``rsunet``: one per ``model.filters`` entry; every level after the first halves
    y and x only (down-factors 1×2×2); 1×3×3 kernels at the input level, 3×3×3 below (2D: 2×2
    strides and 3×3 kernels)."""
    dims, size = geometry(cfg)
    levels = len(cfg.filters)
    down, first, kernel = ([1, 2, 2], [1, 3, 3], [3, 3, 3]) if dims == 3 else ([2, 2], [3, 3], [3, 3])
    strides = [[1] * dims] + [list(down) for _ in range(levels - 1)]
    kernels = [first] + [list(kernel) for _ in range(levels - 1)]
    return _checked("rsunet", "its (1, 2, 2) levels", kernels, strides, list(cfg.filters), dims, size)


def describe_plan(cfg: ModelConfig) -> str:
    """One comment line naming the levels a ``monai_dynunet`` config builds (``pytc config show``)."""
    try:
        kernels, strides, filters = dynunet_levels(cfg)
    except ModelError as err:
        return f"# {err}\n"  # the message names monai_dynunet
    source = "model.strides/kernel_size" if cfg.strides is not None else f"planned for voxel_size {cfg.voxel_size}"
    return f"# monai_dynunet levels ({source}): strides {strides}, kernels {kernels}, filters {filters}\n"


def _outputs_as_list(module: Any, inputs: Any, output: Any) -> Any:
    # Module-level (not a lambda) so the model stays picklable / deep-copyable (EMA, checkpoints).
    # In training with deep supervision, output is (N, 1 + heads, C, *full size); module.heads holds
    # the same heads at their own resolution, finest first.
    if not (module.training and module.deep_supervision):
        return output
    heads = list(module.heads)
    # The list is shared with MONAI's skip layers, so empty it in place: kept, the heads would hold
    # this step's graph until the next forward and make the module impossible to deep-copy.
    module.heads[:] = [output.new_empty(0)] * len(heads)
    return [output[:, 0], *heads]


@register_architecture(
    "monai_dynunet",
    family="U-Net",
    good_for="nnU-Net; per-axis strides for anisotropic EM",
    uses=("filters", "dropout", "voxel_size", "kernel_size", "strides"),
    deep_supervision=True,
)
def build_dynunet(cfg: ModelConfig) -> torch.nn.Module:
    """MONAI ``DynUNet`` with residual blocks and the levels of :func:`dynunet_levels`.

    With ``deep_supervision`` every decoder level but the one just above the bottleneck gets a head,
    so a 5-level network returns 4 outputs (full, then each coarser decoder resolution).
    """
    return _build(cfg, *dynunet_levels(cfg))


@register_architecture(
    "rsunet",
    family="U-Net",
    good_for="upstream's anisotropic EM name: DynUNet with 1x2x2 down-sampling",
    uses=("filters", "dropout"),
    deep_supervision=True,
)
def build_rsunet(cfg: ModelConfig) -> torch.nn.Module:
    """Upstream PyTorch Connectomics' ``rsunet`` name, mapped to MONAI's ``DynUNet`` (not a copy of it).

    Kept from the residual symmetric U-Net: y/x halved at every level while z keeps its sections
    (down-factors 1×2×2), 1×3×3 convolutions at the input level and 3×3×3 below, residual encoder
    blocks, one level per ``model.filters`` entry. Not kept: its additive skip connections and
    bilinear up-sampling (DynUNet concatenates skips and up-samples with transposed convolutions),
    so upstream rsunet weights do not load.
    """
    return _build(cfg, *rsunet_levels(cfg))


def _build(cfg: ModelConfig, kernels: list[list[int]], strides: list[list[int]], filters: list[int]) -> torch.nn.Module:
    from monai.networks.nets import DynUNet

    dims, _ = geometry(cfg)
    net = DynUNet(
        spatial_dims=dims,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],  # transposed convolutions undo each stride exactly
        filters=filters,
        dropout=cfg.dropout or None,  # None: no dropout layers at all
        deep_supervision=cfg.deep_supervision,
        deep_supr_num=len(strides) - 2,  # MONAI's maximum: all decoder levels but the lowest
        res_block=True,  # residual encoder blocks (the decoder stays plain), as in nnU-Net's ResEnc presets
    )
    if cfg.deep_supervision:
        net.register_forward_hook(_outputs_as_list)
    return net
