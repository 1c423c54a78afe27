"""The config schema: one pydantic model per section, and :class:`PytcConfig` holding them all.

Every section has ``extra="forbid"`` (a misspelt key is an error, never silently ignored) and
``validate_assignment`` (``cfg.data.batch_size = "x"`` is checked too). Each field has its default
and a one-line description here, and only here; the JSON Schema (``pytc config schema``) and the
README reference (:mod:`pytc.config.reference`) are generated from these models.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pytc.choices import MERGE_FUNCTIONS, Compression, DecodeMethod, EvalTask, OutputDtype, Precision, TargetKind, ValMetric

MAX_SEED = 2**32 - 1


class _Section(BaseModel):
    # forbid: typos are errors; validate_assignment: `cfg.data.batch_size = "x"` is checked too.
    # allow_inf_nan=False: `lr: .inf` (or nan, from a file, an override or the environment) is refused.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=True, allow_inf_nan=False)


PathList = Union[str, list[str]]


class SystemConfig(_Section):
    """Hardware, reproducibility and where a run writes."""

    num_gpus: Optional[int] = Field(None, ge=0, description="GPUs to use; null = all visible, 0 = CPU only.")
    num_cpus: int = Field(4, ge=0, description="CPU threads for torch and data loading helpers.")
    seed: int = Field(
        42, description="Random seed for weights, sampling and augmentation.",
        json_schema_extra={"minimum": 0, "maximum": MAX_SEED},
    )
    output_dir: Optional[str] = Field(
        None, description="Run directory (config, checkpoints, logs); null = runs/<config file name>."
    )

    @field_validator("seed")
    @classmethod
    def _seed_in_range(cls, v: int) -> int:
        # np.random.seed (called by accelerate's set_seed) takes 0..2**32-1 only; torch takes a wider range.
        if not 0 <= v <= MAX_SEED:
            raise ValueError(f"must be between 0 and {MAX_SEED} (the seeds NumPy accepts)")
        return v


class ModelConfig(_Section):
    """Network architecture (see `pytc list-archs`) and its loss."""

    architecture: str = Field("monai_basic_unet3d", description="Registered architecture name (`pytc list-archs`).")
    in_channels: int = Field(1, ge=1, description="Input channels (1 for grayscale EM; more need data.augment.enabled=false).")
    out_channels: int = Field(1, ge=1, description="Output channels; must equal the channels of all targets.")
    spatial_dims: Optional[Literal[2, 3]] = Field(None, description="2 or 3; null = number of entries in data.patch_size.")
    input_size: Optional[list[int]] = Field(
        None, description="Patch size the network is built for (checked against each architecture); null = data.patch_size."
    )
    filters: list[int] = Field(
        [32, 32, 64, 128, 256], min_length=2, description="Feature channels per level (U-Nets), coarsest last."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability inside the network.")
    deep_supervision: bool = Field(False, description="Return multi-scale outputs (MedNeXt, DynUNet) and supervise each.")
    deep_supervision_weights: Optional[list[float]] = Field(
        None, description="Relative loss weight per output scale, full resolution first, normalised to sum 1; null = 1, 1/2, 1/4, ..."
    )
    feature_size: Optional[int] = Field(
        None, ge=1, description="UNETR/SwinUNETR embedding features; null = the network's default (16 / 24)."
    )
    hidden_size: int = Field(768, ge=1, description="UNETR transformer hidden size.")
    mlp_dim: int = Field(3072, ge=1, description="UNETR transformer MLP size.")
    num_heads: int = Field(12, ge=1, description="UNETR attention heads.")
    mednext_size: Literal["S", "B", "M", "L"] = Field("S", description="MedNeXt preset: S 5.6M, B 10.5M, M 17.6M, L 61.8M params.")
    mednext_kernel_size: Literal[3, 5, 7] = Field(3, description="MedNeXt convolution kernel size.")
    mednext_base_channels: int = Field(32, ge=1, description="mednext_custom: channels of the first stage.")
    mednext_exp_r: Union[int, list[int]] = Field(
        2, description="mednext_custom: expansion ratio, one value or 9 (4 encoder, bottleneck, 4 decoder)."
    )
    mednext_block_counts: list[int] = Field(
        [2, 2, 2, 2, 2, 2, 2, 2, 2], min_length=9, max_length=9,
        description="mednext_custom: blocks per stage (4 encoder, bottleneck, 4 decoder).",
    )
    mednext_grn: bool = Field(False, description="mednext_custom: use Global Response Normalisation.")
    voxel_size: Optional[list[float]] = Field(
        None, min_length=2, max_length=3,
        description="monai_dynunet: voxel size (Z, Y, X) in nm that plans strides and kernels; null = isotropic.",
    )
    kernel_size: Optional[list[list[int]]] = Field(
        None, description="monai_dynunet: kernel per level, e.g. [[1, 3, 3], ...]; null = planned from voxel_size."
    )
    strides: Optional[list[list[int]]] = Field(
        None, description="monai_dynunet: stride per level, the first all 1; null = planned from voxel_size."
    )
    init_from: Optional[str] = Field(
        None, description="Checkpoint whose weights start training (fine-tuning); its model settings must match."
    )
    loss_functions: list[str] = Field(
        ["DiceLoss", "BCEWithLogitsLoss"], min_length=1, description="Losses summed during training."
    )
    loss_weights: list[float] = Field([1.0, 1.0], description="One weight per loss in loss_functions.")

    @model_validator(mode="after")
    def _weights_match_losses(self) -> "ModelConfig":
        if len(self.loss_weights) != len(self.loss_functions):
            raise ValueError(
                f"loss_weights has {len(self.loss_weights)} entries but loss_functions has "
                f"{len(self.loss_functions)}; give one weight per loss"
            )
        return self

    @model_validator(mode="after")
    def _dynunet_levels(self) -> "ModelConfig":
        if (self.kernel_size is None) != (self.strides is None):
            raise ValueError("give both kernel_size and strides (one entry per level), or neither to plan them")
        if self.strides is not None and len(self.strides) != len(self.kernel_size):
            raise ValueError(f"kernel_size has {len(self.kernel_size)} levels but strides has {len(self.strides)}")
        values = [v for levels in (self.kernel_size or [], self.strides or []) for level in levels for v in level]
        if any(v < 1 for v in values) or any(v <= 0 for v in self.voxel_size or []):
            raise ValueError("voxel_size, kernel_size and strides must be positive")
        return self


class TargetConfig(_Section):
    """One label → target transform; the channels of all targets are concatenated in order."""

    name: TargetKind = Field(
        ..., description="binary: foreground; contour: instance borders; affinity: one channel per offset; distance: EDT."
    )
    thickness: int = Field(1, ge=1, description="contour: border thickness in voxels.")
    offsets: list[list[int]] = Field(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]], min_length=1,
        description="affinity: neighbour offsets (z, y, x), short and long range; one channel each.",
    )
    distance_mode: Literal["signed", "normalized"] = Field(
        "normalized", description="distance: signed (inside +, outside -) or normalised to [0, 1] per instance."
    )
    losses: Optional[list[str]] = Field(None, description="Losses for this target's channels; null = model.loss_functions.")
    loss_weights: Optional[list[float]] = Field(None, description="Weights for `losses`; null = model.loss_weights, or 1 each when `losses` is set.")

    @property
    def channels(self) -> int:
        return len(self.offsets) if self.name == "affinity" else 1


class AugmentConfig(_Section):
    """Training augmentations: each applied with its probability (0 = off)."""

    enabled: bool = Field(True, description="Turn all augmentation on or off.")
    flip_prob: float = Field(0.5, ge=0, le=1, description="Flip along y and along x (each).")
    rot90_prob: float = Field(0.5, ge=0, le=1, description="Rotate by a multiple of 90° in-plane.")
    zflip_prob: float = Field(0.5, ge=0, le=1, description="Flip along z.")
    affine_prob: float = Field(0.0, ge=0, le=1, description="Random in-plane rotation and scaling.")
    rotate_deg: float = Field(15.0, ge=0, description="affine: maximum in-plane rotation in degrees.")
    scale_range: float = Field(0.1, ge=0, lt=1, description="affine: maximum relative scaling.")
    elastic_prob: float = Field(0.0, ge=0, le=1, description="Elastic deformation.")
    gamma_prob: float = Field(0.3, ge=0, le=1, description="Random gamma.")
    contrast_prob: float = Field(0.3, ge=0, le=1, description="Random contrast scaling.")
    brightness_prob: float = Field(0.3, ge=0, le=1, description="Random brightness shift.")
    noise_prob: float = Field(0.2, ge=0, le=1, description="Additive Gaussian noise.")
    noise_std: float = Field(0.05, ge=0, description="noise: standard deviation (image in [0, 1]).")
    blur_prob: float = Field(0.1, ge=0, le=1, description="Gaussian blur.")
    missing_section_prob: float = Field(0.1, ge=0, le=1, description="EM: blank out whole sections.")
    misalignment_prob: float = Field(0.1, ge=0, le=1, description="EM: shift the stack in-plane from a z index on.")
    misalignment_max_shift: int = Field(8, ge=0, description="misalignment: maximum shift in voxels.")
    motion_blur_prob: float = Field(0.1, ge=0, le=1, description="EM: directional blur within sections.")
    cut_blur_prob: float = Field(0.1, ge=0, le=1, description="EM: down/up-sample a random box.")
    cut_noise_prob: float = Field(0.1, ge=0, le=1, description="EM: add strong noise to a random box.")


class DataConfig(_Section):
    """Training/validation volumes (any format `pytc info` reads) and patch sampling."""

    train_image: Optional[PathList] = Field(None, description="Training image volume(s), e.g. train.h5:raw.")
    train_label: Optional[PathList] = Field(None, description="Training label volume(s), one per image.")
    train_mask: Optional[PathList] = Field(None, description="Optional valid-voxel mask(s), one per image.")
    val_image: Optional[PathList] = Field(None, description="Validation image volume(s); null = none.")
    val_label: Optional[PathList] = Field(None, description="Validation label volume(s), one per image.")
    patch_size: list[int] = Field(
        [64, 128, 128], min_length=2, max_length=3, description="Training patch (Z, Y, X) or (Y, X) for 2D."
    )
    batch_size: int = Field(2, ge=1, description="Patches per step per process.")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes.")
    persistent_workers: bool = Field(True, description="Keep workers alive between epochs.")
    pin_memory: bool = Field(True, description="Pin host memory for faster GPU transfer.")
    use_cache: bool = Field(True, description="Cache volumes in memory when they fit cache_budget_gb.")
    cache_budget_gb: float = Field(4.0, ge=0, description="Volumes larger than this are read lazily from disk.")
    normalize: Literal["unit", "zscore", "none"] = Field(
        "unit", description="Input normalisation: unit = scale integer range to [0,1]; zscore = per volume."
    )
    val_z_range: Optional[list[int]] = Field(
        None, min_length=2, max_length=2, description="[z0, z1) of the first training volume held out for validation."
    )
    foreground_fraction: float = Field(0.5, ge=0, le=1, description="Share of patches that must contain labelled voxels.")
    targets: list[TargetConfig] = Field(
        default_factory=lambda: [TargetConfig(name="binary")], min_length=1,
        description="Label → target transforms; channels concatenate in order.",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Training augmentations.")

    @field_validator("patch_size")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(s < 1 for s in v):
            raise ValueError("patch sizes must be positive")  # the message adds ", got [...]"
        return v

    @model_validator(mode="after")
    def _val_image_with_label(self) -> "DataConfig":
        # One without the other would be ignored silently (no validation), so refuse it.
        for given, missing in (("val_image", "val_label"), ("val_label", "val_image")):
            if getattr(self, given) is not None and getattr(self, missing) is None:
                raise ValueError(f"{given} is set but {missing} is not; give both validation volumes, "
                                 f"or set data.{given}=null as well")
        return self


class OptimizerConfig(_Section):
    """Optimizer."""

    name: Literal["AdamW", "Adam", "SGD"] = Field("AdamW", description="Optimizer.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="Weight decay.")
    momentum: float = Field(0.9, ge=0, description="SGD momentum.")
    betas: list[float] = Field([0.9, 0.999], min_length=2, max_length=2, description="Adam/AdamW betas.")


class SchedulerConfig(_Section):
    """Learning-rate schedule (epochs are training.iters_per_epoch steps)."""

    name: Literal["CosineAnnealingLR", "constant", "StepLR", "ReduceLROnPlateau"] = Field(
        "CosineAnnealingLR", description="Schedule; MedNeXt recommends constant."
    )
    warmup_epochs: float = Field(0.0, ge=0, description="Linear warm-up from 0 to optimizer.lr.")
    min_lr: float = Field(1e-6, ge=0, description="Floor of the cosine schedule.")
    step_size: int = Field(30, ge=1, description="StepLR: epochs between decays.")
    gamma: float = Field(0.1, gt=0, description="StepLR / ReduceLROnPlateau decay factor.")
    patience: int = Field(10, ge=0, description="ReduceLROnPlateau: validations without improvement.")


def _int_as_str(v: Any) -> Any:
    return str(v) if isinstance(v, int) else v  # YAML reads `precision: 32` as an int


class TrainingConfig(_Section):
    """The training loop."""

    max_epochs: int = Field(100, ge=1, description="Epochs to train (ignored when max_steps is set).")
    max_steps: Optional[int] = Field(None, ge=1, description="Optimizer steps to train; overrides max_epochs.")
    iters_per_epoch: int = Field(100, ge=1, description="Optimizer steps per epoch (patches are sampled randomly).")
    precision: Precision = Field(
        Precision.fp32,
        description="32, 16-mixed (fp16 autocast on GPUs) or bf16-mixed. CPU training always runs 32 (bf16 conv "
                    "gradients there are unreliable); CPU inference honours bf16-mixed with native bf16 only.",
    )
    accumulate_grad_batches: int = Field(1, ge=1, description="Batches per optimizer step.")
    gradient_clip_val: Optional[float] = Field(None, gt=0, description="Clip the global gradient norm; null = off.")
    val_check_interval: int = Field(500, ge=1, description="Validate every this many optimizer steps.")
    ema_decay: Optional[float] = Field(None, gt=0, lt=1, description="Keep an EMA of weights (e.g. 0.999); null = off.")
    max_minutes: Optional[float] = Field(
        None, gt=0,
        description="Stop after this many wall-clock minutes (from the start of the run), saving a checkpoint "
                    "to resume from; e.g. a cluster job's time limit minus a margin. null = no limit.",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_str(cls, v: Any) -> Any:
        return _int_as_str(v)


class CheckpointConfig(_Section):
    """Checkpointing (written under system.output_dir/checkpoints)."""

    monitor: ValMetric = Field("val/loss", description="Metric that ranks checkpoints.")
    mode: Literal["min", "max"] = Field("min", description="Whether lower or higher monitor values are better.")
    save_top_k: int = Field(3, ge=0, description="Best checkpoints kept.")
    save_last: bool = Field(True, description="Always keep the latest checkpoint (for resuming).")
    every_n_steps: int = Field(500, ge=1, description="Save every this many optimizer steps.")


class EarlyStoppingConfig(_Section):
    """Stop when the monitored validation metric stops improving."""

    enabled: bool = Field(False, description="Turn early stopping on.")
    monitor: ValMetric = Field("val/loss", description="Metric to watch.")
    patience: int = Field(10, ge=1, description="Validations without improvement before stopping.")
    mode: Literal["min", "max"] = Field("min", description="Whether lower or higher is better.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as improvement.")


class LoggingConfig(_Section):
    """Console and file logging."""

    log_every_n_steps: int = Field(20, ge=1, description="Log training loss/lr every this many steps.")
    tensorboard: bool = Field(True, description="Also write TensorBoard event files when tensorboard is installed.")


class InferenceConfig(_Section):
    """Sliding-window prediction over whole volumes."""

    window_size: Optional[list[int]] = Field(None, description="Sliding window; null = data.patch_size.")
    overlap: float = Field(0.25, ge=0, lt=1, description="Fractional overlap between windows.")
    blending: Literal["gaussian", "constant"] = Field("gaussian", description="How overlapping windows are blended.")
    sw_batch_size: int = Field(4, ge=1, description="Windows per forward pass.")
    tta_flips: list[list[int]] = Field(
        [], description="Test-time flips, each a list of spatial axes (0=z, 1=y, 2=x); [] = off."
    )
    tta_rot90: list[int] = Field(
        [], description="Test-time in-plane (y, x) quarter turns, e.g. [1, 2, 3], each also with every flip; [] = off."
    )
    block_size: list[int] = Field(
        [128, 512, 512], min_length=2, max_length=3, description="Out-of-core block read per step (bounds memory)."
    )
    output_dtype: OutputDtype = Field(OutputDtype.uint8, description="float16, float32 or uint8 (probability x 255).")
    compression: Compression = Field(Compression.zstd, description="Compression of the written prediction.")
    # null, not a copy of training.precision: the dumped config keeps the user's choice, so editing
    # training.precision still reaches inference (pytc.config.inference_precision resolves it).
    precision: Optional[Precision] = Field(None, description="Precision of inference; default: training.precision")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_str(cls, v: Any) -> Any:
        return _int_as_str(v)


class DecodingConfig(_Section):
    """Prediction → instance segmentation."""

    method: DecodeMethod = Field(DecodeMethod.threshold, description="Decoder (see `pytc decode --help`).")
    threshold: float = Field(0.5, ge=0, le=1, description="threshold: foreground probability cut-off.")
    min_size: int = Field(100, ge=0, description="Remove instances smaller than this many voxels.")
    seed_threshold: float = Field(0.9, ge=0, le=1, description="bc-watershed: foreground needed for a seed.")
    contour_threshold: float = Field(0.3, ge=0, le=1, description="bc-watershed: seeds need contour below this.")
    foreground_threshold: float = Field(0.5, ge=0, le=1, description="bc-watershed: mask of the watershed.")
    min_seed_size: int = Field(
        0, ge=0, description="bc-watershed: drop seeds smaller than this many voxels (fewer spurious splits)."
    )
    merge_thresholds: list[float] = Field([0.5], min_length=1, description="affinity-waterz: agglomeration thresholds.")
    merge_function: str = Field(
        "mean",
        description="affinity-waterz: edge score, mean or quantile-N (N = 10, 15, ..., 95) of the boundary affinities.",
    )
    # 128×512×512 float32 is 128 MiB a channel: a few such arrays per block stay well under 2 GiB.
    block_size: list[int] = Field(
        [128, 512, 512], min_length=3, max_length=3,
        description="threshold, bc-watershed: volumes larger than this (z, y, x) are decoded block by block.",
    )
    # A flood rarely reaches further than an object's radius; 8 sections and 32 pixels cover
    # mitochondria and nuclei at the usual anisotropic EM resolutions, for 1.4x a block's voxels.
    halo: list[int] = Field(
        [8, 32, 32], min_length=3, max_length=3,
        description="bc-watershed: context (z, y, x) each block's watershed sees beyond its borders.",
    )

    @field_validator("block_size")
    @classmethod
    def _positive_block(cls, v: list[int]) -> list[int]:
        if any(s < 1 for s in v):
            raise ValueError("block sizes must be positive")
        return v

    @field_validator("merge_function")
    @classmethod
    def _known_merge_function(cls, v: str) -> str:
        if v not in MERGE_FUNCTIONS:
            raise ValueError("use mean or quantile-N with N = 10, 15, ..., 95 (the scores waterz ships compiled)")
        return v

    @field_validator("halo")
    @classmethod
    def _non_negative_halo(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v):
            raise ValueError("halo sizes must be 0 or more")
        return v


class EvaluationConfig(_Section):
    """Scoring against ground truth."""

    task: EvalTask = Field(EvalTask.semantic, description="semantic (IoU/Dice) or instance (ARAND/VOI/AP).")
    threshold: float = Field(0.5, ge=0, le=1, description="Threshold for probability predictions.")
    ignore_label: Optional[int] = Field(None, description="Ground-truth label excluded from scoring.")


class PytcConfig(_Section):
    """A complete pytc configuration."""

    system: SystemConfig = Field(default_factory=SystemConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _resolve_model_geometry(self) -> "PytcConfig":
        # The network is built for the training patch unless told otherwise; resolving here means a
        # builder only ever needs its own sub-config (and a checkpoint's config is self-contained).
        patch = self.data.patch_size
        if self.model.spatial_dims is None:
            self.model.spatial_dims = len(patch)
        if self.model.input_size is None:
            self.model.input_size = list(patch)
        if len(self.model.input_size) != self.model.spatial_dims:
            raise ValueError(
                f"model.input_size {self.model.input_size} does not match model.spatial_dims "
                f"{self.model.spatial_dims}; give {self.model.spatial_dims} sizes"
            )
        return self


# Walking the models (the reference and the error messages follow nested sections and lists of them).


def _as_model(ann: Any) -> type[BaseModel] | None:
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _list_item_model(ann: Any) -> type[BaseModel] | None:
    import typing

    if typing.get_origin(ann) is list:
        return _as_model(typing.get_args(ann)[0])
    return None
