"""`pytc train` — train a model from a YAML config (one process, or many under `accelerate launch`).

Multi-GPU / multi-process: run the same command through Accelerate's launcher, e.g.
``accelerate launch --num_processes 4 $(which pytc) train cfg.yaml`` (``--cpu`` for CPU processes).
"""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer


def train(
    config: Annotated[str, typer.Argument(help="YAML config file.", show_default=False)],
    overrides: Annotated[
        Optional[list[str]], typer.Argument(help="Dotted overrides, e.g. training.max_steps=1000.", show_default=False)
    ] = None,
    resume: Annotated[
        Optional[str],
        typer.Option("--resume", metavar="auto|PATH",
                     help="Continue a run: 'auto' = newest checkpoint in the run directory, or a checkpoint path."),
    ] = None,
    fast_dev_run: Annotated[
        bool, typer.Option("--fast-dev-run", help="Smoke test: 1 step, 1 validation volume, 1 checkpoint.")
    ] = False,
    run_dir: Annotated[
        Optional[str], typer.Option("--run-dir", help="Run directory; default: system.output_dir, else runs/<config name>.", show_default=False)
    ] = None,
) -> None:
    """Train a model from a YAML config.

    Writes RUN_DIR/config.yaml (config.resolved.yaml when RUN_DIR/config.yaml is CONFIG itself), metrics.jsonl,
    previews/ and checkpoints/ (best, last, step-*). One run at a time per RUN_DIR.
    Multi-GPU: accelerate launch --num_processes N $(which pytc) train CONFIG [OVERRIDES...]
    """
    from pytc.config import config_files, default_run_dir, load_config
    from pytc.engine import fit  # imports torch: only when training, never for `pytc --help`

    cfg = load_config(config, overrides)
    run_dir = run_dir or str(default_run_dir(cfg, config))
    try:
        summary = fit(cfg, run_dir=run_dir, resume=resume, fast_dev_run=fast_dev_run, inputs=[config, *config_files(config)])
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # one hint, not one per process under accelerate launch
            typer.echo(f"Interrupted: {_continue_hint(run_dir, resume)}", err=True)
        raise typer.Exit(130) from None
    if summary.get("is_main_process", True):
        finished = summary.get("already_finished", False)
        metrics = (", ".join(f"{k} {v:.4f}" for k, v in summary["metrics"].items())
                   or ("none logged" if finished else "no validation data"))
        typer.echo(f"Run directory: {summary['run_dir']} (step {summary['step']})")
        typer.echo(f"Best checkpoint: {summary['best_checkpoint'] or 'none (no validation metric)'}")
        typer.echo(f"Last checkpoint: {summary['last_checkpoint']}")
        note = ("  [already finished]" if finished else "  [stopped early]" if summary["stopped_early"]
                else "  [time limit]" if summary["out_of_time"] else "")
        typer.echo(f"Final metrics: {metrics}{note}")


def _continue_hint(run_dir: str, resume: Optional[str]) -> str:
    """Where an interrupted run can continue from, and how."""
    from pytc.engine import find_resume_checkpoint

    last = find_resume_checkpoint(run_dir)
    if last is not None:
        return f"the last checkpoint is {last}; continue with --resume auto (and --run-dir {run_dir})"
    if resume not in (None, "auto"):
        return f"no checkpoint saved in {run_dir} yet; rerun the same command (--resume {resume}) to start again"
    return f"no checkpoint saved in {run_dir} yet; rerun the same command (--resume auto is safe) to start again"
