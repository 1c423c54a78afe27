"""Everything pytc shows on the terminal while it works: progress bars, the status spinner and the
one-line error/warning printer.

Bars and spinners are drawn only when stderr is a terminal (in a log file or a pipe they are only
noise) and disappear when done (``transient``); the commands print their own summary afterwards.
Each context manager yields a plain callable, so the code that does the work never touches rich:

* :func:`byte_bar` — ``advance(nbytes)``: copies (``pytc convert``), with bytes/s.
* :func:`block_bars` — ``start(description, total)`` → ``advance(voxels=0)``: one bar per pass over
  blocks (``pytc infer`` shows voxels/s, ``pytc decode`` its passes).
* :func:`status_line` — ``step(text)``: a one-line spinner for steps without a count.
* :class:`TrainBar` — the training bar (step, loss, lr, it/s, ETA).

rich is imported inside the functions: ``import pytc`` stays light.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Optional

Advance = Callable[..., None]


def terminal_console(show: bool = True):
    """A rich console on stderr when ``show`` and stderr is a terminal, else None."""
    if not show:
        return None
    from rich.console import Console

    console = Console(stderr=True)
    return console if console.is_terminal else None


def print_line(text: str, style: str = "") -> None:
    """Print one line on stderr (errors in red, warnings in yellow); long lines wrap softly, so a
    path is never broken in the middle."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(Text(text, style=style))


@contextlib.contextmanager
def byte_bar(show: bool, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(nbytes)`` for a bar counted in bytes (size, bytes/s, ETA)."""
    console = terminal_console(show)
    if console is None:
        yield lambda n: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, transient=True, console=console) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@contextlib.contextmanager
def block_bars(show: bool, rate: bool = False) -> Iterator[Callable[[str, int], Advance]]:
    """Yield ``start(description, total)`` → ``advance(voxels=0)``: one bar per pass, counted in
    blocks; with ``rate`` the bar also shows the voxels per second of the ``voxels`` advanced."""
    console = terminal_console(show)
    if console is None:
        yield lambda description, total: lambda voxels=0: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("blocks")]
    if rate:
        columns.append(TextColumn("{task.fields[rate]}"))
    with Progress(*columns, TimeRemainingColumn(), transient=True, console=console) as bar:

        def start(description: str, total: int) -> Advance:
            task = bar.add_task(description, total=total, rate="")
            began, done = time.perf_counter(), 0

            def advance(voxels: int = 0) -> None:
                nonlocal done
                done += voxels
                speed = done / max(time.perf_counter() - began, 1e-9)
                bar.update(task, advance=1, rate=f"{speed / 1e6:.2f} Mvox/s")

            return advance

        yield start


@contextlib.contextmanager
def status_line(show: bool) -> Iterator[Callable[[str], None]]:
    """Yield ``step(text)``: a one-line spinner on a terminal, nothing elsewhere."""
    console = terminal_console(show)
    if console is None:
        yield lambda text: None
        return
    with console.status("") as status:
        yield lambda text: status.update(text)


class TrainBar:
    """The training bar (step, loss, lr, it/s, ETA) on stderr; inert when not ``enabled`` (other
    processes than the main one). It fills with the steps done, or with the time used when a time
    limit (``seconds`` from now) is nearer; the ETA follows whichever ends the run first."""

    def __init__(self, enabled: bool, total: int, completed: int, seconds: Optional[float] = None,
                 minutes: Optional[float] = None):  # fmt: skip
        from rich.console import Console
        from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
        from rich.text import Text

        class Speed(ProgressColumn):
            def render(self, task):
                return Text(f"{task.fields['speed']:.2f} it/s" if task.fields["speed"] else "-- it/s")

        self.total, self.seconds, self.first, self.start = total, seconds, completed, time.monotonic()
        ends = f"/{total}" if seconds is None else f" of {minutes or seconds / 60:g} min"  # short: 80 columns
        self.progress = Progress(
            TextColumn("step {task.fields[step]}" + ends), BarColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"), Speed(), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not enabled,
        )  # fmt: skip
        self.progress.add_task("train", total=1.0, completed=completed / max(total, 1), loss=float("nan"), lr=0.0,
                               step=completed, speed=0.0)  # fmt: skip

    def update(self, step: int, loss: float, lr: float) -> None:
        elapsed = time.monotonic() - self.start
        done = step / max(self.total, 1)
        if self.seconds:
            done = max(done, min(elapsed / self.seconds, 1.0))
        speed = (step - self.first) / elapsed if elapsed > 0 else 0.0
        self.progress.update(0, completed=done, loss=loss, lr=lr, step=step, speed=speed)

    def __enter__(self) -> "TrainBar":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)
