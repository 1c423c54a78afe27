"""Device, thread, precision and process-group resolution shared by training and inference.

Precision uses the config spelling (:class:`pytc.choices.Precision`: ``"32"``, ``"16-mixed"``,
``"bf16-mixed"``). On CUDA the request is kept (``bf16-mixed`` falls back to ``16-mixed`` on GPUs
without bf16). On CPU:

* ``"16-mixed"`` means full precision (``"32"``), quietly: CPU autocast has no fp16, and mixed
  precision rarely speeds up 3D convolutions on a CPU, so the shipped GPU configs run as is.
* ``"bf16-mixed"`` is honoured for inference on a CPU with native bf16 (AVX512-BF16 or AMX); without
  it PyTorch emulates bf16 and a 3D U-Net window runs ~200x slower than fp32 (measured 124.6 s vs
  0.63 s per 64³ window on an AVX2-only CPU), so it falls back to ``"32"`` with one warning line.
* Training on a CPU always runs ``"32"`` (one warning line for ``bf16-mixed``): oneDNN's bf16
  Conv3d weight gradient on CPU is unreliable (PyTorch 2.13 / oneDNN 3.12 on an AVX512-BF16 CPU:
  the same call repeated 200 times returned differing, sometimes inf/NaN gradients, while the
  forward pass repeated exactly and stayed within 0.03 of fp32), which made CPU training NaN within a few steps and
  broke bit-exact resume.

Example:
    >>> import torch
    >>> from pytc.runtime import resolve_precision
    >>> resolve_precision("32", torch.device("cpu"))
    '32'
"""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Optional

from pytc.choices import PRECISIONS

if TYPE_CHECKING:
    import torch

log = logging.getLogger("pytc")

_warned: set[str] = set()  # each fallback message is shown once per process, not once per call


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU executes bfloat16 natively (AVX512-BF16 or AMX-BF16).

    Asks PyTorch's CPU feature probe first (``torch.cpu``, PyTorch >= 2.3) and falls back to the
    flags in ``/proc/cpuinfo`` (Linux). Unknown → ``False``: the safe answer is fp32.
    """
    import torch

    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        try:
            return bool(probe() or (amx is not None and amx()))
        except RuntimeError:
            pass
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set(fh.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(requested: str, device: "torch.device | str", training: bool = False) -> str:
    """The precision that will actually run on ``device``.

    Args:
        requested: ``"32"``, ``"16-mixed"`` or ``"bf16-mixed"`` (``training.precision``).
        device: The device the model runs on.
        training: Whether the precision is for training (back-propagation) rather than inference.

    Returns:
        One of ``"32"``, ``"16-mixed"``, ``"bf16-mixed"``. On CPU ``"16-mixed"`` becomes ``"32"``;
        ``"bf16-mixed"`` is kept for inference with native bf16 and becomes ``"32"`` otherwise
        (one warning line).
    """
    import torch

    requested = str(getattr(requested, "value", requested))
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    kind = torch.device(device).type
    if requested == "32":
        return "32"
    if kind == "cuda":
        if requested == "bf16-mixed" and not torch.cuda.is_bf16_supported():
            _warn_once("this GPU has no bf16 support; training.precision bf16-mixed falls back to 16-mixed")
            return "16-mixed"
        return requested
    if kind == "cpu":
        if requested == "16-mixed":
            return "32"  # fp16 is a GPU format; the shipped configs ask for it for their GPU runs
        if training:
            _warn_once(
                "precision bf16-mixed is not used for training on a CPU: bf16 convolution gradients are unreliable "
                "there (NaN losses, runs that do not repeat); using precision 32"
            )
            return "32"
        if cpu_has_native_bf16():
            return "bf16-mixed"
        _warn_once(
            f"precision {requested} on a CPU without native bf16 (AVX512-BF16/AMX) would be ~200x slower "
            "than fp32; using precision 32"
        )
        return "32"
    return requested  # mps/xpu/...: let Accelerate decide


def accelerate_mixed_precision(precision: str) -> str:
    """Map a resolved precision to Accelerate's ``mixed_precision`` argument (``no``/``fp16``/``bf16``)."""
    return {"32": "no", "16-mixed": "fp16", "bf16-mixed": "bf16"}[str(precision)]


def autocast_dtype(precision: str) -> "Optional[torch.dtype]":
    """The autocast dtype of a resolved precision (``None`` for fp32)."""
    import torch

    return {"32": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}[str(precision)]


def use_cpu(num_gpus: Optional[int]) -> bool:
    """Whether to run on CPU: ``system.num_gpus == 0`` or no CUDA device is visible."""
    import torch

    return num_gpus == 0 or not torch.cuda.is_available()


def select_device(num_gpus: Optional[int]) -> "torch.device":
    """The device a single-process run (e.g. inference) uses for ``system.num_gpus``."""
    import torch

    return torch.device("cpu" if use_cpu(num_gpus) else "cuda")


def setup_threads(num_cpus: int) -> int:
    """Set torch's intra-op threads from ``system.num_cpus`` (0 = leave torch's default).

    Never more than the CPUs this process may use: oversubscribed threads make CPU training slower,
    not faster. Returns the thread count in effect.
    """
    import torch

    if num_cpus > 0:
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, min(num_cpus, available)))
    return torch.get_num_threads()


class Dist:
    """Rank, world size, device and barrier of ``pytc infer``: Accelerate's process group under
    ``accelerate launch`` or ``torchrun`` (``WORLD_SIZE`` > 1), otherwise this single process."""

    def __init__(self, num_gpus: Optional[int]):
        self.world, self.rank, self._state = int(os.environ.get("WORLD_SIZE", "1")), 0, None
        if self.world > 1:
            from accelerate import PartialState

            self._state = PartialState(cpu=use_cpu(num_gpus))
            self.world, self.rank, self.device = self._state.num_processes, self._state.process_index, self._state.device
        else:
            self.device = select_device(num_gpus)

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()
