"""Executors: run a planned grid's stages (``cluster=local`` runs them here, in order)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from harness.launch.grid import PlannedStage
from harness.launch.store import FAILED_MARKER, read_marker


@dataclass
class GridReport:
    """What happened to each stage of one grid run."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no stage failed or was blocked by a failed dependency."""
        return not self.failed and not self.blocked

    def summary(self) -> str:
        """Multi-line human summary, failures with their log paths."""
        lines = [f"{len(self.done)} ran, {len(self.skipped)} already done, "
                 f"{len(self.failed)} failed, {len(self.blocked)} not run (dependency failed)"]
        lines += [f"  FAILED {name}: {why}" for name, why in self.failed.items()]
        lines += [f"  NOT RUN {name}: {why}" for name, why in self.blocked.items()]
        return "\n".join(lines)


def run_local(plan: Sequence[PlannedStage], run_root: Path, grid: str, *,
              in_job: bool = False) -> GridReport:
    """Run every stage in this process, in dependency order; failures block dependents only.

    ``in_job`` runs each stage through the job object a SLURM job would run (cluster=debug).
    """
    from harness.launch.slurm import StageJob
    from harness.stage import run_stage  # heavy imports only when something really runs

    report = GridReport()
    broken: set[Path] = set()
    for stage in plan:
        name = stage.run_dir.name
        if stage.parent is not None and stage.parent.run_dir in broken:
            report.blocked[name] = f"depends on {stage.parent.run_dir.name}"
            broken.add(stage.run_dir)
            continue
        if stage.status() == "done":
            report.skipped.append(name)
            continue
        try:
            if in_job:
                StageJob(stage.overrides, str(run_root), grid)()
            else:
                run_stage(stage.cfg, run_root, grid=grid)
            report.done.append(name)
        except Exception as exc:  # one failed stage must not lose the others' work
            info = read_marker(stage.run_dir, FAILED_MARKER)
            report.failed[name] = f"{type(exc).__name__}: {exc} (log: {info.get('log')})"
            broken.add(stage.run_dir)
    return report
