"""The ``pytc`` sub-commands, one Typer command per module (installed as ``pytc.commands``): each parses
its arguments, calls one library function and renders the result. :mod:`pytc.cli` registers them."""
