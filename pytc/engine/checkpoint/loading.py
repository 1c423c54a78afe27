"""Reading checkpoints without unpickling: weights (safetensors), the training state
(``torch.load(weights_only=True)``), the stored config, and the checks before a run resumes
(:func:`open_for_resume`) or a model is rebuilt for inference (:func:`load_checkpoint_for_inference`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pytc.engine.checkpoint.layout import (
    CONFIG, META, RAW_WEIGHTS, STATE, STATE_FORMAT, WEIGHTS, PathLike, _first_line, _meta_or_problem, _step,
    list_checkpoints, read_meta, resolve_checkpoint,
)
from pytc.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import torch

    from pytc.config import ModelConfig, PytcConfig


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
    folder = resolve_checkpoint(path)
    cfg = read_config(folder)
    return cfg, load_model(folder, cfg.model).to(device).eval()


def load_model(folder: PathLike, model_cfg: "ModelConfig") -> "torch.nn.Module":
    """The network ``model_cfg`` describes, with the weights of checkpoint folder ``folder``
    (``model.safetensors``: EMA weights if the run kept an EMA), on the CPU, in training mode.

    Raises:
        CheckpointError: no weights, or weights that do not fit the architecture.
    """
    from pytc.models import build_model

    model = build_model(model_cfg)
    load_into(model, load_weights(Path(folder) / WEIGHTS), folder)
    return model

