"""Seeds as a grid axis (harness.launch.grid.plan_grid): one pipeline per seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.launch.grid import plan_grid
from harness.run import main

GRID = {"name": "toy", "experiments": [
    {"models": ["clip"], "datasets": ["synthetic"], "pipeline": ["finetune", "eval"]}]}


def _ids(plan) -> list[str]:
    return [s.run_dir.name for s in plan]


def test_grid_seeds_give_one_pipeline_per_seed_with_distinct_ids(tmp_path):
    plain = plan_grid(GRID, [], tmp_path)
    seeded = plan_grid({**GRID, "seeds": [0, 1, 2]}, [], tmp_path)
    assert len(seeded) == 6 and len(set(_ids(seeded))) == 6
    assert [int(s.cfg.seed) for s in seeded] == [0, 0, 1, 1, 2, 2]
    for finetune, evaluation in zip(seeded[::2], seeded[1::2]):
        assert (finetune.task, evaluation.task) == ("finetune", "eval")
        assert finetune.parent is None and "init_from=" not in " ".join(finetune.overrides)
        # Each eval evaluates its own seed's training stage.
        assert evaluation.parent is finetune
        assert evaluation.cfg.task.init_from == finetune.run_dir.name
    assert [s.label for s in seeded[:2]] == ["finetune:clip:synthetic:seed0",
                                             "eval:clip:synthetic:seed0"]
    # Seed 0 is the default seed: its stages are the grid's usual ones, not re-run.
    assert _ids(seeded)[:2] == _ids(plain)


@pytest.mark.slow
def test_command_line_count_wins_over_the_grid(tmp_path):
    from_grid = plan_grid({**GRID, "seeds": [0, 1, 2]}, [], tmp_path)
    from_cli = plan_grid(GRID, ["seeds=3"], tmp_path)
    assert _ids(from_cli) == _ids(from_grid)
    # A launcher key: it picks the stages, it is not a stage override.
    assert not [o for s in from_cli for o in s.overrides if o.startswith("seeds")]
    assert _ids(plan_grid({**GRID, "seeds": [5, 6]}, ["seeds=[0,1,2]"], tmp_path)) == \
        _ids(from_grid)
    experiment = {**GRID["experiments"][0], "seeds": [1]}
    assert _ids(plan_grid({**GRID, "experiments": [experiment]}, [], tmp_path)) == \
        _ids(from_grid)[2:4]


@pytest.mark.parametrize("value", ["0", "[1,1]", "[-1]", "abc"])
def test_bad_seeds_are_refused_naming_the_forms(tmp_path, value):
    with pytest.raises(ValueError, match=r"seeds=.*expected a count \(seeds=3 runs seeds 0, 1, "
                                         r"2\) or a list of distinct non-negative integers"):
        plan_grid(GRID, [f"seeds={value}"], tmp_path)


def test_seeds_on_the_command_line_of_a_dry_run(tmp_path, capsys):
    args = ["grid=smoke", f"run_root={tmp_path / 'runs'}", "dry_run=true"]
    assert main([*args, "seeds=2"]) == 0
    lines = capsys.readouterr().out.split()
    assert main(args) == 0
    plain = capsys.readouterr().out.split()
    ids = [w for w in lines if w.startswith(("finetune-", "eval-"))]
    assert len(ids) == 4 and len(set(ids)) == 4
    assert ids[:2] == [w for w in plain if w.startswith(("finetune-", "eval-"))]
    assert Path(tmp_path / "runs").exists() is False or not any((tmp_path / "runs").iterdir())
