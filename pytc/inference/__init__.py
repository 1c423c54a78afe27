"""Sliding-window prediction over volumes of any size: ``pytc infer`` and validation during training.

Public face:

* :func:`infer` (:mod:`.run`) — checkpoint + input volume → a resumable, multi-process Zarr/HDF5
  prediction store.
* :func:`predict_volume` (:mod:`.predictor`) — any array-like image (numpy, h5py, zarr, a
  :mod:`pytc.io` volume) → activated predictions (C, Z, Y, X), written into an array-like output.
* :class:`BlockPredictor` (:mod:`.predictor`) — the engine both use, one output block at a time.

How a volume is predicted:

* **Windows** (:mod:`.grid`). The window grid of MONAI's ``sliding_window_inference``: window
  ``inference.window_size`` (default: the training patch), ``inference.overlap``, blended with
  ``inference.blending`` (gaussian/constant); ``inference.sw_batch_size`` windows per network call.
  An axis thinner than the window is padded by edge replication and the padding cropped off again.
  2D networks predict each z-section with a (1, Y, X) window.
* **Input.** Normalised as in training (``data.normalize``); z-score statistics are computed once,
  chunk-wise, over the whole input, and passed in.
* **Output** (:mod:`.tta`). Sigmoid on binary/contour/affinity channels, none on distance channels,
  applied per window before blending, so windows and TTA average probabilities. Stored as float32,
  float16 or uint8 = ``round(clip(p, 0, 1) * 255)``; uint8 keeps normalised distances the same way
  (they live in [0, 1]) and is refused for signed distances (-1..1), which need a float dtype.
* **Blocks (out of core)** (:mod:`.grid`, :mod:`.carries`). The volume is processed in output blocks
  of ``inference.block_size`` over the whole-volume window grid: each window runs once, in the block
  holding its first voxel, and the part of its weighted prediction that reaches into later blocks
  is carried to them. Blocked and whole-volume predictions differ only by rounding (< 1e-6). Memory
  is bounded by the block plus one window on each far side and a budget of carried partial sums;
  the next block is read and the previous one written on helper threads while the network runs.
* **TTA** (:mod:`.tta`). ``inference.tta_flips`` (lists of axes) and ``inference.tta_rot90`` (quarter
  turns in the y-x plane), identity always included; each is inverted before averaging and affinity
  channels are re-pointed.
* **Precision.** ``inference.precision`` (default: ``training.precision``), as the device allows it
  (:func:`pytc.runtime.resolve_precision`).
* **Resume and processes** (:mod:`.run`, :mod:`.record`, :mod:`.store`): see :func:`infer`.

Checks with one-line messages before any output exists live in :mod:`.checks`.

Example:
    >>> from pytc.inference import infer, predict_volume
    >>> summary = infer("runs/lucchi/checkpoints/best", "test.h5:raw", "pred.zarr")  # doctest: +SKIP
    >>> prob = predict_volume(model, image, cfg, progress=False)  # numpy in, float32 (C, Z, Y, X) out  # doctest: +SKIP
"""

from pytc.inference.grid import BlockPlan, output_chunks, window_starts
from pytc.inference.predictor import BlockPredictor, InputView, predict_volume, quantise, run_blocks
from pytc.inference.run import infer
from pytc.inference.tta import Aug, WindowPredictor, build_augs, channel_routes

__all__ = ["Aug", "BlockPlan", "BlockPredictor", "InputView", "WindowPredictor", "build_augs", "channel_routes",
           "infer", "output_chunks", "predict_volume", "quantise", "run_blocks", "window_starts"]
