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

Modules: :mod:`~pytc.engine.checkpoint.layout` (names, ``meta.json``, finding and resolving),
:mod:`~pytc.engine.checkpoint.saving` (writing, pointers, pruning), :mod:`~pytc.engine.checkpoint.loading`
(weights, training state, resume checks, inference) and :mod:`~pytc.engine.checkpoint.rng` (RNG state);
this package re-exports their public names.

Example:
    >>> from pytc.engine.checkpoint import load_checkpoint_for_inference
    >>> cfg, model = load_checkpoint_for_inference("runs/lucchi/checkpoints/best")  # doctest: +SKIP
"""

from pytc.engine.checkpoint.layout import (
    CHECKPOINT_DIR, CONFIG, META, POINTERS, RAW_WEIGHTS, RESOLVED_CONFIG, STATE, STATE_FORMAT, WEIGHTS, PathLike,
    checkpoint_name, find_resume_checkpoint, is_complete, list_checkpoints, read_meta, resolve_checkpoint,
)
from pytc.engine.checkpoint.loading import (
    load_checkpoint_for_inference, load_into, load_model, load_training_state, load_weights, open_for_resume,
    read_config,
)
from pytc.engine.checkpoint.rng import capture_rng_state, restore_rng_state
from pytc.engine.checkpoint.saving import (
    clean_stale, rank_checkpoints, save_checkpoint, set_aside_after, update_pointers_and_prune, would_enter_top_k,
    write_pointer,
)
from pytc.errors import CheckpointError  # re-exported: callers catch it as checkpoint.CheckpointError

__all__ = [
    "CHECKPOINT_DIR", "CONFIG", "META", "POINTERS", "RAW_WEIGHTS", "RESOLVED_CONFIG", "STATE", "STATE_FORMAT",
    "WEIGHTS", "CheckpointError", "PathLike", "capture_rng_state", "checkpoint_name", "clean_stale",
    "find_resume_checkpoint", "is_complete", "list_checkpoints", "load_checkpoint_for_inference", "load_into", "load_model",
    "load_training_state", "load_weights", "open_for_resume", "rank_checkpoints", "read_config", "read_meta",
    "resolve_checkpoint", "restore_rng_state", "save_checkpoint", "set_aside_after", "update_pointers_and_prune",
    "would_enter_top_k", "write_pointer",
]
