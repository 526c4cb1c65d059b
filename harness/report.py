"""``python -m harness.report``: rebuild every table and figure from existing results.

    python -m harness.report [--runs DIR] [--results DIR] [--grids smoke table2 ...] [k=v ...]

Nothing is run: each grid (default: every ``configs/grid/*.yaml``) is planned with
:func:`harness.launch.grid.plan_grid` (config composition only) to find its stages' run
directories, so a grid's tables list exactly its stages and mark absent ones ``missing``. The
``k=v`` overrides must be the ones the grid ran with, since they decide the stages' identities.
Writes ``<results>/collected.csv``, ``<results>/tables/`` and ``<results>/figures/`` and prints
every file written. When no planned stage has a run directory at all (a fresh clone, a wrong
``--runs``), it writes nothing and exits 1, so committed tables are not replaced by rows of
``missing``; ``--allow-empty`` writes them anyway.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.analysis.collect import collect, collect_plan, write_collected
from harness.analysis.paper import load_paper_numbers
from harness.analysis.plots import write_figures
from harness.analysis.tables import write_tables
from harness.config import compose, group_choices
from harness.launch.grid import PlannedStage, grid_config, plan_grid
from harness.registry import UnknownNameError


def write_grid_report(grid: Mapping[str, Any], plan: Sequence[PlannedStage],
                      results_dir: Path) -> list[Path]:
    """Tables and figures of one planned grid (what the grid runner calls after a grid)."""
    df = collect_plan(plan, str(grid["name"]))
    paper = load_paper_numbers()
    # Bench stages of other grids under the same run root may time this grid's galleries.
    timing = collect(plan[0].run_dir.parent) if plan else None
    return [*write_tables(df, grid, results_dir, paper),
            *write_figures(df, grid, results_dir, paper, timing)]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.report",
        description="Rebuild tables and figures from existing run directories (runs nothing).")
    parser.add_argument("--runs", type=Path, default=None,
                        help="run root holding the stage directories (default: config run_root)")
    parser.add_argument("--results", type=Path, default=None,
                        help="where tables/, figures/ and collected.csv go (default: results_dir)")
    parser.add_argument("--grids", nargs="+", default=None,
                        help="grid names (default: every configs/grid/*.yaml)")
    parser.add_argument("--allow-empty", action="store_true",
                        help="write tables even when no run directory exists (all rows missing)")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides the grids ran with (they decide stage identities)")
    args = parser.parse_args(argv)
    # `--grids a b k=v` swallows the overrides that follow it; a grid name has no '='.
    if args.grids:
        args.overrides = [*(g for g in args.grids if "=" in g), *args.overrides]
        args.grids = [g for g in args.grids if "=" not in g] or None
    return args


def _plan(name: str, overrides: list[str], runs: Path | None
          ) -> tuple[dict[str, Any], list[PlannedStage], Path]:
    cfg = compose([f"grid={name}", *overrides])
    grid = grid_config(cfg)
    run_root = runs if runs is not None else Path(cfg.run_root)
    return grid, plan_grid(grid, overrides, run_root), run_root


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (1 when a grid could not be planned)."""
    args = _parse(argv)
    names = args.grids or group_choices("grid")
    try:
        defaults = compose(list(args.overrides))
    except (UnknownNameError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = args.results if args.results is not None else Path(defaults.results_dir)
    run_root = args.runs if args.runs is not None else Path(defaults.run_root)
    plans: dict[str, tuple[dict[str, Any], list[PlannedStage]]] = {}
    failed = []
    for name in names:
        try:
            grid, plan, _ = _plan(name, list(args.overrides), run_root)
        except (UnknownNameError, ValueError, KeyError) as exc:
            # One grid whose overrides do not apply must not hide the others' tables.
            print(f"error: grid {name}: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        plans[name] = (grid, plan)
    stages = [stage for _, plan in plans.values() for stage in plan]
    if stages and not args.allow_empty and not any(s.run_dir.is_dir() for s in stages):
        print(f"error: no runs found under {run_root} for grid(s) {', '.join(plans)}: nothing "
              f"written (tables under {results} are unchanged); pass --runs DIR, or "
              f"--allow-empty to write tables of missing rows", file=sys.stderr)
        return 1
    paper = load_paper_numbers()
    df = collect(run_root, {name: plan for name, (_, plan) in plans.items()})
    written = [write_collected(df, results / "collected.csv")]
    for name, (grid, plan) in plans.items():
        ids = [stage.run_dir.name for stage in plan]
        rows = df.set_index("stage_id").loc[ids].reset_index()
        written += write_tables(rows, grid, results, paper)
        written += write_figures(rows, grid, results, paper, timing=df)
        counts = rows["status"].value_counts().to_dict()
        print(f"[report] {name}: {len(plan)} stages "
              f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})", file=sys.stderr)
    for path in written:
        print(path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
