"""MedNeXt (Roy et al., MICCAI 2023) from MONAI, as presets and fully custom.

Both builders import monai inside their bodies (see registry.py) and work in 2D and 3D. MONAI's
``MedNeXt`` returns a *tuple* ``(full, 1/2, 1/4, 1/8, 1/16)`` in training mode with deep supervision;
a forward hook turns it into the ``list`` of the registry's output contract. A hook (rather than a
wrapper module) keeps the state-dict keys identical to plain MONAI MedNeXt, so weights stay
interchangeable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytc.errors import ModelError
from pytc.models.registry import (
    geometry,
    register_architecture,
    require_coarsest_above_one_voxel,
    require_divisible,
)

if TYPE_CHECKING:
    import torch

    from pytc.config import ModelConfig

_DOWNSAMPLING = 16  # MedNeXt has 4 stride-2 stages; skip additions need exact halving at each


def _outputs_as_list(module: Any, inputs: Any, output: Any) -> Any:
    # Module-level (not a lambda) so the model stays picklable / deep-copyable (EMA, checkpoints).
    return list(output) if isinstance(output, tuple) else output


def _finish(net: torch.nn.Module, deep_supervision: bool) -> torch.nn.Module:
    if deep_supervision:
        net.register_forward_hook(_outputs_as_list)
    return net


@register_architecture(
    "mednext",
    family="MedNeXt",
    good_for="ConvNeXt U-Net presets S/B/M/L; strong default",
    uses=("mednext_size", "mednext_kernel_size"),
    deep_supervision=True,
)
def build_mednext(cfg: ModelConfig) -> torch.nn.Module:
    """A MONAI MedNeXt preset: ``mednext_size`` S/B/M/L, ``mednext_kernel_size`` 3/5/7."""
    from monai.networks.nets.mednext import create_mednext

    require_divisible(cfg, _DOWNSAMPLING, "4 stride-2 stages")
    require_coarsest_above_one_voxel(cfg, _DOWNSAMPLING)
    dims, _ = geometry(cfg)
    net = create_mednext(
        cfg.mednext_size,
        spatial_dims=dims,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        kernel_size=cfg.mednext_kernel_size,
        deep_supervision=cfg.deep_supervision,
    )
    return _finish(net, cfg.deep_supervision)


def _expansion_ratios(exp_r: int | list[int]) -> tuple[list[int], int, list[int]]:
    """Split ``mednext_exp_r`` into (encoder ×4, bottleneck, decoder ×4)."""
    values = [exp_r] * 9 if isinstance(exp_r, int) else list(exp_r)
    if len(values) != 9:
        raise ModelError(
            f"mednext_custom needs model.mednext_exp_r as one int or 9 values (4 encoder, bottleneck, "
            f"4 decoder), got {len(values)}: {values}"
        )
    if any(v < 1 for v in values):
        raise ModelError(f"model.mednext_exp_r values must be >= 1, got {values}")
    return values[:4], values[4], values[5:]


@register_architecture(
    "mednext_custom",
    family="MedNeXt",
    good_for="MedNeXt with own width, depths, expansions",
    uses=("mednext_base_channels", "mednext_exp_r", "mednext_block_counts", "mednext_kernel_size", "mednext_grn"),
    deep_supervision=True,
)
def build_mednext_custom(cfg: ModelConfig) -> torch.nn.Module:
    """MONAI ``MedNeXt`` with every knob from the config (residual connections on, as in the presets)."""
    from monai.networks.nets import MedNeXt

    require_divisible(cfg, _DOWNSAMPLING, "4 stride-2 stages")
    require_coarsest_above_one_voxel(cfg, _DOWNSAMPLING)
    encoder, bottleneck, decoder = _expansion_ratios(cfg.mednext_exp_r)
    blocks = list(cfg.mednext_block_counts)
    if any(b < 1 for b in blocks):
        raise ModelError(f"model.mednext_block_counts values must be >= 1, got {blocks}")
    dims, _ = geometry(cfg)
    net = MedNeXt(
        spatial_dims=dims,
        init_filters=cfg.mednext_base_channels,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        encoder_expansion_ratio=encoder,
        decoder_expansion_ratio=decoder,
        bottleneck_expansion_ratio=bottleneck,
        kernel_size=cfg.mednext_kernel_size,
        deep_supervision=cfg.deep_supervision,
        use_residual_connection=True,
        blocks_down=blocks[:4],
        blocks_bottleneck=blocks[4],
        blocks_up=blocks[5:],
        norm_type="group",
        global_resp_norm=cfg.mednext_grn,
    )
    return _finish(net, cfg.deep_supervision)
