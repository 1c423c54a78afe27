"""The memory check of the in-memory decoders (``affinity-waterz``, ``mutex-watershed``).

They agglomerate the whole volume at once, so before reading it :func:`check_memory` compares
their estimated peak (bytes per voxel, measured) with :func:`available_memory` and refuses
(``DataError``) a volume that would not fit.
"""

from __future__ import annotations

import math
from typing import Optional

from pytc.errors import DataError

__all__ = ["available_memory", "check_memory"]


def check_memory(method: str, shape: tuple[int, ...], bytes_per_voxel: int, what: str) -> None:
    """Refuse an in-memory decode whose estimated peak exceeds the memory available now."""
    need = math.prod(shape) * bytes_per_voxel
    available = available_memory()
    if available is not None and need > available:
        raise DataError(
            f"{method} decodes the whole volume in memory and needs about {_format_bytes(need)} for "
            f"{'×'.join(map(str, shape))} voxels ({what}), but {_format_bytes(available)} is available; "
            "decode a crop of the prediction, use a machine with more memory, or use --method threshold or "
            "bc-watershed (decoded block by block)"
        )


def _format_bytes(count: int) -> str:
    """2.5 GiB, 1.0 MiB, 4 KiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.0f} {unit}" if unit == "KiB" else f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def available_memory() -> Optional[int]:
    """Bytes this process can still allocate: MemAvailable (Linux), capped by a cgroup v2 limit
    (containers); psutil elsewhere; None when unknown (no check)."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            import psutil

            available = int(psutil.virtual_memory().available)
        except Exception:  # not installed, or no answer on this platform
            return None
    try:  # cgroup v2: the limit minus what is used, not counting page cache it can drop
        cgroup = "/sys/fs/cgroup/"
        with open(cgroup + "memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open(cgroup + "memory.current") as f:
                used = int(f.read())
            with open(cgroup + "memory.stat") as f:
                cache = next((int(ln.split()[1]) for ln in f if ln.startswith("inactive_file ")), 0)
            available = min(available, max(int(limit) - used + cache, 0))
    except (OSError, ValueError):
        pass
    return available
