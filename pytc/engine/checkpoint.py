"""Checkpoints: self-contained folders, written atomically, loaded without unpickling.

Layout of a run's ``checkpoints/`` folder::

    checkpoints/
      step-000500/
        model.safetensors        weights for inference (the EMA weights when training.ema_decay is set)
        model_raw.safetensors    only with EMA: the raw weights the optimizer updates (for resuming)
        config.yaml              the resolved config: the checkpoint rebuilds its own model
        training_state.pt        optimizer, scheduler, EMA count, grad scaler, RNG states, step,
                                 early-stopping counters (plain tensors/dicts/numbers only)
        meta.json                step, epoch, metrics, monitored score; written LAST
      last                       pointer file: one line naming the newest checkpoint folder
      best                       pointer file: the folder with the best checkpoint.monitor value

A folder is written as ``.tmp-step-000500-<pid>`` and renamed when ``meta.json`` is in it, so a
folder under its final name with a ``meta.json`` is complete; temporaries of dead processes are
removed. ``last``/``best`` are small text files rather than symlinks or copies: replacing a file is
atomic everywhere (also on Windows and on file systems without links) and costs no disk.
:func:`resolve_checkpoint` accepts a folder, a pointer file or a run directory.

Nothing is ever unpickled: weights load through safetensors, the training state through
``torch.load(weights_only=True)``, which refuses any pickle that would construct arbitrary objects
(Accelerate's ``load_state`` loads custom objects with ``weights_only=False``, hence our own format).

Example:
    >>> from pytc.engine.checkpoint import load_checkpoint_for_inference
    >>> cfg, model = load_checkpoint_for_inference("runs/lucchi/checkpoints/best")  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from pytc.locks import pid_alive
from pytc.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import torch

    from pytc.config import PytcConfig

PathLike = Union[str, os.PathLike]

CHECKPOINT_DIR = "checkpoints"
WEIGHTS = "model.safetensors"
RAW_WEIGHTS = "model_raw.safetensors"
CONFIG = "config.yaml"
RESOLVED_CONFIG = "config.resolved.yaml"  # a run's resolved config when RUN/config.yaml is an input
STATE = "training_state.pt"
META = "meta.json"
POINTERS = ("last", "best")
STATE_FORMAT = 1  # bump when training_state.pt changes incompatibly

_NAME = re.compile(r"step-(\d+)")
_TEMP = re.compile(r"\.tmp-.+-(\d+)")


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint after ``step`` optimizer steps (zero-padded so names sort)."""
    return f"step-{step:06d}"


def is_complete(path: PathLike) -> bool:
    """Whether ``path`` is a finished checkpoint folder (final name and ``meta.json`` present)."""
    path = Path(path)
    return bool(_NAME.fullmatch(path.name)) and (path / META).is_file()


def read_meta(path: PathLike) -> dict:
    """The ``meta.json`` of a checkpoint folder.

    Raises:
        CheckpointError: it is not a JSON object whose ``step`` matches the folder's name (one line).
    """
    path = Path(path)
    meta, why = _meta_or_problem(path)
    if why:
        raise CheckpointError(f"checkpoint {path} is damaged ({META}: {why}); move it out of {path.parent} "
                              "(or put back a good copy), then rerun")
    return meta


def _meta_or_problem(path: Path) -> tuple[Optional[dict], Optional[str]]:
    """``(meta, None)``, or ``(None, what is wrong with it)``."""
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"not readable JSON: {_first_line(err)}"
    if not isinstance(meta, dict):
        return None, f"a JSON {type(meta).__name__}, not an object"
    step = _step(path)
    if step is not None and meta.get("step") != step:
        return None, f"its step is {meta.get('step')!r}, the folder's is {step}"
    return meta, None


def _step(path: Path) -> Optional[int]:
    """The step in a ``step-NNNNNN`` folder name (None for other names)."""
    found = _NAME.fullmatch(path.name)
    return int(found[1]) if found else None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]


def list_checkpoints(ckpt_dir: PathLike) -> list[Path]:
    """Complete checkpoint folders in ``ckpt_dir``, oldest step first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name)[1]))


def find_resume_checkpoint(run_dir: PathLike) -> Optional[Path]:
    """The newest complete checkpoint of a run (``--resume auto``), or ``None`` if there is none."""
    found = list_checkpoints(Path(run_dir) / CHECKPOINT_DIR)
    return found[-1] if found else None


def resolve_checkpoint(path: PathLike) -> Path:
    """The checkpoint folder meant by ``path``.

    Args:
        path: A checkpoint folder, a ``last``/``best`` pointer file, or a run directory (→ its best
            checkpoint, else its last).

    Returns:
        A complete checkpoint folder.

    Raises:
        CheckpointError: nothing there (naming what the run does have), a folder that is not a
            checkpoint or run, an incomplete checkpoint, or a dangling pointer.
    """
    path = Path(path)
    if path.is_dir() and (path / CHECKPOINT_DIR).is_dir() and not (path / META).exists():
        for name in POINTERS[::-1]:  # a run directory: best, else last
            if (path / CHECKPOINT_DIR / name).is_file():
                return resolve_checkpoint(path / CHECKPOINT_DIR / name)
        found = list_checkpoints(path / CHECKPOINT_DIR)
        if found:  # no pointers (e.g. checkpoint.save_last off and nothing validated): name the newest
            raise CheckpointError(f"run directory {path} has no checkpoints/best or checkpoints/last; use {found[-1]}")
        raise CheckpointError(f"run directory {path} has no complete checkpoint yet; train longer or use another run")
    if path.is_file() and path.name != META:
        target = path.read_text(errors="replace")[:256].strip()
        if not _NAME.fullmatch(target):
            raise CheckpointError(
                f"{path} is neither a checkpoint folder nor a last/best pointer; give RUN/checkpoints/<name>"
            )
        folder = path.parent / target
        if not is_complete(folder):
            raise CheckpointError(f"{path} points to {target}, which is missing or incomplete; use another checkpoint")
        return folder
    if not path.exists():
        raise CheckpointError(_not_found(path))
    if not (path / META).is_file():
        if not any((path / name).exists() for name in (WEIGHTS, RAW_WEIGHTS, CONFIG, STATE)):
            raise CheckpointError(
                f"{path} is not a checkpoint or run folder (no {CHECKPOINT_DIR}/, {CONFIG} or {WEIGHTS}); "
                f"give RUN, RUN/{CHECKPOINT_DIR}/best, .../last or a step-* folder"
            )
        raise CheckpointError(
            f"checkpoint {path} is incomplete (no {META}: it was being written when a run stopped); use another one"
        )
    return path


def _not_found(path: Path) -> str:
    """Why ``path`` names no checkpoint and, inside a run, what to use instead."""
    ckpt_dir = path.parent
    if ckpt_dir.name != CHECKPOINT_DIR or not ckpt_dir.is_dir():
        return f"checkpoint {path} not found; give RUN, RUN/{CHECKPOINT_DIR}/best, .../last or a step-* folder"
    run, found = ckpt_dir.parent, list_checkpoints(ckpt_dir)
    if not found:
        return f"checkpoint {path} not found: run {run} has no complete checkpoint yet; train longer or use another run"
    use = next((ckpt_dir / n for n in POINTERS if n != path.name and (ckpt_dir / n).is_file()), found[-1])
    if path.name == "best":
        why = "the run had no validation" if not _validates(run) else "no validation has scored a checkpoint yet"
        return f"no best checkpoint in {ckpt_dir}: {why}; use {use} or {run}"
    if path.name == "last":
        return f"no last checkpoint in {ckpt_dir} (checkpoint.save_last is off); use {use} or {run}"
    return f"checkpoint {path} not found; use {use} or {run}"


def _validates(run: Path) -> bool:
    """Whether the run's config sets validation data (True when unknown: no readable config)."""
    from pytc.config import read_yaml

    resolved = run / RESOLVED_CONFIG  # present when RUN/config.yaml is the user's own (unresolved) file
    try:
        data = read_yaml(resolved if resolved.is_file() else run / CONFIG).get("data") or {}
    except (ConfigError, AttributeError):
        return True
    return data.get("val_image") is not None or data.get("val_z_range") is not None


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
    (``I/O error: No space left on device (os error 28)``) and ``torch.save`` raises an errno-less
    ``RuntimeError`` (``file write failed``). An errno-less failure counts as a full disk when the
    disk really is (nearly) full (:func:`pytc.io.disk_is_full`, the test every writer uses).
    """
    from safetensors import SafetensorError

    from pytc.io import disk_is_full

    if isinstance(err, OSError) and err.errno:
        return err.strerror or os.strerror(err.errno)
    if not isinstance(err, (OSError, RuntimeError, SafetensorError)):
        return None
    found = re.search(r"(?:os error |code: |errno = )(\d+)", str(err))
    if found:
        return os.strerror(int(found[1]))
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


# --------------------------------------------------------------------------------------------
# Loading


def load_weights(path: PathLike) -> dict:
    """A safetensors weights file as a CPU ``state_dict``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        folder = path.parent
        raise CheckpointError(f"checkpoint {folder} has no {path.name} (the file is missing: deleted, or not copied "
                              "with the folder); copy the whole checkpoint folder again or use another checkpoint")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read weights {path}: {err}; the file is damaged or not safetensors") from None


def load_into(model: "torch.nn.Module", state: dict, where: PathLike) -> None:
    """``model.load_state_dict(state)`` with a one-line :class:`CheckpointError` when they do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{_count(len(mismatched), 'shape mismatch', 'shape mismatches')}, e.g. {k}: "
                f"checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            )
        if missing:
            parts.append(f"{_count(len(missing), 'missing weight')}, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{_count(len(unexpected), 'unexpected weight')}, e.g. {unexpected[0]}")
        raise CheckpointError(
            f"checkpoint {where} does not fit this model ({'; '.join(parts)}); it was trained with another "
            "architecture or model settings — use the checkpoint's own config.yaml"
        )
    model.load_state_dict(state)


def _count(n: int, noun: str, nouns: str = "") -> str:
    """``1 missing weight``, ``3 missing weights``."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def load_training_state(path: PathLike) -> dict:
    """The ``training_state.pt`` of a checkpoint folder, loaded with ``weights_only=True``.

    Raises:
        CheckpointError: missing file, a pickle that would build arbitrary objects (refused, never
            executed), or an unknown format version.
    """
    import pickle

    import torch

    file = Path(path) / STATE
    if not file.is_file():
        raise CheckpointError(f"checkpoint {path} has no {STATE}; it cannot be resumed (it still works for inference)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as err:  # cut short or overwritten: not an attack, just broken
        raise CheckpointError(f"checkpoint {path} is damaged ({STATE}: {_first_line(err)}); use another checkpoint") from None
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"Unsupported (?:global|operand)[^.]*", text)  # torch's reason, without its advice
        reason = found[0] if found else (text.strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"refusing to load {file}: not a plain-tensor training state ({reason}); it was not executed"
        ) from None
    version = state.get("format") if isinstance(state, dict) else None
    if version != STATE_FORMAT:
        raise CheckpointError(f"{file} has training-state format {version}, this pytc reads {STATE_FORMAT}; "
                              "resume with the pytc version that wrote it")
    return state


def open_for_resume(path: PathLike, ckpt_dir: Optional[PathLike] = None) -> dict:
    """Check checkpoint ``path`` before a run resumes from it, and return its training state.

    Every file a resume reads is checked now, before anything is trained, rather than at the next
    save: ``meta.json`` (a JSON object with the folder's step), the weights (present, readable
    safetensors headers; ``model_raw.safetensors`` too when the run kept an EMA), ``config.yaml``
    and ``training_state.pt`` (and that its step is the folder's). So are the ``meta.json`` files of
    the run's other checkpoints up to that step (``ckpt_dir``): every save ranks them.

    Raises:
        CheckpointError: one line naming the damaged or missing file, and the newest earlier
            checkpoint to resume from instead.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    meta, why = _meta_or_problem(path)
    problem = f"is damaged ({META}: {why})" if why else None
    if problem is None:
        needed = [WEIGHTS, *([RAW_WEIGHTS] if meta.get("ema") else []), CONFIG, STATE]
        missing = [name for name in needed if not (path / name).is_file()]
        if missing:
            problem = f"is missing {', '.join(missing)} (deleted, or not copied with the folder)"
    for name in needed if problem is None else []:
        if name.endswith(".safetensors"):
            try:
                with safe_open(str(path / name), framework="pt") as f:
                    f.keys()
            except (SafetensorError, OSError) as err:
                problem = f"is damaged ({name}: {_first_line(err)})"
                break
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} {problem}; {_earlier(path)}")
    try:
        read_config(path)
        state = load_training_state(path)
    except (CheckpointError, ConfigError) as err:
        raise CheckpointError(f"{err}; or {_earlier(path)}") from None
    if state.get("step") != meta["step"]:
        raise CheckpointError(f"checkpoint {path} is damaged ({STATE} is of step {state.get('step')!r}, {META} of "
                              f"step {meta['step']}); {_earlier(path)}")
    for other in list_checkpoints(ckpt_dir) if ckpt_dir is not None else []:
        if other != path and _step(other) <= meta["step"]:
            read_meta(other)  # a damaged one is named, with what to do
    return state


def _earlier(path: Path) -> str:
    """How to resume instead of from damaged checkpoint ``path``: from the newest earlier one that reads."""
    step = _step(path)
    for earlier in reversed(list_checkpoints(path.parent)):
        if step is not None and _step(earlier) < step and _meta_or_problem(earlier)[1] is None:
            return f"resume from the one before with --resume {earlier}"
    return "there is no earlier checkpoint: start a new run (another --run-dir), or put back a good copy"


def read_config(path: PathLike) -> "PytcConfig":
    """The resolved config stored in a checkpoint folder."""
    from pytc.config import config_from_dict, read_yaml

    file = Path(path) / CONFIG
    if not file.is_file():
        raise CheckpointError(f"checkpoint {path} has no {CONFIG}; it cannot rebuild its model")
    return config_from_dict(read_yaml(file), origin=str(file))  # safe_load; a YAML error is one line


def load_checkpoint_for_inference(path: PathLike, device: "str | torch.device" = "cpu"):
    """Rebuild a trained model from a checkpoint alone (its ``config.yaml`` and ``model.safetensors``).

    Args:
        path: A checkpoint folder, a ``last``/``best`` pointer, or a run directory.
        device: Where to put the model.

    Returns:
        ``(cfg, model)``: the checkpoint's config and the model in eval mode (EMA weights if the run
        kept an EMA).

    Raises:
        CheckpointError: missing/incomplete checkpoint or weights that do not fit the architecture.
    """
    from pytc.models import build_model

    folder = resolve_checkpoint(path)
    cfg = read_config(folder)
    model = build_model(cfg.model)
    load_into(model, load_weights(folder / WEIGHTS), folder)
    return cfg, model.to(device).eval()


# --------------------------------------------------------------------------------------------
# RNG state as plain tensors/lists (weights_only-loadable)


def capture_rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) RNG states as plain tensors and lists."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    import random

    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
