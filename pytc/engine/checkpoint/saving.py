"""Writing checkpoints: a folder written atomically (:func:`save_checkpoint`), the ``last``/``best``
pointers, ranking and pruning by the monitored score, and clearing away what interrupted runs left."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Optional

from pytc.engine.checkpoint.layout import (
    _NAME, _TEMP, CONFIG, META, RAW_WEIGHTS, STATE, STATE_FORMAT, WEIGHTS, PathLike, checkpoint_name,
    find_resume_checkpoint, list_checkpoints, read_meta,
)
from pytc.errors import CheckpointError
from pytc.locks import pid_alive


def clean_stale(ckpt_dir: PathLike) -> list[Path]:
    """Remove ``.tmp-*`` folders left by processes that are gone (or by this one); return them."""
    ckpt_dir = Path(ckpt_dir)
    removed = []
    if ckpt_dir.is_dir():
        for item in ckpt_dir.iterdir():
            match = _TEMP.fullmatch(item.name)
            if match and (int(match[1]) == os.getpid() or not pid_alive(int(match[1]))):
                shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
                removed.append(item)
    return removed


def _state_dict_to_cpu(state: dict) -> dict:
    # Contiguous CPU copies: safetensors refuses shared or non-contiguous storage.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_checkpoint(
    ckpt_dir: PathLike,
    step: int,
    *,
    weights: dict,
    config_yaml: str,
    training_state: dict,
    meta: dict,
    raw_weights: Optional[dict] = None,
) -> Path:
    """Write checkpoint ``step-<step>`` atomically and return its folder.

    Args:
        ckpt_dir: The run's ``checkpoints/`` folder.
        step: Optimizer steps done.
        weights: Inference weights (``state_dict``; the EMA weights when EMA is on).
        config_yaml: The resolved config (``dump_config``).
        training_state: Plain tensors/dicts/lists/numbers for resuming (see :func:`capture_rng_state`).
        meta: JSON-able facts (step, metrics, score); written last, completing the folder.
        raw_weights: The optimizer's weights when they differ from ``weights`` (EMA on).
    """
    import torch
    from safetensors.torch import save_file

    from pytc import __version__

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    final = ckpt_dir / name
    tmp = ckpt_dir / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tag = {"format": "pt", "pytc_version": __version__, "step": str(step)}
    try:
        tmp.mkdir()
        kind = "ema" if raw_weights else "raw"
        save_file(_state_dict_to_cpu(weights), tmp / WEIGHTS, metadata={**tag, "weights": kind})
        if raw_weights is not None:
            save_file(_state_dict_to_cpu(raw_weights), tmp / RAW_WEIGHTS, metadata={**tag, "weights": "raw"})
        (tmp / CONFIG).write_text(config_yaml)
        torch.save({"format": STATE_FORMAT, **training_state}, tmp / STATE)
        meta = {"name": name, "step": step, "pytc_version": __version__, **meta}
        (tmp / META).write_text(json.dumps(meta, indent=1, default=float) + "\n")  # last: marks the folder complete
    except BaseException as err:
        reason = _disk_fault(err, ckpt_dir)  # before the clean-up, which frees the space it would measure
        shutil.rmtree(tmp, ignore_errors=True)  # (a SIGKILL skips this: clean_stale removes it on the next run)
        if reason:  # disk full, quota, read-only: the earlier checkpoints are intact
            advice = _free_and_resume(ckpt_dir, reason)
            raise CheckpointError(f"cannot write checkpoint {final} ({reason}); {advice}") from None
        raise
    if final.exists():  # re-saving a step (e.g. after a resume): set the old folder aside, then swap
        old = ckpt_dir / f".tmp-old-{name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return final


def _disk_fault(err: BaseException, folder: Path) -> Optional[str]:
    """Why a write into ``folder`` failed when the disk is to blame (``"No space left on device"``), else None.

    A full disk does not always say so: safetensors puts the errno only into its message
    (``I/O error: No space left on device (os error 28)``, read by :func:`pytc.io.errno_of`) and
    ``torch.save`` raises an errno-less ``RuntimeError`` (``file write failed``). An errno-less failure
    counts as a full disk when the disk really is (nearly) full (:func:`pytc.io.disk_is_full`, the test
    every writer uses).
    """
    from safetensors import SafetensorError

    from pytc.io import disk_is_full, errno_of

    if not isinstance(err, (OSError, RuntimeError, SafetensorError)):
        return None
    code = errno_of(err)
    if code is not None:
        return (err.strerror if isinstance(err, OSError) and err.errno else None) or os.strerror(code)
    return os.strerror(errno.ENOSPC) if disk_is_full(folder) else None


def _free_and_resume(ckpt_dir: Path, reason: str) -> str:
    last = find_resume_checkpoint(ckpt_dir.parent)
    full = reason in {os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)}
    fix = "free some space" if full else f"make {ckpt_dir} writable"
    return f"{fix} and rerun with --resume auto (newest complete checkpoint: {last.name if last else 'none'})"


def write_pointer(ckpt_dir: PathLike, pointer: str, target: Optional[Path]) -> None:
    """Point ``ckpt_dir/<pointer>`` (``last``/``best``) at ``target`` atomically; ``None`` removes it."""
    path = Path(ckpt_dir) / pointer
    if target is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".tmp-{pointer}-{os.getpid()}")
    try:
        tmp.write_text(Path(target).name + "\n")
        os.replace(tmp, path)
    except OSError as err:
        reason = _disk_fault(err, Path(ckpt_dir))
        tmp.unlink(missing_ok=True)
        if not reason:
            raise
        raise CheckpointError(f"cannot write {path} ({reason}); {_free_and_resume(Path(ckpt_dir), reason)}") from None


def rank_checkpoints(ckpt_dir: PathLike, monitor: str, mode: str) -> list[Path]:
    """Complete checkpoints that have a ``monitor`` value, best first (ties: newer first)."""
    scored = []
    for path in list_checkpoints(ckpt_dir):
        value = read_meta(path).get("metrics", {}).get(monitor)
        if value is not None and value == value:  # skip missing and NaN scores
            scored.append((value if mode == "min" else -value, -int(_NAME.fullmatch(path.name)[1]), path))
    return [p for *_, p in sorted(scored)]


def would_enter_top_k(ckpt_dir: PathLike, monitor: str, mode: str, k: int, value: float) -> bool:
    """Whether a new checkpoint scoring ``value`` belongs among the best ``k`` kept so far."""
    if k <= 0:
        return False
    ranked = rank_checkpoints(ckpt_dir, monitor, mode)
    if len(ranked) < k:
        return True
    worst = read_meta(ranked[k - 1])["metrics"][monitor]
    return value < worst if mode == "min" else value > worst


def update_pointers_and_prune(ckpt_dir: PathLike, monitor: str, mode: str, save_top_k: int, save_last: bool) -> None:
    """Point ``last``/``best`` at the newest/best checkpoints, then delete checkpoints nobody keeps.

    Kept: the ``save_top_k`` best by ``monitor`` and, with ``save_last``, the newest (and the newest
    anyway when that keeps nothing: a run always leaves a checkpoint). Pointers are updated before
    anything is deleted, so a pointer never names a removed folder.
    """
    ckpt_dir = Path(ckpt_dir)
    found = list_checkpoints(ckpt_dir)
    if not found:
        return
    ranked = rank_checkpoints(ckpt_dir, monitor, mode)[:save_top_k]
    keep = set(ranked) | ({found[-1]} if save_last else set()) or {found[-1]}
    write_pointer(ckpt_dir, "last", found[-1] if save_last else None)
    write_pointer(ckpt_dir, "best", ranked[0] if ranked else None)
    for path in found:
        if path not in keep:
            _remove(path)


def set_aside_after(ckpt_dir: PathLike, step: int) -> list[Path]:
    """Move checkpoints newer than ``step`` to ``ckpt_dir/abandoned/`` (a resume from an older one).

    They belong to the run being abandoned: left in place, ``last`` and ``--resume auto`` would pick
    them up again. They are kept, not deleted, since they may still be wanted.
    """
    ckpt_dir = Path(ckpt_dir)
    moved = []
    for path in list_checkpoints(ckpt_dir):
        if int(_NAME.fullmatch(path.name)[1]) > step:
            target = ckpt_dir / "abandoned" / path.name
            if target.exists():
                target = target.with_name(f"{path.name}-{os.getpid()}")
            target.parent.mkdir(exist_ok=True)
            os.rename(path, target)
            moved.append(target)
    return moved


def _remove(folder: Path) -> None:
    """Delete a checkpoint folder: renamed first, so a run killed while deleting leaves a ``.tmp-``
    folder (removed by :func:`clean_stale`), never a half-deleted ``step-*`` folder that still has
    its ``meta.json`` and so looks complete."""
    doomed = folder.with_name(f".tmp-del-{folder.name}-{os.getpid()}")
    os.rename(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)

