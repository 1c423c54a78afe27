"""The demo: the whole pipeline on built-in synthetic EM, on a laptop CPU, in a few minutes.

:func:`run_demo` is what ``pytc demo`` runs; every step is the library function the matching
command calls, so the demo exercises exactly what a user runs on their own data:

1. **data** — :func:`pytc.synth.make_em_volume` makes a train and a separate test volume (other
   seeds); :func:`write_synth` stores each as ``OUT/data/{train,test}.h5`` (datasets ``image``,
   ``mito_mask``, ``mito_instances``, ``cell_instances``).
2. **train** — ``configs/demo.yaml`` (plus the task's overrides) through :func:`pytc.engine.fit`
   into ``OUT/run/``, for a wall-clock budget (see :func:`fit_for`).
3. **infer** — :func:`pytc.inference.infer`: the test image → ``OUT/prediction.zarr``.
4. **decode** — :func:`pytc.decode.decode_volume`: ``bc-watershed`` (mito) or ``affinity-waterz``
   (neuron) → ``OUT/segmentation.zarr``.
5. **evaluate** — :func:`pytc.metrics.evaluate_volumes` → ``OUT/metrics.json``: foreground IoU/Dice
   (mito) and instance metrics (adapted Rand, VOI, AP).
6. **figure** — ``OUT/figure.png``: the middle test section as image | ground truth | prediction |
   instances.

Nothing here prints: progress goes to the ``report`` callback (``pytc demo`` passes a rich
console's ``print``) and the results come back as a :class:`DemoResult` for the command to render.
Heavy imports (torch, monai) happen inside the functions.

Example:
    >>> from pytc.demo import run_demo
    >>> result = run_demo("demo_out", minutes=2)  # doctest: +SKIP
    >>> round(result.metrics["iou"], 2)  # doctest: +SKIP
    0.9
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from pytc.errors import ConfigError, OutputExistsError

if TYPE_CHECKING:
    import numpy as np

    from pytc.config import PytcConfig

Report = Callable[[str], None]


class DemoTask(str, Enum):
    """What the demo segments (shared by :func:`run_demo` and ``pytc demo --task``)."""

    mito = "mito"  # mitochondria: binary + contour → bc-watershed; IoU, Dice, AP, adapted Rand
    neuron = "neuron"  # cells: affinities → waterz; adapted Rand, VOI


# Default sizes, measured on 2 CPU cores (docs/demo.md): a 2.5-minute training budget reaches a
# foreground IoU near 0.9 and the whole demo stays under 5 minutes, with room for a slower CPU.
DEFAULT_MINUTES = 2.5
MAX_DEMO_STEPS = 100_000  # a step cap the time budget always reaches first
TRAIN_SHAPE = (64, 192, 192)  # 2.4M voxels, 94 mitochondria: plenty for 32×64×64 patches
TEST_SHAPE = (48, 160, 160)  # ~50 mitochondria to score; predicted in a few seconds
TRAIN_SEED, TEST_SEED = 1, 2  # different seeds: the test volume is never seen in training
SYNTH_KEYS = ("image", "mito_mask", "mito_instances", "cell_instances")

# Each task: the label the network learns and the config overrides that differ from demo.yaml
# (which is the mito task). The neuron task learns affinities on the cell instances; the long-range
# offsets are extra supervision only (waterz reads the three short-range ones).
_NEURON_OFFSETS = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 4, 0], [0, 0, 4], [4, 0, 0]]
_TASKS: dict[str, tuple[str, list[str]]] = {
    DemoTask.mito.value: ("mito_instances", []),
    DemoTask.neuron.value: (
        "cell_instances",
        [
            f"data.targets=[{{name: affinity, offsets: {_NEURON_OFFSETS}}}]",
            f"model.out_channels={len(_NEURON_OFFSETS)}",
            "decoding.method=affinity-waterz",
            "decoding.merge_thresholds=[0.5]",
            "decoding.min_size=50",
            "evaluation.task=instance",
        ],
    ),
}

# Everything the demo writes directly under OUT; --force removes these and nothing else.
_OUTPUTS = ("data", "run", "prediction.zarr", "segmentation.zarr", "metrics.json", "figure.png")


@dataclass
class DemoResult:
    """What :func:`run_demo` did and measured.

    Attributes:
        task: ``"mito"`` or ``"neuron"``.
        metrics: The headline numbers (``iou``, ``dice``, ``ap_50``, ``adapted_rand``, ``voi``, ...).
        paths: What was written, in pipeline order (``run``, ``checkpoint``, ``prediction``, ...).
        training: ``steps``, ``seconds``, ``steps_per_s``, ``device``, ``threads``.
        timings: Wall-clock seconds of each stage and ``total``.
        next_steps: ``(command, what it does)`` pairs to try on one's own data.
    """

    task: str
    metrics: dict
    paths: dict
    training: dict
    timings: dict
    next_steps: list = field(default_factory=list)


def demo_config_path() -> Path:
    """``demo.yaml`` of the shipped configs (installed as package data ``pytc.configs``).

    Raises:
        ConfigError: the shipped configs are missing from this installation.
    """
    from importlib.resources import files

    try:
        path = Path(str(files("pytc.configs") / "demo.yaml"))
    except ModuleNotFoundError:
        path = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
    if not path.is_file():
        raise ConfigError(f"the demo config {path} is missing; reinstall pytc (pip install -e .)")
    return path


def write_synth(path: str | os.PathLike, shape: Sequence[int] = (64, 256, 256), seed: int = 0,
                anisotropy: float = 1.0, force: bool = False) -> dict:
    """Generate a synthetic EM volume (:func:`pytc.synth.make_em_volume`) and write it as HDF5 or Zarr.

    Args:
        path: The ``.h5`` file or ``.zarr`` store to write; datasets ``image`` (uint8), ``mito_mask``
            (uint8 0/1), ``mito_instances`` and ``cell_instances`` (uint32 ids, 0 = background /
            membrane), each with its ``voxel_size`` attribute.
        shape: (Z, Y, X) voxels, each at least 1.
        seed: Random seed (0 or more); the same seed gives the same volume.
        anisotropy: z voxel size relative to y/x (0.1 to 10).
        force: Replace an existing file or store (once the new one is complete: the volume is
            written in a temporary folder beside ``path`` and renamed into place).

    Returns:
        ``{"path", "shape", "seed", "voxel_size", "datasets", "volumes", "mitochondria", "cells",
        "seconds"}``; ``volumes`` holds the address of each dataset (``out.h5:image``,
        ``out.zarr/image``).

    Raises:
        ConfigError: ``path`` is not ``.h5``/``.zarr``, or an option is out of range.
        OutputExistsError: ``path`` exists and ``force`` is False.
    """
    import numpy as np

    from pytc.io.common import TMP_TAG, clean_stale, remove_path, swap_in
    from pytc.io import check_writable, create_volume, disk_errors
    from pytc.locks import exclusive, lock_path_for
    from pytc.synth import check_options, make_em_volume

    start = time.perf_counter()
    path = Path(path)
    _synth_address(path)  # a .h5 or .zarr path
    shape = check_options(tuple(shape), seed, anisotropy)  # before anything on disk is touched
    if (path.exists() or path.is_symlink()) and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it")
    check_writable(path)
    with contextlib.ExitStack() as held:
        with disk_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(exclusive(lock_path_for(path), f"output {path}"))  # a second writer is refused
        if path.exists() and not force:  # made while this process waited for nothing: still not ours
            raise OutputExistsError(f"{path} exists; pass --force to overwrite it")
        vol = make_em_volume(shape, seed=seed, anisotropy=anisotropy)
        # The whole file is written in a temporary folder beside it and renamed over the old one only
        # when complete: a killed run leaves the old file (or none), never a half-written one.
        clean_stale(path)  # the temporary folder of a killed run
        tmp = path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")
        remove_path(tmp)
        staged = tmp / path.name
        try:
            with disk_errors(path):
                tmp.mkdir()
            for key in SYNTH_KEYS:
                data = getattr(vol, key)
                with create_volume(_synth_address(staged)(key), data.shape, data.dtype, voxel_size=vol.voxel_size,
                                   lock=False) as out:
                    out[...] = data
            with disk_errors(path):
                swap_in(staged, path)
        finally:
            remove_path(tmp)
    address = _synth_address(path)
    return {
        "path": str(path), "shape": list(vol.image.shape), "seed": seed, "voxel_size": list(vol.voxel_size),
        "datasets": list(SYNTH_KEYS), "volumes": [address(key) for key in SYNTH_KEYS],
        "mitochondria": int(vol.mito_instances.max()),
        "cells": int(np.count_nonzero(np.unique(vol.cell_instances))),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _synth_address(path: Path) -> Callable[[str], str]:
    """How a dataset of the synthetic file ``path`` is addressed: ``file.h5:key`` or ``store.zarr/key``."""
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".hdf"):
        return lambda key: f"{path}:{key}"
    if suffix == ".zarr":
        return lambda key: f"{path}/{key}"
    raise ConfigError(f"cannot write {path}: synth writes an HDF5 file (.h5) or a Zarr store (.zarr), "
                      "e.g. my_synth.h5")


def run_demo(out: str | os.PathLike = "demo_out", task: DemoTask | str = DemoTask.mito,
             minutes: float = DEFAULT_MINUTES, steps: Optional[int] = None, force: bool = False,
             train_shape: Sequence[int] = TRAIN_SHAPE, test_shape: Sequence[int] = TEST_SHAPE,
             overrides: Optional[list[str]] = None, config: Optional[str | os.PathLike] = None,
             report: Optional[Report] = None) -> DemoResult:
    """Generate data, train, predict, decode, evaluate and draw a figure (see the module docs).

    Args:
        out: Output folder; it must be empty or absent unless ``force``.
        task: ``mito`` (binary + contour → bc-watershed) or ``neuron`` (affinities → waterz).
        minutes: Training budget in wall-clock minutes (the whole demo takes ~15 s more on 2 cores).
        steps: Train exactly this many steps instead of for ``minutes`` (reproducible runs, tests).
        force: Replace the demo's outputs in a non-empty ``out`` (other files there are kept).
        train_shape, test_shape: (Z, Y, X) of the synthetic volumes.
        overrides: Dotted config overrides applied last (``data.patch_size=[16,32,32]``).
        config: The config to start from (default ``configs/demo.yaml``).
        report: Called with one line per stage (e.g. ``rich.console.Console().print``).

    Returns:
        A :class:`DemoResult`.

    Raises:
        OutputExistsError: ``out`` is not empty and ``force`` is False.
        ConfigError: a bad override, or no demo config.
    """
    import math

    from pytc.config import load_config

    if steps is None and not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"--minutes must be a positive number of minutes, got {minutes}")
    if "torch" not in sys.modules:
        # Idle OpenMP threads sleep instead of spinning (libgomp reads this once, when torch loads):
        # on cores shared with other jobs, spinning threads made each step ~3x slower (measured).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    say = report or (lambda _line: None)
    task = DemoTask(getattr(task, "value", task))
    label_key, task_overrides = _TASKS[task.value]
    out = Path(out)
    _prepare_out(out, force)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    # 1. data
    say(f"Generating synthetic EM: train {_shape(train_shape)} (seed {TRAIN_SEED}), "
        f"test {_shape(test_shape)} (seed {TEST_SEED})")
    train_h5, test_h5 = out / "data" / "train.h5", out / "data" / "test.h5"
    write_synth(train_h5, train_shape, TRAIN_SEED)
    write_synth(test_h5, test_shape, TEST_SEED)
    timings["data"] = _lap(start, timings)

    # 2. train
    run_dir = out / "run"
    cfg = load_config(config if config is not None else demo_config_path(), [
        *task_overrides,
        f"data.train_image={train_h5}:image", f"data.train_label={train_h5}:{label_key}",
        "data.val_image=null", "data.val_label=null", f"system.output_dir={run_dir}",
        *(overrides or []),
    ])
    threads, timing = pick_threads(cfg, _cores())
    if timing:
        say("CPU threads: " + ", ".join(f"{n} → {1 / t:.1f} training passes/s" for n, t in timing.items())
            + f"; using {threads}")
    cfg.system.num_cpus = threads
    training = fit_for(cfg, run_dir, seconds=minutes * 60, steps=steps, report=say)
    timings["train"] = _lap(start, timings)

    # 3. infer → 4. decode → 5. evaluate: the library behind pytc infer / decode / evaluate
    from pytc.decode import decode_volume
    from pytc.inference import infer
    from pytc.metrics import evaluate_volumes, write_report

    ckpt = training["checkpoint"]
    pred, seg = out / "prediction.zarr", out / "segmentation.zarr"
    say(f"Predicting the test volume → {pred}")
    infer(ckpt, f"{test_h5}:image", pred, [f"system.num_cpus={training['threads']}"], force=True,
          progress=report is not None)
    timings["infer"] = _lap(start, timings)
    say(f"Decoding instances ({cfg.decoding.method}) → {seg}")
    decoded = decode_volume(pred, seg, force=True, progress=False)
    timings["decode"] = _lap(start, timings)
    say("Scoring against the test ground truth")
    gt = f"{test_h5}:{label_key}"
    reports = {}
    if task is DemoTask.mito:
        reports["semantic"] = evaluate_volumes(pred, gt, task="semantic", progress=False)
    reports["instance"] = evaluate_volumes(seg, gt, task="instance", progress=False)
    timings["evaluate"] = _lap(start, timings)

    # 6. figure
    figure = out / "figure.png"
    write_figure(figure, test_h5, label_key, pred, seg)
    timings["figure"] = _lap(start, timings)
    timings = {k: round(v, 1) for k, v in timings.items()}
    timings["total"] = round(time.perf_counter() - start, 1)

    metrics = {**reports.get("semantic", {}).get("metrics", {}), **reports["instance"]["metrics"]}
    metrics.pop("ap_by_iou", None)
    metrics["instances"] = decoded["outputs"][0]["instances"]
    metrics_json = out / "metrics.json"
    write_report({"task": task.value, **reports, "training": training, "timings": timings}, metrics_json, force=True)
    paths = {
        "run": str(run_dir), "checkpoint": str(ckpt), "train data": str(train_h5), "test data": str(test_h5),
        "prediction": str(pred), "segmentation": str(seg), "metrics": str(metrics_json), "figure": str(figure),
    }
    return DemoResult(task.value, metrics, paths, training, timings, next_steps(task))


def fit_for(cfg: "PytcConfig", run_dir: str | os.PathLike, seconds: float, steps: Optional[int] = None,
            report: Optional[Report] = None) -> dict:
    """Train for a wall-clock budget: one :func:`pytc.engine.fit` with ``training.max_minutes``.

    The budget counts from the start of ``fit`` (building the model and loading data included);
    the run stops after the step that crosses it and saves its checkpoint. The learning rate must
    not depend on the total number of steps (demo.yaml: constant LR with a weight EMA), since the
    number of steps the budget buys is known only at the end.

    Args:
        cfg: The config.
        run_dir: The run directory.
        seconds: The budget.
        steps: Train exactly this many steps instead (reproducible runs, tests).
        report: Called with a line before training.

    Returns:
        ``{"steps", "seconds", "steps_per_s", "device", "threads", "checkpoint"}``.
    """
    from pytc.engine import fit

    start = time.perf_counter()
    say = report or (lambda _line: None)
    run_dir = Path(run_dir)
    cfg = _single_checkpoint(cfg, steps if steps is not None else MAX_DEMO_STEPS)
    if steps is not None:
        say(f"Training {steps} steps → {run_dir}")
    else:
        say(f"Training for {seconds / 60:g} min → {run_dir}")
        cfg.training.max_minutes = seconds / 60
    summary = fit(cfg, run_dir=run_dir)
    took = time.perf_counter() - start
    return {
        "steps": summary["step"], "seconds": round(took, 1), "steps_per_s": round(summary["step"] / took, 2),
        "device": str(next(summary["model"].parameters()).device), "threads": cfg.system.num_cpus,
        "checkpoint": summary["last_checkpoint"],
    }


def pick_threads(cfg: "PytcConfig", max_threads: int, seconds: float = 1.0) -> tuple[int, dict[int, float]]:
    """The faster of 1 and ``max_threads`` torch threads for training ``cfg``'s model on the CPU.

    Times forward + backward passes of a training batch (after a warm-up pass) for about
    ``seconds`` each. On an idle machine all cores win (demo.yaml on 2 cores: 16.9 steps/s with 2
    threads, ~12 with one); on one where other jobs keep the cores busy, threads that wait for each
    other at every layer can be several times slower than one thread (7x measured on 2 shared
    cores with libgomp's default spinning, 1.3x with OMP_WAIT_POLICY=PASSIVE), and one thread wins. More threads must
    be at least 20 % faster to be chosen: one thread degrades gracefully if the load changes later.

    Returns:
        ``(threads, {threads: seconds per pass})``; ``(max_threads, {})`` on a GPU or a 1-core CPU.
    """
    import torch

    from pytc.models import build_model
    from pytc.runtime import use_cpu

    if max_threads <= 1 or not use_cpu(cfg.system.num_gpus):
        return max(1, max_threads), {}
    before = torch.get_num_threads()
    model = build_model(cfg.model)
    batch = torch.rand(cfg.data.batch_size, cfg.model.in_channels, *cfg.data.patch_size)
    timing = {}
    try:
        for n in (max_threads, 1):
            torch.set_num_threads(n)
            model(batch).float().mean().backward()  # warm-up: first-pass allocations
            tick, passes = time.perf_counter(), 0
            while passes < 2 or (time.perf_counter() - tick < seconds and passes < 20):
                model(batch).float().mean().backward()
                passes += 1
            timing[n] = (time.perf_counter() - tick) / passes
    finally:
        torch.set_num_threads(before)
    return (max_threads if timing[max_threads] * 1.2 < timing[1] else 1), timing


def next_steps(task: DemoTask | str = DemoTask.mito) -> list[tuple[str, str]]:
    """Commands to try next on one's own data, as ``(command, what it does)`` pairs."""
    task = DemoTask(getattr(task, "value", task))
    config, method, metric = (
        ("configs/mitoem_bc.yaml", "bc-watershed", "instance")
        if task is DemoTask.mito else ("configs/snemi_affinity.yaml", "affinity-waterz", "instance")
    )
    return [
        ("pytc demo synth my_synth.h5 --shape 64 256 256", "write a synthetic volume to look at (e.g. in napari)"),
        ("pytc info my_image.h5", "check the shape, dtype and voxel size of your volume"),
        (f"pytc train {config} data.train_image=my_image.h5:main data.train_label=my_labels.h5:main "
         "--run-dir runs/mine", "train on your own volume (any key can be overridden like this)"),
        ("pytc infer --ckpt runs/mine --input my_test.h5:main --output pred.zarr",
         "predict a volume of any size (resumes if interrupted)"),
        (f"pytc decode pred.zarr --output seg.zarr --method {method}", "turn the prediction into instances"),
        (f"pytc evaluate seg.zarr my_test_labels.h5:main --task {metric} --json metrics.json",
         "score the instances against ground truth"),
    ]


def write_figure(path: str | os.PathLike, test_h5: str | os.PathLike, label_key: str,
                 pred: str | os.PathLike, seg: str | os.PathLike, z: Optional[int] = None, scale: int = 2) -> Path:
    """Save the section ``z`` (default: the middle) as image | ground truth | prediction | instances.

    Ground truth and instances are coloured per id over the image, each predicted instance in the
    colour of the ground-truth object it mostly covers (in this section), so matching colours mean
    found objects and new colours false ones; the prediction panel shows the
    foreground probability (binary channel) or, for affinities, the mean short-range affinity
    (dark = boundary). Each panel is the section scaled by ``scale`` (nearest neighbour) under a
    12-pixel caption; panels are 4 pixels apart. Written atomically.

    Returns:
        The path of the PNG (RGB, ``4 * X * scale + 12`` wide, ``Y * scale + CAPTION`` high).
    """
    import numpy as np

    from pytc.io import channel_kinds_attr, open_volume

    with open_volume(f"{test_h5}:image") as img_vol:
        z = img_vol.shape[0] // 2 if z is None else z
        image = np.asarray(img_vol[z], dtype=np.float32) / 255.0
    with open_volume(f"{test_h5}:{label_key}") as gt_vol:
        gt = np.asarray(gt_vol[z])
    with open_volume(pred) as pred_vol:
        kinds = channel_kinds_attr(pred_vol.attrs) or ["binary"]
        prob_scale = float(pred_vol.attrs.get("pytc_scale", 1.0))
        if "binary" in kinds:
            prob = np.asarray(pred_vol[kinds.index("binary"), z], np.float32)
        else:  # affinities: the mean of the first three channels (z, y, x neighbours)
            prob = np.asarray(pred_vol[:3, z], np.float32).mean(0)
        prob /= prob_scale
    with open_volume(seg) as seg_vol:
        instances = np.asarray(seg_vol[z])
    grey = np.repeat(image[..., None], 3, axis=-1)
    shown = _match_ids(instances, gt)
    panels = [grey, _overlay(image, gt), np.repeat(np.clip(prob, 0, 1)[..., None], 3, -1), _overlay(image, shown)]
    captions = ["image", "ground truth", "prediction", "instances"]
    return _save_panels(Path(path), panels, captions, scale)


# ----------------------------------------------------------------------------------------------
# Helpers

CAPTION = 14  # pixels above each panel for its caption
_GAP = 4


def _prepare_out(out: Path, force: bool) -> None:
    from pytc.io import check_writable, disk_errors

    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file; choose another --out folder")
    check_writable(out, folder=True)  # a read-only folder is refused now, not after the training
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise OutputExistsError(f"{out} is not empty; pass --force to replace the demo's outputs there, "
                                    "or choose another --out")
        with disk_errors(out):
            for name in _OUTPUTS:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    with disk_errors(out):
        (out / "data").mkdir(parents=True, exist_ok=True)


def _single_checkpoint(cfg: "PytcConfig", max_steps: int) -> "PytcConfig":
    cfg = cfg.model_copy(deep=True)
    cfg.training.max_steps = int(max_steps)
    # Checkpoint only at the end: saving is not free and the demo keeps one model.
    cfg.checkpoint.every_n_steps = max(cfg.checkpoint.every_n_steps, int(max_steps))
    return cfg


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _lap(start: float, timings: dict) -> float:
    """Seconds since the previous stage ended (``timings`` holds unrounded stage lengths until the end)."""
    return time.perf_counter() - start - sum(timings.values())


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)


def _match_ids(pred: "np.ndarray", gt: "np.ndarray") -> "np.ndarray":
    """``pred`` relabelled with the ground-truth id each instance mostly overlaps (first come, first
    served; an instance over background or over an id already taken gets a fresh id)."""
    import numpy as np

    out = np.zeros(pred.shape, np.int64)
    fresh = int(gt.max()) + 1
    taken: set[int] = set()
    ids, sizes = np.unique(pred[pred > 0], return_counts=True)
    for i in ids[np.argsort(-sizes, kind="stable")]:  # big instances choose first
        where = pred == i
        under, counts = np.unique(gt[where], return_counts=True)
        best = int(under[np.argmax(counts)])
        if best == 0 or best in taken:
            best, fresh = fresh, fresh + 1
        taken.add(best)
        out[where] = best
    return out


def _colours(labels: "np.ndarray") -> "np.ndarray":
    """A stable, distinct RGB colour per id (golden-ratio hues), black for 0."""
    import numpy as np

    ids = labels.astype(np.uint64)
    hue = (ids * np.uint64(2654435761) % np.uint64(1000)).astype(np.float32) / 1000.0
    rgb = np.stack([_hue_channel(hue, shift) for shift in (0.0, 2 / 3, 1 / 3)], axis=-1)
    rgb[labels == 0] = 0
    return rgb


def _hue_channel(hue: "np.ndarray", shift: float) -> "np.ndarray":
    import numpy as np

    # Fully saturated HSV → RGB, brightened so colours stay visible over a grey image.
    return np.clip(np.abs(((hue + shift) % 1.0) * 6 - 3) - 1, 0, 1) * 0.75 + 0.25


def _overlay(image: "np.ndarray", labels: "np.ndarray", alpha: float = 0.55) -> "np.ndarray":
    import numpy as np

    grey = np.repeat(image[..., None], 3, axis=-1)
    mask = (labels > 0)[..., None]
    return np.where(mask, (1 - alpha) * grey + alpha * _colours(labels), grey)


def _save_panels(path: Path, panels: list, captions: list, scale: int) -> Path:
    import numpy as np
    from PIL import Image, ImageDraw

    h, w = panels[0].shape[:2]
    sheet = Image.new("RGB", (len(panels) * w * scale + (len(panels) - 1) * _GAP, h * scale + CAPTION), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (panel, caption) in enumerate(zip(panels, captions)):
        tile = Image.fromarray((np.clip(panel, 0, 1) * 255).astype(np.uint8), "RGB")
        x = i * (w * scale + _GAP)
        sheet.paste(tile.resize((w * scale, h * scale), Image.NEAREST), (x, CAPTION))
        draw.text((x + 2, 1), caption, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    from pytc.io import write_atomic

    return write_atomic(path, lambda tmp: sheet.save(tmp, format="PNG", optimize=True))
