"""`pytc config show|schema` — print a resolved config or the config JSON Schema."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

app = typer.Typer(help="Show a resolved config or the config JSON Schema.", no_args_is_help=True, rich_markup_mode=None)


@app.command("show")
def show(
    config: Annotated[Optional[str], typer.Argument(help="YAML config file; omit for the defaults.")] = None,
    overrides: Annotated[
        Optional[list[str]], typer.Argument(help="Dotted overrides, e.g. data.batch_size=8.", show_default=False)
    ] = None,
) -> None:
    """Print the fully resolved config (base chain + env + overrides) as YAML."""
    from pytc.config import dump_config, load_config

    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        # `pytc config show data.batch_size=4` means: defaults plus overrides.
        overrides, config = [config, *(overrides or [])], None
    cfg = load_config(config, overrides)
    typer.echo(dump_config(cfg), nl=False)
    if cfg.model.architecture == "monai_dynunet":  # its levels are derived, so show them too
        from pytc.models.dynunet import describe_plan

        typer.echo(describe_plan(cfg.model), nl=False)


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of pytc configs (point your editor's YAML plugin at it)."""
    import json

    from pytc.config import config_schema

    typer.echo(json.dumps(config_schema(), indent=2))
