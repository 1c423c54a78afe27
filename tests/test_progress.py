"""pytc.progress: every bar and spinner comes from here; nothing is drawn off a terminal."""

import io

from rich.console import Console

from pytc import progress


def _fake_terminal(monkeypatch):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    monkeypatch.setattr(progress, "terminal_console", lambda show=True: console if show else None)
    return out


def test_block_bars_draw_blocks_and_voxel_rate_on_a_terminal(monkeypatch):
    out = _fake_terminal(monkeypatch)
    with progress.block_bars(True, rate=True) as start:
        advance = start("predict", 2)
        advance(1000)
        advance(1000)
    text = out.getvalue()
    assert "predict" in text and "2/2" in text and "Mvox/s" in text


def test_byte_bar_and_status_line_draw_on_a_terminal(monkeypatch):
    out = _fake_terminal(monkeypatch)
    with progress.byte_bar(True, "copy", 2048) as advance:
        advance(2048)
    with progress.status_line(True) as step:
        step("agglomerating")
    assert "copy" in out.getvalue()


def test_nothing_is_drawn_when_not_shown(monkeypatch, capsys):
    _fake_terminal(monkeypatch)
    with progress.block_bars(False) as start:
        start("label", 3)()
    with progress.byte_bar(False, "copy", 10) as advance:
        advance(10)
    with progress.status_line(False) as step:
        step("x")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_off_a_terminal_there_is_no_console():
    # pytest captures stderr: it is not a terminal
    assert progress.terminal_console(True) is None
    assert progress.terminal_console(False) is None


def test_print_line_writes_one_line_on_stderr(capsys):
    progress.print_line("Error: something to fix", "bold red")
    assert capsys.readouterr().err.strip() == "Error: something to fix"
