"""The CLI shell: help, version, error rendering, config commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pytc import __version__
from pytc.cli import app
from pytc.config import load_config
from pytc.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
runner = CliRunner()


def test_help_lists_every_command_with_a_description():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name, words in {
        "convert": "Convert",
        "info": "Describe",
        "list-archs": "List",
        "config": "config",
    }.items():
        line = next((ln for ln in result.output.splitlines() if f" {name} " in ln), None)
        assert line is not None, f"{name} missing from --help"
        assert words.lower() in line.lower(), line


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"pytc {__version__}"


def test_unknown_command_is_a_usage_error():
    result = runner.invoke(app, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_user_error_is_one_red_line_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  bach_size: 4\n")
    result = runner.invoke(app, ["config", "show", str(cfg)])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("Error: ") and "did you mean data.batch_size?" in lines[0]
    assert "Traceback" not in result.output


def test_debug_flag_lets_the_traceback_through(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  bach_size: 4\n")
    result = runner.invoke(app, ["--debug", "config", "show", str(cfg)])
    assert isinstance(result.exception, ConfigError)


def test_error_in_a_real_process_has_no_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  archtecture: x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytc.cli", "config", "show", str(cfg)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "model.archtecture: unknown key — did you mean model.architecture?" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_config_show_round_trips(tmp_path):
    result = runner.invoke(app, ["config", "show", str(CONFIGS / "lucchi.yaml"), "data.batch_size=6"])
    assert result.exit_code == 0, result.output
    shown = tmp_path / "shown.yaml"
    shown.write_text(result.output)
    assert load_config(shown) == load_config(CONFIGS / "lucchi.yaml", ["data.batch_size=6"])
    assert yaml.safe_load(result.output)["data"]["batch_size"] == 6


def test_config_show_defaults_with_overrides_only():
    result = runner.invoke(app, ["config", "show", "training.max_steps=7"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["training"]["max_steps"] == 7


def test_config_schema_is_json_schema():
    result = runner.invoke(app, ["config", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["title"] == "PytcConfig"
    assert "DataConfig" in schema["$defs"]
    batch = schema["$defs"]["DataConfig"]["properties"]["batch_size"]
    assert batch["default"] == 2 and batch["description"]


@pytest.mark.parametrize("args", [["--help"], ["config", "show"], ["list-archs", "--help"]])
def test_light_commands_do_not_import_torch(args):
    code = (
        "import sys\nfrom pytc.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'monai', 'accelerate'})\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
