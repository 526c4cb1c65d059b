"""Grids: models x datasets x a pipeline of tasks, expanded into an ordered DAG of stages.

A grid file (``configs/grid/<name>.yaml``)::

    name: table2
    claim: "what paper claim this reproduces"
    experiments:
      - models: [cookie, clip]
        datasets: [coco, flickr30k]
        overrides: ["task.steps=1000"]          # optional, for every stage of the experiment
        pipeline:
          - {task: pretrain, data: synthetic}   # a stage may train on another dataset
          - finetune                            # depends on the previous training stage
          - eval                                # evaluates the last training stage

Each stage's config names its parent's run directory (``task.init_from``), so identical
stages in different grids (same model, data, overrides and parent) share one directory.

Seeds are an axis: ``seeds: [0, 1, 2]`` in a grid (or in one experiment), or ``seeds=3`` /
``seeds=[0,1,2]`` on the command line (which wins), runs every pipeline once per seed with
``seed=<s>``. The seed is part of each stage's identity, so the stages are distinct, and
seed 0's stages are the ones a grid without seeds runs (the default ``seed`` is 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from harness.config import compose, to_plain
from harness.launch.store import Status, stage_dir, stage_status
from harness.record import TRAINING_TASKS

# Overrides that steer the launcher, not what a stage computes.
LAUNCH_KEYS = ("grid", "cluster", "dry_run", "print_config", "wait", "seeds")


@dataclass(frozen=True)
class PlannedStage:
    """One stage of a grid, resolved: its config, run directory and parent."""

    label: str
    task: str
    model: str
    dataset: str
    overrides: tuple[str, ...]
    cfg: DictConfig
    run_dir: Path
    parent: PlannedStage | None

    def status(self) -> Status:
        """done / running / interrupted / failed / pending, from the run directory."""
        return stage_status(self.run_dir)


def stage_overrides(cli_overrides: Iterable[str]) -> list[str]:
    """The command-line overrides that apply to every stage (launcher keys removed)."""
    keep = []
    for item in cli_overrides:
        key = item.partition("=")[0].lstrip("+~")
        if key.split(".")[0] not in LAUNCH_KEYS:
            keep.append(item)
    return keep


def _pipeline_item(item: Any, dataset: str) -> tuple[str, str, list[str]]:
    if isinstance(item, str):
        return item, dataset, []
    if isinstance(item, Mapping) and "task" in item:
        return str(item["task"]), str(item.get("data", dataset)), list(item.get("overrides", []))
    raise ValueError(f"grid pipeline item {item!r} must be a task name or {{task: ..., ...}}")


def _is_group_choice(item: str) -> bool:
    key = item.partition("=")[0].lstrip("+~")
    return "." not in key


def _applicable(overrides: Sequence[str], cfg: DictConfig) -> list[str]:
    """Value overrides whose key exists in this stage's config (``task.steps`` has no
    meaning for an eval stage); prefixed ones (``+k=v``, ``++k=v``) always apply."""
    keep = []
    for item in overrides:
        key = item.partition("=")[0]
        if _is_group_choice(item) or key.startswith(("+", "~")):
            keep.append(item)
        elif OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
            keep.append(item)
    return keep


_ABSENT = object()


def _seed_axis(value: Any, where: str) -> list[int | None]:
    """Seeds from a count (3 -> 0, 1, 2) or a list; [None] (the config's seed) when unset."""
    if value is None:
        return [None]
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return list(range(value))
    if (isinstance(value, Sequence) and not isinstance(value, str) and value
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
            and len(set(value)) == len(value)):
        return list(value)
    raise ValueError(f"{where}={value!r}: expected a count (seeds=3 runs seeds 0, 1, 2) or a "
                     "list of distinct non-negative integers (seeds=[0,1,2])")


def _cli_seeds(cli_overrides: Sequence[str]) -> list[int | None] | None:
    """The seeds of a ``seeds=...`` command-line override, or None without one."""
    import yaml

    found = None
    for item in cli_overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+~") == "seeds":
            parsed = yaml.safe_load(value)
            found = None if parsed is None else _seed_axis(parsed, "seeds")
    return found


def plan_grid(grid: Mapping[str, Any], cli_overrides: Sequence[str], run_root: Path
              ) -> list[PlannedStage]:
    """Every stage of ``grid`` in dependency order, shared stages listed once."""
    experiments = grid.get("experiments")
    if not experiments:
        raise ValueError(f"grid {grid.get('name')!r} has no experiments")
    base = stage_overrides(cli_overrides)
    cli_seeds = _cli_seeds(cli_overrides)
    plan: dict[Path, PlannedStage] = {}
    used: set[str] = set()
    for experiment in experiments:
        extra = list(experiment.get("overrides", []))
        seeds = cli_seeds if cli_seeds is not None else _seed_axis(
            experiment.get("seeds", grid.get("seeds")), f"grid {grid.get('name')!r} seeds")
        for model, dataset, seed in ((m, d, s) for m in experiment["models"]
                                     for d in experiment["datasets"] for s in seeds):
            # One pipeline per seed: the seed is in every stage's identity, parents included.
            seeded = [] if seed is None else [f"seed={seed}"]
            parent: PlannedStage | None = None
            for item in experiment["pipeline"]:
                task, data, own = _pipeline_item(item, dataset)
                wanted = [*base, *extra, *own, *seeded]
                choices = [f"task={task}", f"model={model}", f"data={data}"]
                skeleton = compose([*choices, *filter(_is_group_choice, wanted)])
                overrides = [*choices, *_applicable(wanted, skeleton)]
                used.update(overrides)
                label = f"{task}:{model}:{data}" + ("" if seed is None else f":seed{seed}")
                if parent is not None:
                    overrides.append(f"task.init_from={parent.run_dir.name}")
                cfg = compose(overrides)
                run_dir = stage_dir(cfg, run_root)
                stage = plan.get(run_dir) or PlannedStage(
                    label=label, task=task, model=model, dataset=data,
                    overrides=tuple(overrides), cfg=cfg, run_dir=run_dir, parent=parent)
                plan.setdefault(run_dir, stage)
                if task in TRAINING_TASKS:
                    parent = stage
    unused = [item for item in base if item not in used]
    if unused:
        raise ValueError(f"override(s) {', '.join(unused)} match no key of any stage's config")
    return list(plan.values())


def format_plan(plan: Sequence[PlannedStage]) -> str:
    """One line per stage: ``<stage_id> <task> <model> <dataset> <status>``."""
    return "\n".join(f"{s.run_dir.name} {s.task} {s.model} {s.dataset} {s.status()}"
                     for s in plan)


def grid_config(cfg: DictConfig) -> dict[str, Any]:
    """The grid section of a composed config, as plain data."""
    return to_plain(cfg.grid)
