"""The training engine. Modules: ``train`` (:func:`fit`, the Accelerate loop), ``validation``, ``optim``
(optimizers, schedules, EMA), ``checkpoint`` (checkpoint folders), ``run_dir`` (the run folder) and
``run_state`` (a run's state in and out of checkpoints).

Importing this package imports torch lazily: ``fit`` and the checkpoint loaders import it when called.

Example:
    >>> from pytc.config import load_config
    >>> from pytc.engine import fit
    >>> fit(load_config("configs/lucchi.yaml", ["training.max_steps=100"]))  # doctest: +SKIP
"""

from pytc.engine.checkpoint import find_resume_checkpoint, load_checkpoint_for_inference, resolve_checkpoint
from pytc.engine.train import fit, train_step
from pytc.engine.validation import validate

__all__ = ["fit", "train_step", "validate", "find_resume_checkpoint", "load_checkpoint_for_inference",
           "resolve_checkpoint"]
