"""Sets of choices shared by the config schema and the CLI (each defined exactly once)."""

from __future__ import annotations

from enum import Enum
from typing import Literal, get_args


class Compression(str, Enum):
    """Chunk compression for written volumes."""

    gzip = "gzip"
    zstd = "zstd"
    lz4 = "lz4"
    none = "none"


class Precision(str, Enum):
    """Numeric precision of training/inference (upstream Lightning spelling)."""

    fp32 = "32"
    fp16_mixed = "16-mixed"
    bf16_mixed = "bf16-mixed"


PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision)

# Label → target transforms (data.targets[].name), by what the network outputs for them.
TargetKind = Literal["binary", "contour", "affinity", "distance"]
BINARY_KINDS = frozenset({"binary", "contour", "affinity"})  # {0, 1} targets: logits, sigmoid for probabilities
REGRESSION_KINDS = frozenset(get_args(TargetKind)) - BINARY_KINDS  # real-valued targets (distance): raw outputs

# Validation metrics logged by training (metrics.jsonl, checkpoint meta.json): what checkpoint.monitor
# and early_stopping.monitor may name. A Literal, not an Enum: the names are dictionary keys.
ValMetric = Literal["val/loss", "val/iou", "val/dice"]
VAL_METRICS: tuple[str, ...] = get_args(ValMetric)


class OutputDtype(str, Enum):
    """Dtype of written predictions; uint8 stores probabilities quantised to 0..255."""

    float16 = "float16"
    float32 = "float32"
    uint8 = "uint8"


class DecodeMethod(str, Enum):
    """Prediction → instance decoders."""

    threshold = "threshold"
    bc_watershed = "bc-watershed"
    affinity_waterz = "affinity-waterz"
    mutex_watershed = "mutex-watershed"


class ChannelOrder(str, Enum):
    """Axis order of a prediction's affinity offsets: pytc's (dz, dy, dx), or (dx, dy, dz) as some
    upstream affinity predictions are stored (``pytc decode --channel-order``)."""

    zyx = "zyx"
    xyz = "xyz"


class EvalTask(str, Enum):
    """Kind of evaluation."""

    semantic = "semantic"
    instance = "instance"


class DemoTask(str, Enum):
    """What ``pytc demo`` segments (shared by :func:`pytc.demo.run_demo` and ``pytc demo --task``)."""

    mito = "mito"  # mitochondria: binary + contour → bc-watershed; IoU, Dice, AP, adapted Rand
    neuron = "neuron"  # cells: affinities → waterz; adapted Rand, VOI


# pytc demo's training budget, here beside DemoTask so that the CLI reads both without importing
# pytc.demo at start-up. Measured on 2 CPU cores (docs/demo.md): 2.5 minutes of training reach a
# foreground IoU near 0.9 and the whole demo stays under 5 minutes, with room for a slower CPU.
DEMO_MINUTES = 2.5


# waterz merge functions by the names DecodingConfig uses: the scores the waterz 0.10 wheel ships
# compiled (pytc.decode.WATERZ_SCORES maps each to its C++ type).
MERGE_QUANTILES = tuple(range(10, 100, 5))
MERGE_FUNCTIONS = ("mean", *(f"quantile-{q}" for q in MERGE_QUANTILES))
