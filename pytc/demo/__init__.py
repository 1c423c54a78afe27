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

The package holds three modules: :mod:`pytc.demo.pipeline` (:func:`run_demo`, :func:`fit_for`,
:func:`pick_threads`, :func:`next_steps`), :mod:`pytc.demo.synth_data` (:func:`write_synth`, also
``pytc demo synth``) and :mod:`pytc.demo.figure` (:func:`write_figure`).

Example:
    >>> from pytc.demo import run_demo
    >>> result = run_demo("demo_out", minutes=2)  # doctest: +SKIP
    >>> round(result.metrics["iou"], 2)  # doctest: +SKIP
    0.9
"""

from pytc.demo.figure import CAPTION, _match_ids, write_figure  # _match_ids: kept importable here for tests
from pytc.demo.pipeline import (
    DEFAULT_MINUTES,
    MAX_DEMO_STEPS,
    TEST_SEED,
    TEST_SHAPE,
    TRAIN_SEED,
    TRAIN_SHAPE,
    DemoResult,
    DemoTask,
    Report,
    demo_config_path,
    fit_for,
    next_steps,
    pick_threads,
    run_demo,
)
from pytc.demo.synth_data import SYNTH_KEYS, write_synth

__all__ = [
    "CAPTION",
    "DEFAULT_MINUTES",
    "MAX_DEMO_STEPS",
    "SYNTH_KEYS",
    "TEST_SEED",
    "TEST_SHAPE",
    "TRAIN_SEED",
    "TRAIN_SHAPE",
    "DemoResult",
    "DemoTask",
    "Report",
    "demo_config_path",
    "fit_for",
    "next_steps",
    "pick_threads",
    "run_demo",
    "write_figure",
    "write_synth",
]
