"""Strict, validated configuration.

A config is YAML with one section per concern (system, model, data, optimizer, scheduler, training,
checkpoint, early_stopping, logging, inference, decoding, evaluation). Every section is a pydantic
model with ``extra="forbid"``: a misspelt key is an error with a did-you-mean suggestion, never
silently ignored. Each field has its default and a one-line description here, and only here; the
JSON Schema (``pytc config schema``) and the README reference are generated from it.

Loading (:func:`load_config`), lowest to highest precedence:
  1. the ``_base_`` chain (``_base_: other.yaml`` or a list; paths relative to the file),
  2. the file itself,
  3. environment variables ``PYTC_<SECTION>__<KEY>`` (e.g. ``PYTC_DATA__BATCH_SIZE=4``),
  4. dotted CLI overrides (``data.batch_size=8 model.filters=[16,32,64]``), parsed as YAML values.

Example:
    >>> from pytc.config import load_config
    >>> cfg = load_config("configs/lucchi.yaml", ["data.batch_size=4"])  # doctest: +SKIP
    >>> cfg.data.batch_size  # doctest: +SKIP
    4
"""

from __future__ import annotations

import difflib
import os
import re
import reprlib
import stat
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pytc.choices import MERGE_FUNCTIONS, Compression, DecodeMethod, EvalTask, OutputDtype, Precision, TargetKind, ValMetric
from pytc.errors import ConfigError

ENV_PREFIX = "PYTC_"
ENV_DELIMITER = "__"
BASE_KEY = "_base_"
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
    deep_supervision: bool = Field(False, description="Return multi-scale outputs (MedNeXt) and supervise each.")
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
        return str(v) if isinstance(v, int) else v  # YAML reads `precision: 32` as an int


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


# --------------------------------------------------------------------------------------------
# Loading


# Real configs are a few KiB, a handful of levels deep and hold hundreds of values. These caps keep a
# wrong file (a data volume, /dev/zero) or a hostile one (an alias bomb) to well under a second and a
# few MB of memory; libyaml composes ~2 bytes per node at ~5 µs, so 256 KiB is the worst case of ~0.7 s.
MAX_CONFIG_BYTES = 256 * 1024
MAX_CONFIG_VALUES = 50_000  # values after YAML aliases are expanded (counted without expanding them)
MAX_CONFIG_DEPTH = 32  # nesting levels; a config uses four or five
_QUOTE_CHARS = 80  # longest value quoted in an error message

# libyaml when present (same safe constructors, ~10x faster); pure Python otherwise.
_SafeBase = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STANDARD_TAG = "tag:yaml.org,2002:"
_PYTHON_TAG = _STANDARD_TAG + "python/"


class _Refused(Exception):
    """A YAML document pytc will not read; the message lacks only where it came from."""


class _ConfigLoader(_SafeBase):  # type: ignore[misc,valid-type]
    """The safe loader (plain YAML values only) with unknown and Python tags told apart."""

    def construct_undefined(self, node):  # noqa: D102 - called for every tag without a constructor
        tag, line = node.tag, node.start_mark.line + 1
        if tag.startswith(_STANDARD_TAG):
            tag = "!!" + tag[len(_STANDARD_TAG):]
        if node.tag.startswith(_PYTHON_TAG):
            raise _Refused(f"Python object tags are not allowed in configs ({_short(tag, quote=False)} on line "
                           f"{line}); use plain YAML values")
        raise _Refused(f"unknown YAML tag {_short(tag)} on line {line}; configs take plain YAML values, "
                       "remove the tag")


_ConfigLoader.add_constructor(None, _ConfigLoader.construct_undefined)


def _check_nodes(root: yaml.Node) -> None:
    """Refuse duplicate keys, deep nesting, recursive aliases and alias expansion past the caps.

    Works on the composed node graph, where an alias is a second reference to the same node: sizes
    are summed per node once (memoised), so a "billion laughs" document is measured, never expanded.
    """
    sizes: dict[int, int] = {}  # id(node) -> values once expanded
    ancestors: set[int] = set()
    shared = False  # reached a node twice: aliases are in play
    stack: list[tuple[yaml.Node, int, str, bool]] = [(root, 0, "", False)]
    while stack:
        node, depth, where, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            ancestors.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_CONFIG_VALUES:
                how = "YAML aliases expand it to" if shared else "it holds"
                raise _Refused(f"{how} more than {MAX_CONFIG_VALUES:,} values (line {node.start_mark.line + 1}); "
                               "a config needs far fewer, write the values out")
            continue
        if key in sizes:
            shared = True
            continue
        if key in ancestors:
            raise _Refused(f"a YAML alias refers to itself (line {node.start_mark.line + 1}); remove the alias")
        if depth > MAX_CONFIG_DEPTH:
            raise _Refused(f"nested more than {MAX_CONFIG_DEPTH} levels deep (line {node.start_mark.line + 1})")
        ancestors.add(key)
        stack.append((node, depth, where, True))
        if isinstance(node, yaml.MappingNode):
            _check_duplicates(node, where)
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else "?"
                stack += [(v, depth + 1, f"{where}.{name}" if where else name, False), (k, depth + 1, where, False)]
        else:
            stack += [(c, depth + 1, where, False) for c in reversed(children)]


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def _check_duplicates(node: yaml.MappingNode, where: str) -> None:
    # `<<: *base` merges are YAML's way to share settings: keys next to a merge override it, legitimately.
    first: dict[tuple[str, str], int] = {}
    for k, _ in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.tag == _MERGE_TAG:
            continue
        line = k.start_mark.line + 1
        if (k.tag, k.value) in first:
            inside = f" in {where}" if where else ""
            raise _Refused(f"duplicate key {_short(k.value)}{inside} at line {line} (first at line "
                           f"{first[k.tag, k.value]}); keep one of them")
        first[k.tag, k.value] = line


def parse_yaml(text: str, source: str) -> Any:
    """Parse one YAML document of plain values, refusing what a config must never be.

    Safe constructors only (no Python objects), duplicate keys, unknown tags, recursive aliases and
    documents past :data:`MAX_CONFIG_VALUES` values or :data:`MAX_CONFIG_DEPTH` levels are refused.

    Args:
        text: the YAML text.
        source: where it came from (a file name, ``override '...'``), to start error messages.

    Returns:
        The parsed value (``None`` for an empty document).

    Raises:
        ConfigError: one line naming ``source`` and the line of the problem.
    """
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        return loader.construct_document(node)
    except _Refused as err:
        raise ConfigError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}:{where} invalid YAML ({_short(problem, quote=False)}); fix the syntax") from None
    except RecursionError:  # the pure-Python parser recurses per nesting level
        raise ConfigError(f"{source}: nested more than {MAX_CONFIG_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def _read_text(path: Path) -> str:
    """Read a config file: a regular file (never a FIFO or device), at most MAX_CONFIG_BYTES, UTF-8."""
    try:
        # stat, not open: opening a FIFO blocks until a writer appears, and /dev/zero never ends.
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; check the path") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path} ({err.strerror}); fix the path") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is a directory; give a YAML config file")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path} is {_file_kind(st.st_mode)}, not a regular file; give a YAML config file")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {st.st_size / 2**20:.1f} MiB; a config file must be under "
                          f"{MAX_CONFIG_BYTES // 1024} KiB — is it the right file?")
    try:
        # O_NONBLOCK: should the file have been swapped for a FIFO since the stat, opening still returns.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise ConfigError(f"cannot read config file {path} ({err.strerror}); fix the path") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ConfigError(f"{path} is not a regular file; give a YAML config file")
        raw = f.read(MAX_CONFIG_BYTES + 1)  # bounded even if the file grows meanwhile
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is over {MAX_CONFIG_BYTES // 1024} KiB; a config file must be smaller")
    if b"\0" in raw:
        line = raw[: raw.index(b"\0")].count(b"\n") + 1
        raise ConfigError(f"{path} holds binary data (a NUL byte on line {line}), not UTF-8 YAML text; "
                          "give a YAML config file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); "
                          "save it as UTF-8") from None


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def read_yaml(path: Path) -> dict:
    """Read a config file (or a checkpoint's ``config.yaml``) into a dict of sections.

    Raises:
        ConfigError: unreadable, not a regular file, too large, not UTF-8, invalid or refused YAML
            (see :func:`parse_yaml`), or not a mapping.
    """
    data = parse_yaml(_read_text(path), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


_read_yaml = read_yaml  # the name other modules have imported


def deep_merge(base: dict, over: dict) -> dict:
    """Return ``base`` updated recursively with ``over`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def config_files(path: str | os.PathLike) -> list[Path]:
    """The config file and every file of its ``_base_`` chain, resolved (the files a run reads:
    nothing may be written over them). Unreadable links in the chain are left out here; loading
    the config reports them."""
    files: list[Path] = []

    def walk(file: Path) -> None:
        try:
            data = read_yaml(file)
            file = file.resolve()
        except (ConfigError, OSError, RuntimeError):
            return
        if file in files:
            return
        files.append(file)
        bases = data.get(BASE_KEY)
        for base in [bases] if isinstance(bases, str) else bases if isinstance(bases, list) else []:
            if isinstance(base, str):
                walk(file.parent / base)

    walk(Path(os.fspath(path)))
    return files


def _load_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    data = read_yaml(path)  # first: a missing file, a symlink loop or a FIFO is refused before resolving
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise ConfigError(f"_base_ cycle: {cycle}; remove one of the _base_ references")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names")
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, _load_with_bases(path.parent / base, (*chain, path)))
    return deep_merge(merged, data)


def parse_overrides(overrides: list[str] | None) -> dict:
    """Turn ``["data.batch_size=8", "model.filters=[16,32]"]`` into a nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {_short(item)} must look like section.key=value, e.g. data.batch_size=8")
        if "[" in key:
            raise ConfigError(f"override {_short(item)}: list items cannot be set one by one; give the whole list, "
                              "e.g. data.targets='[{name: binary}, {name: contour}]'")
        value = parse_yaml(raw, f"override {_short(item)}") if raw.strip() else None
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {_short(item)} conflicts with {'.'.join(parts[: i + 1])}={_short(nxt)}")
            node = nxt
        node[parts[-1]] = value
    return out


def env_overrides() -> dict:
    """Overrides from ``PYTC_SECTION__KEY`` environment variables (via pydantic-settings)."""
    from pydantic_settings import EnvSettingsSource

    source = EnvSettingsSource(
        PytcConfig, env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER, case_sensitive=False
    )
    return source()


def config_from_dict(data: dict, origin: str = "config", sources: dict[str, str] | None = None) -> PytcConfig:
    """Validate a nested dict into a :class:`PytcConfig`, turning errors into one-line ConfigErrors.

    ``sources`` maps dotted keys to where their values came from (a command-line override, an
    environment variable); errors under those keys name that instead of ``origin``.
    """
    try:
        return PytcConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin, sources or {})) from None


def _leaves(data: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        out += _leaves(v, key + ".") if isinstance(v, dict) and v else [key]
    return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> PytcConfig:
    """Load a config file with its ``_base_`` chain, env overrides and dotted CLI overrides.

    Args:
        path: YAML file; ``None`` starts from the defaults.
        overrides: ``section.key=value`` strings, values parsed as YAML (``model.filters=[16,32]``).

    Returns:
        The validated config.

    Raises:
        ConfigError: unreadable file, ``_base_`` cycle, unknown key (with a did-you-mean), wrong type.
    """
    data = _load_with_bases(Path(path)) if path is not None else {}
    env, cli = env_overrides(), parse_overrides(overrides)
    sources = {k: f"environment variable {ENV_PREFIX}{k.replace('.', ENV_DELIMITER).upper()}" for k in _leaves(env)}
    given = {item.partition("=")[0].strip(): item for item in overrides or []}
    sources.update({k: f"override {_short(given.get(k, k))}" for k in _leaves(cli)})
    data = deep_merge(deep_merge(data, env), cli)
    return config_from_dict(data, origin=str(path) if path is not None else "config", sources=sources)


DEFAULT_RUN_ROOT = "runs"
UNNAMED_RUN = "pytc"  # the run folder's name for a config built in code (no file to name it after)


def default_run_dir(cfg: PytcConfig, config_path: str | os.PathLike | None = None) -> Path:
    """The run directory when none is given: ``system.output_dir``, else ``runs/<config file name>``.

    A config built in code (``config_path`` None) runs in ``runs/pytc``.

    Example:
        >>> default_run_dir(load_config(None), "configs/lucchi.yaml").as_posix()
        'runs/lucchi'
    """
    if cfg.system.output_dir:
        return Path(cfg.system.output_dir)
    name = Path(config_path).stem if config_path is not None else UNNAMED_RUN
    return Path(DEFAULT_RUN_ROOT) / name


def dump_config(cfg: PytcConfig) -> str:
    """The resolved config as YAML; loading it again gives an equal config.

    ``model.spatial_dims`` / ``model.input_size`` that merely follow ``data.patch_size`` are written
    as null, so an edited patch size in the dumped file still reaches the network.
    """
    data = cfg.model_dump(mode="json")
    patch, model = data["data"]["patch_size"], data["model"]
    if model["input_size"] == patch:
        model["input_size"] = None
    if model["spatial_dims"] == len(patch):
        model["spatial_dims"] = None
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def config_schema() -> dict:
    """JSON Schema of the config (for editor autocompletion and the README reference)."""
    return PytcConfig.model_json_schema()


def iter_fields(model: type[BaseModel] = PytcConfig, prefix: str = ""):
    """Yield ``(dotted_key, default, description)`` for every leaf config key (JSON-able defaults)."""
    from pydantic_core import to_jsonable_python

    for name, field in model.model_fields.items():
        sub, item = _as_model(field.annotation), _list_item_model(field.annotation)
        if sub is not None:
            yield from iter_fields(sub, f"{prefix}{name}.")
            continue
        default = None if field.is_required() else to_jsonable_python(field.get_default(call_default_factory=True))
        yield f"{prefix}{name}", default, field.description or ""
        if item is not None:
            yield from iter_fields(item, f"{prefix}{name}[].")


# --------------------------------------------------------------------------------------------
# Error messages


def _as_model(ann: Any) -> type[BaseModel] | None:
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _list_item_model(ann: Any) -> type[BaseModel] | None:
    import typing

    if typing.get_origin(ann) is list:
        return _as_model(typing.get_args(ann)[0])
    return None


def _submodel(model: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, list[str]]:
    """Walk ``loc`` through nested models; return the model reached (None past a leaf) and the key parts."""
    parts: list[str] = []
    current: type[BaseModel] | None = model
    item: type[BaseModel] | None = None  # model of list items, when the last key was a list of models
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
            current, item = item, None
        elif current is not None and part in current.model_fields:
            parts.append(part)
            ann = current.model_fields[part].annotation
            current, item = _as_model(ann), _list_item_model(ann)
        else:
            parts.append(str(part))
            current = item = None
    return current, parts


def _dotted(parts: list[str]) -> str:
    return ".".join(parts).replace(".[", "[")


def _format_validation_error(err: ValidationError, origin: str, sources: dict[str, str] | None = None) -> str:
    messages: list[tuple[str, str]] = []  # (where the value came from, message)
    seen: set[str] = set()
    for e in err.errors():
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            parent, parts = _submodel(PytcConfig, loc[:-1])
            key = _dotted([*parts, str(loc[-1])])
            hint = ""
            if parent is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), n=1, cutoff=0.6)
                if close:
                    hint = f" — did you mean {_dotted([*parts, close[0]])}?"
                else:
                    hint = f" (valid keys: {', '.join(parent.model_fields)})"
            msg = f"{key}: unknown key{hint}"
        else:
            # Union members add a type tag to loc (e.g. 'list[str]'): report the field once, with its type.
            tagged = next((i for i, p in enumerate(loc) if _is_type_tag(p)), None)
            _, parts = _submodel(PytcConfig, loc if tagged is None else loc[:tagged])
            key = _dotted(parts) or "config"
            if key in seen:
                continue
            given = e.get("input")
            if tagged is not None:
                text = f"expected {_type_name(_annotation_at(loc[:tagged]))}"
            else:
                text = e["msg"].removeprefix("Value error, ")
            msg = f"{key}: {text}" + ("" if e["type"] == "missing" or isinstance(given, dict) else f", got {_short(given)}")
            msg += _did_you_mean(e, loc) if tagged is None else ""
        seen.add(key)
        messages.append((_source_of(key, sources or {}, origin), msg))
    more = f"; and {len(messages) - _MAX_MESSAGES} more" if len(messages) > _MAX_MESSAGES else ""
    messages = messages[:_MAX_MESSAGES]
    if len({where for where, _ in messages}) == 1:
        return f"{messages[0][0]}: " + "; ".join(msg for _, msg in messages) + more
    return "; ".join(f"{where}: {msg}" for where, msg in messages) + more


_MAX_MESSAGES = 5  # a list of 10,000 bad values is one line, not 10,000 messages
_QUOTE = reprlib.Repr()  # bounded repr: a huge value is never rendered in full, only its start
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxdict, _QUOTE.maxtuple = 2, 8, 4, 8
_QUOTE.maxstring = _QUOTE.maxother = _QUOTE.maxlong = 2 * _QUOTE_CHARS


def _short(value: Any, quote: bool = True) -> str:
    """``repr(value)`` (or ``str`` when not ``quote``) cut to about 80 characters with "…"."""
    text = _QUOTE.repr(value) if quote else str(value)[: 2 * _QUOTE_CHARS]
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 1] + "…"


def _source_of(key: str, sources: dict[str, str], origin: str) -> str:
    """Where the value at dotted ``key`` (``data.targets[0]`` style) came from."""
    plain = re.sub(r"\[\d+\]", "", key)
    for k in sorted(sources, key=len, reverse=True):
        if plain == k or plain.startswith(k + "."):  # a section-wide check is not blamed on one key's source
            return sources[k]
    if _submodel(PytcConfig, tuple(plain.split(".")))[0] is None:
        # Not a section: a value (or an unknown key) that an override reached *below*, e.g.
        # `data.batch_size.foo=1` turns data.batch_size into a mapping — that override is to blame.
        below = [k for k in sources if k.startswith(plain + ".")]
        if below:
            return sources[min(below)]
    return origin


def _did_you_mean(error: dict, loc: tuple) -> str:
    """`` — did you mean 'x'?`` when a choice field (Literal or Enum) got a near miss, else ``""``."""
    import enum
    import typing

    given = error.get("input")
    if error["type"] not in ("literal_error", "enum") or not isinstance(given, str):
        return ""
    ann = _annotation_at(loc)
    if typing.get_origin(ann) is Literal:
        choices = [str(a) for a in typing.get_args(ann)]
    elif isinstance(ann, type) and issubclass(ann, enum.Enum):
        choices = [str(m.value) for m in ann]
    else:
        return ""
    close = difflib.get_close_matches(given, choices, n=1, cutoff=0.6)
    return f" — did you mean {close[0]!r}?" if close else ""


def _is_type_tag(part: Any) -> bool:
    return isinstance(part, str) and (
        "[" in part or part in {"str", "int", "float", "bool", "none", "literal", "function-after", "list"}
        or part.startswith("literal[")
    )


def _annotation_at(loc: tuple) -> Any:
    model: Any = PytcConfig
    ann: Any = None
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        model = ann
    return ann


def _type_name(ann: Any) -> str:
    import typing

    if ann is None or ann is type(None):
        return "null"
    args = typing.get_args(ann)
    if typing.get_origin(ann) is Union:
        return " | ".join(_type_name(a) for a in args)
    if typing.get_origin(ann) is Literal:
        return " | ".join(repr(a) for a in args)
    if args:
        return f"{typing.get_origin(ann).__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(ann, "__name__", str(ann))


def reference_markdown() -> str:
    """Markdown table of every config key with its default and meaning (for the README)."""
    import json

    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, desc in iter_fields():
        shown = json.dumps(default) if default is not None else "null"
        rows.append(f"| `{key}` | `{shown}` | {desc} |")
    return "\n".join(rows) + "\n"
