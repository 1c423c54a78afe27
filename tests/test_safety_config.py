"""Configs are read defensively: strict YAML, bounded parsing, only regular files, short messages.

Each case goes through the real CLI (`pytc config show`, `pytc train`, or `python -m pytc.cli` in a
real process where a hang or a memory blow-up is the risk) and must end quickly with exit code 2 and
one short `Error: ...` line, leaving nothing behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pytc.cli import app
from pytc.config import load_config
from pytc.errors import ConfigError

runner = CliRunner()

MAX_LINE = 300  # a one-line error a user can read; never the value that broke the parser


def _write(path: Path, text: str | bytes) -> Path:
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _tree(root: Path) -> dict:
    return {str(q.relative_to(root)): (q.stat().st_size if q.is_file() else -1) for q in root.rglob("*")
            if not q.is_symlink() and not q.is_fifo()}


def _fails(args: list, *words: str, max_s: float = 2.0, env: dict | None = None) -> str:
    """Run the CLI in-process; assert exit 2, one short line with ``words``, fast; return the line."""
    start = time.perf_counter()
    result = runner.invoke(app, [str(a) for a in args], env=env)
    took = time.perf_counter() - start
    assert result.exit_code == 2, f"{result.output}\n{result.exception!r}"
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output[:2000]
    assert len(lines[0]) < MAX_LINE, lines[0][:2000]
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    assert took < max_s, f"took {took:.1f} s: {lines[0]}"
    return lines[0]


def _fails_in_a_process(args: list, *words: str, cwd: Path, max_s: float = 10.0) -> str:
    """The same contract in a real `python -m pytc.cli` process (a hang or runaway read is killed)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytc.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=max_s + 20, cwd=cwd)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pytc {' '.join(map(str, args))} hung")
    took = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr[-3000:]
    assert len(lines[0]) < MAX_LINE and "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert took < max_s, f"took {took:.1f} s"
    return lines[0]


# --------------------------------------------------------------------------------------------
# Strict YAML: duplicate keys, non-finite numbers


def test_a_duplicate_key_is_refused_naming_both_lines(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "optimizer:\n  lr: 0.1\n  weight_decay: 0.0\n  lr: 0.001\n")
    line = _fails(["config", "show", cfg], str(cfg), "duplicate key 'lr'", "line 4", "line 2")
    assert "optimizer" in line


def test_a_duplicate_section_is_refused_naming_both_lines(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "data:\n  batch_size: 3\nmodel:\n  filters: [4, 8]\ndata:\n  num_workers: 0\n")
    _fails(["config", "show", cfg], str(cfg), "duplicate key 'data'", "line 5", "line 1")


def test_a_duplicate_key_in_a_base_file_names_that_file(tmp_path):
    base = _write(tmp_path / "base.yaml", "data: {batch_size: 1, batch_size: 2}\n")
    cfg = _write(tmp_path / "c.yaml", "_base_: base.yaml\n")
    _fails(["config", "show", cfg], "base.yaml", "duplicate key 'batch_size'", "line 1")


def test_a_duplicate_key_in_an_override_blames_the_override():
    _fails(["config", "show", "model.filters=[4, 8]", "data={batch_size: 1, batch_size: 2}"],
           "override", "duplicate key 'batch_size'")


def test_yaml_merge_keys_still_work(tmp_path):
    # `<<:` merges are how YAML shares settings; a key given next to a merge overrides it, not a duplicate.
    cfg = _write(tmp_path / "c.yaml", "data:\n  targets:\n    - &t {name: contour, thickness: 2}\n"
                 "    - {<<: *t, thickness: 3}\n")
    assert [t.thickness for t in load_config(cfg).data.targets] == [2, 3]


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN", "1e999"])
def test_a_non_finite_number_in_a_config_file_is_refused(tmp_path, value):
    cfg = _write(tmp_path / "c.yaml", f"optimizer:\n  lr: {value}\n")
    # "finite number", not "finite": pytest's folder for this test is named after it (non_finite_...)
    _fails(["config", "show", cfg], str(cfg), "optimizer.lr", "Input should be a finite number")


def test_non_finite_numbers_are_refused_in_lists_overrides_and_environment(tmp_path):
    _fails(["config", "show", "model.loss_weights=[1.0, .nan]"], "override", "model.loss_weights", "finite number")
    _fails(["config", "show", "training.gradient_clip_val=.inf"], "override", "gradient_clip_val", "finite number")
    _fails(["config", "show", "data.batch_size=2"], "PYTC_OPTIMIZER__LR", "optimizer.lr", "finite number",
           env={"PYTC_OPTIMIZER__LR": "inf"})
    _fails(["config", "show", "data.batch_size=2"], "PYTC_SCHEDULER__MIN_LR", "finite number",
           env={"PYTC_SCHEDULER__MIN_LR": "nan"})


# --------------------------------------------------------------------------------------------
# Bounded parsing


def test_an_alias_bomb_is_refused_quickly_with_a_short_line(tmp_path):
    # "Billion laughs" inside a valid key: each level repeats the previous one ten times, 10**9 strings.
    levels = ["&x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"&x{i} [{', '.join([f'*x{i - 1}'] * 10)}]" for i in range(1, 9)]
    cfg = _write(tmp_path / "bomb.yaml", "data:\n  train_image: [" + ", ".join(levels) + "]\n")
    _fails(["config", "show", cfg], str(cfg), "alias")


def test_a_recursive_alias_is_refused(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "data:\n  train_image: &a [*a]\n")
    _fails(["config", "show", cfg], str(cfg), "a YAML alias refers to itself (line 2)")


def test_a_huge_config_file_is_refused_before_parsing(tmp_path):
    cfg = _write(tmp_path / "big.yaml", "data:\n  train_image: [" + "a, " * 2_000_000 + "b]\n")  # 6 MB
    _fails(["config", "show", cfg], str(cfg), "256 KiB")


def test_a_long_list_under_the_size_cap_is_refused_quickly(tmp_path):
    cfg = _write(tmp_path / "long.yaml", "data:\n  train_image: [" + "1," * 400_000 + "1]\n")  # 0.8 MB
    _fails(["config", "show", cfg], str(cfg), max_s=10.0)


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path):
    cfg = _write(tmp_path / "deep.yaml", "data:\n  train_image: " + "[" * 20_000 + "]" * 20_000 + "\n")
    _fails(["config", "show", cfg], str(cfg))


def test_a_base_that_is_a_device_is_refused_without_reading_it(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "_base_: /dev/zero\n")
    _fails_in_a_process(["config", "show", cfg], "/dev/zero", "not a regular file", cwd=tmp_path)


def test_a_base_that_is_a_fifo_is_refused_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")
    cfg = _write(tmp_path / "c.yaml", "_base_: pipe.yaml\n")
    _fails_in_a_process(["config", "show", cfg], "pipe.yaml", "not a regular file", cwd=tmp_path)


def test_a_config_that_is_a_fifo_is_refused_by_train_and_nothing_is_written(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")
    _fails_in_a_process(["train", tmp_path / "pipe.yaml", "--run-dir", tmp_path / "run"], "FIFO", cwd=tmp_path)
    assert not (tmp_path / "run").exists()


def test_a_huge_value_is_truncated_in_the_error(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "data:\n  batch_size: '" + "x" * 100_000 + "'\n")
    line = _fails(["config", "show", cfg], str(cfg), "data.batch_size", "…")
    assert "x" * 100 not in line
    huge = "[" + ", ".join(["[1, 2, 3]"] * 5000) + "]"
    line = _fails(["config", "show", f"data.batch_size={huge}"], "data.batch_size", "…")


# --------------------------------------------------------------------------------------------
# Broken files and out-of-range values through the real CLI (exit 2, one line, nothing written)


def test_a_binary_config_is_one_line(tmp_path):
    cfg = _write(tmp_path / "c.yaml", bytes(range(256)) * 4)
    _fails(["train", cfg, "--run-dir", tmp_path / "run"], str(cfg), "UTF-8")
    assert not (tmp_path / "run").exists()


def test_a_non_utf8_config_is_one_line_naming_the_byte(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "data:\n  train_image: caf\xe9.h5\n".encode("latin-1"))
    before = _tree(tmp_path)
    _fails(["train", cfg, "--run-dir", tmp_path / "run"], str(cfg), "UTF-8", "line 2")
    assert _tree(tmp_path) == before


def test_a_config_that_is_a_symlink_loop_is_one_line(tmp_path):
    os.symlink(tmp_path / "b.yaml", tmp_path / "a.yaml")
    os.symlink(tmp_path / "a.yaml", tmp_path / "b.yaml")
    _fails(["train", tmp_path / "a.yaml", "--run-dir", tmp_path / "run"], "a.yaml", "symbolic link")
    _fails(["config", "show", _write(tmp_path / "c.yaml", "_base_: a.yaml\n")], "a.yaml", "symbolic link")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**80), str(2**32)])
def test_a_seed_numpy_and_torch_cannot_take_is_refused(tmp_path, seed):
    cfg = _write(tmp_path / "c.yaml", f"system:\n  seed: {seed}\n")
    _fails(["train", cfg, "--run-dir", tmp_path / "run"], str(cfg), "system.seed", "4294967295")
    _fails(["train", _write(tmp_path / "d.yaml", ""), f"system.seed={seed}", "--run-dir", tmp_path / "run"],
           "override 'system.seed=", "system.seed")
    assert not (tmp_path / "run").exists()


def test_the_extreme_valid_seeds_are_accepted_by_numpy_and_torch():
    import numpy as np
    import torch

    for seed in (0, 2**32 - 1):
        assert load_config(None, [f"system.seed={seed}"]).system.seed == seed
        np.random.seed(seed)
        torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Clearer messages


def test_an_unknown_tag_is_reported_as_unknown_not_as_a_python_tag(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "data:\n  batch_size: !custom 3\n")
    line = _fails(["config", "show", cfg], str(cfg), "unknown YAML tag '!custom'", "line 2")
    assert "Python" not in line


def test_python_tags_are_still_called_python_object_tags(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "data: !!python/object/apply:os.system ['true']\n")
    _fails(["config", "show", cfg], str(cfg), "Python object tags are not allowed", "line 1")


def test_an_override_below_a_value_blames_the_override(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "data:\n  batch_size: 2\n")
    line = _fails(["config", "show", cfg, "data.batch_size.foo=1"], "override 'data.batch_size.foo=1'",
                  "data.batch_size")
    assert not line.startswith(f"Error: {cfg}")
    _fails(["config", "show", cfg, "data.nosuch.foo=1"], "override 'data.nosuch.foo=1'", "data.nosuch")


def test_a_section_wide_error_is_still_blamed_on_the_file(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "data:\n  val_image: v.h5:image\n")
    _fails(["config", "show", cfg, "data.batch_size=2"], f"Error: {cfg}: data: val_image is set")


def test_the_patch_size_error_quotes_the_value_once():
    line = _fails(["config", "show", "data.patch_size=[0,16,16]"], "data.patch_size", "[0, 16, 16]")
    assert line.count("[0, 16, 16]") == 1, line
