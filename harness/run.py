"""``python -m harness.run``: run a grid (``grid=<name>``) or one stage (``task=... model=...``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from harness.config import compose
from harness.registry import UnknownNameError


def _run_grid(cfg, overrides: Sequence[str]) -> int:
    from harness.analysis.tables import write_grid_tables
    from harness.launch.executor import run_local
    from harness.launch.grid import format_plan, grid_config, plan_grid

    grid = grid_config(cfg)
    run_root = Path(cfg.run_root)
    plan = plan_grid(grid, overrides, run_root)
    if cfg.dry_run:
        print(format_plan(plan))
        return 0
    if cfg.cluster.name != "local":
        raise UnknownNameError(f"cluster={cfg.cluster.name} is not available yet; valid: local")
    print(f"[grid] {grid['name']}: {len(plan)} stages under {run_root}", flush=True)
    report = run_local(plan, run_root, grid["name"])
    print(report.summary(), flush=True)
    for path in write_grid_tables(grid, plan, Path(cfg.results_dir)):
        print(f"[grid] wrote {path}", flush=True)
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = compose(overrides)
        if cfg.print_config:
            print(OmegaConf.to_yaml(cfg, resolve=True))
            return 0
        if cfg.get("grid"):
            return _run_grid(cfg, overrides)
        from harness.stage import run_stage

        run_dir = run_stage(cfg, Path(cfg.run_root))
        print(f"[run] {run_dir}", flush=True)
        return 0
    except UnknownNameError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
