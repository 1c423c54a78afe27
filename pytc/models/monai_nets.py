"""MONAI's U-Nets and transformer U-Nets, registered by name.

Each builder takes the ``model`` sub-config and imports monai inside its body (see registry.py).
All of them work in 2D (``model.spatial_dims: 2``) as well as 3D. None has deep-supervision heads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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


def _require_einops(name: str) -> None:
    # MONAI imports einops lazily and only fails deep inside construction (or, for SwinUNETR,
    # in the forward pass); say what to install up front.
    import importlib.util

    if importlib.util.find_spec("einops") is None:
        raise ModelError(
            f"{name} needs the einops package (MONAI's transformer blocks use it); pip install einops"
        )


@register_architecture(
    "monai_basic_unet3d",
    family="U-Net",
    good_for="baseline U-Net (upstream Lucchi config)",
    uses=("filters", "dropout"),
)
def build_basic_unet(cfg: ModelConfig) -> torch.nn.Module:
    """MONAI ``BasicUNet`` (4 down-samplings; pads internally, so sizes need not be multiples of 16).

    ``model.filters`` gives 5 encoder widths (the last decoder level reuses ``filters[0]``) or all
    6 ``BasicUNet`` features as upstream configs do (e.g. ``[32, 64, 128, 256, 512, 1024]``).
    """
    from monai.networks.nets import BasicUNet

    filters = list(cfg.filters)
    if len(filters) == 5:
        features = filters + [filters[0]]
    elif len(filters) == 6:
        features = filters
    else:
        raise ModelError(
            f"monai_basic_unet3d needs model.filters with 5 entries (encoder levels) or 6 (encoder + last "
            f"decoder level), got {len(filters)}: {filters}"
        )
    require_coarsest_above_one_voxel(cfg, 16)  # 4 max-pool halvings; odd sizes are padded, no divisibility
    dims, _ = geometry(cfg)
    return BasicUNet(
        spatial_dims=dims,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        features=tuple(features),
        dropout=cfg.dropout,
    )


@register_architecture(
    "monai_unet",
    family="U-Net",
    good_for="residual U-Net; depth = len(model.filters)",
    uses=("filters", "dropout"),
)
def build_unet(cfg: ModelConfig) -> torch.nn.Module:
    """MONAI ``UNet`` with residual units: ``channels = filters``, stride 2 between levels."""
    from monai.networks.nets import UNet

    levels = len(cfg.filters) - 1
    require_divisible(cfg, 2**levels, f"{levels} stride-2 down-samplings")
    require_coarsest_above_one_voxel(cfg, 2**levels)
    dims, _ = geometry(cfg)
    return UNet(
        spatial_dims=dims,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        channels=tuple(cfg.filters),
        strides=(2,) * levels,
        num_res_units=2,  # MONAI's usual residual setting; 0 would be a plain U-Net
        dropout=cfg.dropout,
    )


@register_architecture(
    "monai_unetr",
    family="Transformer",
    good_for="ViT encoder, global context; large data sets",
    uses=("feature_size", "hidden_size", "mlp_dim", "num_heads", "dropout"),
)
def build_unetr(cfg: ModelConfig) -> torch.nn.Module:
    """MONAI ``UNETR`` built for ``img_size = input_size`` (16³ patch tokens)."""
    from monai.networks.nets import UNETR

    _require_einops("monai_unetr")
    size = require_divisible(cfg, 16, "UNETR's 16-voxel patch tokens")  # one token (16³) is fine
    if cfg.hidden_size % cfg.num_heads:
        raise ModelError(
            f"monai_unetr needs model.hidden_size divisible by model.num_heads, got {cfg.hidden_size} and "
            f"{cfg.num_heads}"
        )
    dims, _ = geometry(cfg)
    optional = {} if cfg.feature_size is None else {"feature_size": cfg.feature_size}  # None: MONAI's 16
    return UNETR(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        img_size=tuple(size),
        hidden_size=cfg.hidden_size,
        mlp_dim=cfg.mlp_dim,
        num_heads=cfg.num_heads,
        dropout_rate=cfg.dropout,
        spatial_dims=dims,
        **optional,
    )


@register_architecture(
    "monai_swin_unetr",
    family="Transformer",
    good_for="shifted-window transformer; large data sets",
    uses=("feature_size", "dropout"),
)
def build_swin_unetr(cfg: ModelConfig) -> torch.nn.Module:
    """MONAI ``SwinUNETR`` (MONAI ≥ 1.5 infers the image size at run time; no ``img_size``)."""
    from monai.networks.nets import SwinUNETR

    _require_einops("monai_swin_unetr")
    require_divisible(cfg, 32, "patch size 2 and 4 patch-merging stages: 2**5")
    require_coarsest_above_one_voxel(cfg, 32)
    if cfg.feature_size is not None and cfg.feature_size % 12:
        raise ModelError(f"monai_swin_unetr needs model.feature_size divisible by 12, got {cfg.feature_size}")
    dims, _ = geometry(cfg)
    optional = {} if cfg.feature_size is None else {"feature_size": cfg.feature_size}  # None: MONAI's 24
    return SwinUNETR(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        drop_rate=cfg.dropout,
        spatial_dims=dims,
        **optional,
    )
