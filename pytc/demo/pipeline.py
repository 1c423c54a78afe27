"""The demo pipeline: data → train → infer → decode → evaluate → figure (:func:`run_demo`), the
wall-clock training budget (:func:`fit_for`), the CPU thread choice (:func:`pick_threads`) and the
commands to try next (:func:`next_steps`). See :mod:`pytc.demo` for the whole story."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from pytc.choices import DEMO_MINUTES, DemoTask
from pytc.demo.figure import write_figure
from pytc.demo.synth_data import write_synth
from pytc.errors import ConfigError, OutputExistsError

if TYPE_CHECKING:
    from pytc.config import PytcConfig

Report = Callable[[str], None]


DEFAULT_MINUTES = DEMO_MINUTES  # the training budget (pytc.choices: the CLI reads it from there)
MAX_DEMO_STEPS = 100_000  # a step cap the time budget always reaches first
TRAIN_SHAPE = (64, 192, 192)  # 2.4M voxels, 94 mitochondria: plenty for 32×64×64 patches
TEST_SHAPE = (48, 160, 160)  # ~50 mitochondria to score; predicted in a few seconds
TRAIN_SEED, TEST_SEED = 1, 2  # different seeds: the test volume is never seen in training

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
        path = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    if not path.is_file():
        raise ConfigError(f"the demo config {path} is missing; reinstall pytc (pip install -e .)")
    return path




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


# ----------------------------------------------------------------------------------------------
# Helpers


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

