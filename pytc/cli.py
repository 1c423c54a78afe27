"""The ``pytc`` command line.

Each sub-command lives in its own file under ``commands/`` (installed as ``pytc.commands``) and
only parses arguments, calls one library function and renders the result. This module wires them
together and turns :class:`~pytc.errors.PytcError` into one red line and exit code 2.

Start-up time is part of the product: nothing here (or in ``commands/`` at import time) imports
torch, monai, accelerate or zarr; those are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from pytc import __version__
from pytc.errors import PytcError
from pytc.progress import print_line


def _debug_enabled(ctx: click.Context) -> bool:
    obj = ctx.find_root().obj
    return bool((isinstance(obj, dict) and obj.get("debug")) or os.environ.get("PYTC_DEBUG"))


def print_error(err: BaseException) -> None:
    """Print a user error as one red line on stderr."""
    print_line(f"Error: {err}", "bold red")


class _PytcGroup(TyperGroup):
    """Group that converts user errors into a one-line message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PytcError as err:
            if _debug_enabled(ctx):
                raise
            print_error(err)
            ctx.exit(err.exit_code)


app = typer.Typer(
    name="pytc",
    cls=_PytcGroup,
    help="pytc — deep-learning segmentation of 3D electron-microscopy volumes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rich-formatted help imports markdown-it and doubles start-up time.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"pytc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """pytc — deep-learning segmentation of 3D electron-microscopy volumes."""
    ctx.obj = {"debug": debug}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one yellow line (``--debug`` keeps Python's file:line format)."""
    print_line(f"Warning: {message}", "yellow")


def _register() -> None:
    # Imported here (not at the top) only to keep the list of commands in one place.
    from pytc.commands import config as config_cmd
    from pytc.commands import convert as convert_cmd
    from pytc.commands import decode as decode_cmd
    from pytc.commands import demo as demo_cmd
    from pytc.commands import evaluate as evaluate_cmd
    from pytc.commands import infer as infer_cmd
    from pytc.commands import info as info_cmd
    from pytc.commands import list_archs as list_archs_cmd
    from pytc.commands import train as train_cmd

    app.command("convert")(convert_cmd.convert)
    app.command("decode")(decode_cmd.decode)
    app.command("evaluate")(evaluate_cmd.evaluate)
    app.command("infer")(infer_cmd.infer)
    app.command("info")(info_cmd.info)
    app.command("list-archs")(list_archs_cmd.list_archs)
    app.command("train")(train_cmd.train)
    app.add_typer(config_cmd.app, name="config", cls=_PytcGroup)
    app.add_typer(demo_cmd.app, name="demo", cls=_PytcGroup)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``pytc``)."""
    args = argv if argv is not None else sys.argv[1:]
    if "--debug" not in args:
        import warnings

        warnings.showwarning = _show_warning  # set here, not in the app: tests record warnings normally
    app(args=args, prog_name="pytc")


if __name__ == "__main__":  # `python -m pytc.cli ...` (e.g. under `accelerate launch -m`)
    main()
