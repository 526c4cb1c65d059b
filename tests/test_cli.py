"""The command line explains itself: usage on --help or no argument, one-line config errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import GROUPS, group_choices
from harness.run import main, usage

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    """The command lines of the README's "Running things" code block."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Running things", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HARNESS_DISTRIBUTED": "0"}
    env.pop("HARNESS_RUNS", None)
    return subprocess.run([sys.executable, "-m", "harness.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_the_readme_commands_and_every_group_choice(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    commands = _readme_commands()
    assert len(commands) >= 7
    for command in commands:
        assert command in out, command
    for group in GROUPS:
        line = next(line for line in out.splitlines() if line.strip().startswith(f"{group}="))
        assert line.split("=", 1)[1].split() == " | ".join(group_choices(group)).split()


def test_no_argument_prints_usage_and_runs_nothing(tmp_path):
    # The real entry point in an empty folder: it used to start a default fine-tune there.
    proc = _cli([], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == usage()
    assert list(tmp_path.iterdir()) == []
    helped = _cli(["--help"], tmp_path)
    assert helped.returncode == 0 and helped.stdout == usage() and helped.stderr == ""


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize("grid", [[], ["grid=smoke"]])
def test_unknown_key_is_one_line_with_the_closest_keys(tmp_path, capsys, grid):
    runs = tmp_path / "runs"
    assert main([*grid, "scale.trian.steps=5", f"run_root={runs}"]) == 2
    line = _one_line_error(capsys)
    assert "'scale.trian.steps'" in line and "scale.train.steps" in line
    assert "+scale" not in line  # Hydra's advice would silently add the misspelt key
    assert not runs.exists()


def test_unknown_top_level_key_suggests_the_nested_one(tmp_path, capsys):
    assert main(["steps=abc", f"run_root={tmp_path / 'runs'}"]) == 2
    line = _one_line_error(capsys)
    assert "'steps'" in line and "task.steps" in line


def test_plus_prefix_still_adds_a_new_key(capsys):
    assert main(["+scale.trian.steps=5", "print_config=true"]) == 0
    assert "trian:" in capsys.readouterr().out


@pytest.mark.parametrize("override, expected", [
    ("scale.train.steps=abc", "an integer"),
    ("task.steps=abc", "an integer"),  # an interpolated default: its resolved type counts
    ("dry_run=maybe", "a boolean"),
    ("model.embed_dim=1.5", "an integer"),
])
def test_bad_value_names_key_and_type_before_any_run_directory(tmp_path, capsys, override,
                                                                expected):
    runs = tmp_path / "runs"
    assert main(["task=finetune", override, f"run_root={runs}",
                 f"data.root={tmp_path / 'data'}", "data.generate.n_images=40"]) == 2
    line = _one_line_error(capsys)
    assert line.startswith(f"error: {override}: expected {expected}"), line
    assert not runs.exists() and not (tmp_path / "data").exists()


def test_values_of_the_right_type_pass(capsys):
    assert main(["scale.train.lr=1", "model.mean=[0.5,0.5,0.5]", "task.init_from=abc",
                 "scale.train.steps=7", "print_config=true"]) == 0
    assert "steps: 7" in capsys.readouterr().out
