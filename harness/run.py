"""``python -m harness.run``: run a grid (``grid=<name>``) or one stage (``task=... model=...``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from harness.config import GROUPS, ConfigValueError, compose, group_choices, to_plain
from harness.launch.grid import PlannedStage
from harness.launch.lock import StageBusy
from harness.procs import REQUEUE_EXIT, Preempted
from harness.registry import UnknownNameError

# The commands of the README's "Running things" (a test keeps the two in step).
COMMANDS = """\
  python -m harness.run grid=smoke                          # every stage of a grid, skipping done ones
  python -m harness.run grid=smoke dry_run=true             # the plan: <stage_id> <task> <model> <dataset> <status>
  python -m harness.run task=finetune model=clip data=synthetic        # one stage in this process
  python -m harness.run task=eval model=clip data=synthetic task.init_from=<finetune run dir>
  python -m harness.run grid=smoke cluster=slurm            # submit the whole DAG to SLURM (afterok)
  python -m harness.run grid=smoke cluster=slurm cluster.wait=true     # ... and block until it ends
  python -m harness.run print_config=true model=clip scale=paper       # the composed config
  python -m harness.report [--grids NAME ...]               # rebuild tables and figures from runs/
"""


def usage() -> str:
    """What ``--help`` (or no argument at all) prints: commands, then each group's choices."""
    groups = "\n".join(f"  {group + '=':9}{' | '.join(group_choices(group))}" for group in GROUPS)
    return (f"usage: python -m harness.run key=value [key=value ...]\n\n{COMMANDS}\n"
            f"config groups (group=choice):\n{groups}\n\n"
            "Any config key can be set (scale.train.steps=1000, model.embed_dim=256); "
            "+key=value adds a new key.\nStage status words: done, running, interrupted, "
            "failed, pending.\n")


def missing_data(plan: Sequence[PlannedStage]) -> list[str]:
    """Data paths the grid's stages read that do not exist (generated datasets excepted)."""
    missing = []
    for stage in plan:
        data = stage.cfg.data
        if data.get("generate") or stage.task == "bench":  # bench stages read no data
            continue
        paths = [data.annotation, data.image_root]
        if stage.task == "pretrain":
            source = stage.cfg.task.get("pretrain_source", "manifest")
            paths = [data.pretrain_manifest] if source == "manifest" else []
            if source == "shards":
                from harness.data.pretrain import expand_shards
                from harness.data.report import DataError

                try:
                    expand_shards(str(data.pretrain_shards))
                except DataError:
                    paths = [data.pretrain_shards]
        missing += [f"{stage.label}: {p}" for p in paths if p and not Path(p).exists()]
    return sorted(set(missing))


def _run_grid(cfg: DictConfig, overrides: Sequence[str]) -> int:
    from harness.launch.grid import format_plan, grid_config, plan_grid

    grid = grid_config(cfg)
    run_root = Path(cfg.run_root)
    plan = plan_grid(grid, overrides, run_root)
    if cfg.dry_run:
        print(format_plan(plan))
        return 0
    missing = missing_data(plan)
    if missing:
        print("error: data not found, nothing was run or submitted:\n  " + "\n  ".join(missing),
              file=sys.stderr)
        return 1
    print(f"[grid] {grid['name']}: {len(plan)} stages under {run_root} "
          f"(cluster={cfg.cluster.name})", flush=True)
    if cfg.cluster.name == "slurm":
        return _submit(cfg, grid, plan, run_root, overrides)
    from harness.launch.executor import GridInterrupted, run_local

    try:
        report = run_local(plan, run_root, grid["name"], in_job=cfg.cluster.name == "debug",
                           workers=int(cfg.cluster.get("workers", 1)), grid_config=grid,
                           overrides=overrides)
    except GridInterrupted as stop:
        print(f"[grid] stopped by {stop}: its stages were stopped and waited for; the same "
              f"command resumes (interrupted stages rerun)", file=sys.stderr, flush=True)
        return 128 + stop.signum
    print(report.summary(), flush=True)
    _tables(report.manifest, run_root, Path(cfg.results_dir))
    return 0 if report.ok else 1


def _submit(cfg: DictConfig, grid: dict, plan: Sequence[PlannedStage], run_root: Path,
            overrides: Sequence[str]) -> int:
    from harness.launch.slurm import submit_grid, wait_for

    cluster = to_plain(cfg.cluster)
    report, manifest = submit_grid(plan, cluster, run_root, grid["name"], grid_config=grid,
                                   overrides=overrides)
    print(report.summary().replace(" ran,", " submitted,"), flush=True)
    print(f"[grid] manifest: {manifest}", flush=True)
    if not cluster.get("wait"):
        return 0 if report.ok else 1
    states = wait_for(plan)
    for name, state in states.items():
        print(f"{name} {state}", flush=True)
    _tables(manifest, run_root, Path(cfg.results_dir))
    return 0 if report.ok and set(states.values()) == {"done"} else 1


def _tables(manifest: Path | None, run_root: Path, results_dir: Path) -> None:
    from harness.report import write_grid_report

    if manifest is None:
        return
    for path in write_grid_report(manifest, results_dir, run_root):
        print(f"[grid] wrote {path}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    overrides = list(sys.argv[1:] if argv is None else argv)
    if not overrides or any(arg in ("-h", "--help", "help") for arg in overrides):
        # No argument used to start a default fine-tune in the current directory.
        print(usage(), end="")
        return 0 if overrides else 2
    try:
        cfg = compose(overrides)
        if cfg.print_config:
            print(OmegaConf.to_yaml(cfg, resolve=True))
            return 0
        if cfg.get("grid"):
            return _run_grid(cfg, overrides)
        from harness.stage import run_stage

        run_dir = run_stage(cfg, Path(cfg.run_root), overrides=overrides)
        print(f"[run] {run_dir}", flush=True)
        return 0
    except Preempted as exc:  # checkpoint written: rerunning the command resumes
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return REQUEUE_EXIT
    except (UnknownNameError, ConfigValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StageBusy as exc:
        print(f"error: {exc}; not run", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
