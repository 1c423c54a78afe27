"""Checkpoint folders: the layout's names, ``meta.json``, and finding a checkpoint (listing, ``--resume auto``,
:func:`resolve_checkpoint` for a folder, a ``last``/``best`` pointer or a run directory)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional, Union

from pytc.errors import CheckpointError, ConfigError

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

