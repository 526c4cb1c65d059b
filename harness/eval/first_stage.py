"""Which run's candidates a cross-encoder re-ranks (``task.first_stage``), checked up front.

``task.first_stage`` names either an eval stage directly (its run id,
``eval-<model>-<dataset>-<hash8>``) or a model, meaning the one completed eval stage of that
model on the same dataset and split whose model config is the model's default at this scale.
Every check runs before the cross-encoder scores a single pair: a missing, unfinished or failed
run, a run on another dataset or split, a run that is not an eval stage, or a ``k_test`` larger
than its gallery each raise :class:`FirstStageError`, a one-line message naming the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from harness.eval.results import read_result
from harness.record import RunRecord

#: A stage directory's status (``done``, ``running``, ``failed``, ...): the run store's reader,
#: passed in by the stage runner so that evaluation does not import the launch layer.
StatusOf = Callable[[Path], str]

#: ``task.first_stage`` values meaning the cross-encoder's own contrastive head.
SELF_NAMES = ("self",)


class FirstStageError(ValueError):
    """``task.first_stage`` cannot serve as this evaluation's first stage."""


@dataclass(frozen=True)
class FirstStage:
    """A validated first-stage eval run: its directory and result record."""

    run_dir: Path
    result: RunRecord

    @property
    def name(self) -> str:
        """The run id recorded as ``protocol.first_stage``."""
        return self.run_dir.name


def _candidates(model: str, dataset: str, run_root: Path) -> list[Path]:
    return sorted(p for p in run_root.glob(f"eval-{model}-{dataset}-*") if p.is_dir())


def _named(name: str, model: str, dataset: str, run_root: Path,
           is_default: Callable[[Path], bool], stage_status: StatusOf) -> Path:
    """The run directory ``name`` designates (a run id, or a model's one default eval)."""
    if (run_root / name).is_dir() or name.startswith("eval-"):
        return run_root / name
    runs = [p for p in _candidates(model, dataset, run_root) if is_default(p)]
    done = [p for p in runs if stage_status(p) == "done"]
    if len(done) == 1:
        return done[0]
    if len(done) > 1:
        raise FirstStageError(
            f"task.first_stage={name}: {len(done)} completed eval stages match "
            f"({', '.join(p.name for p in done)}); name one by its run id")
    if runs:  # one exists but is not done: name it, with its status
        return runs[0]
    raise FirstStageError(f"task.first_stage={name}: no eval stage of model {name} on "
                          f"{dataset} under {run_root} (run it first, or name a run id)")


def resolve_first_stage(name: str, run_root: Path, *, dataset: str, split: str, k_test: int,
                        stage_status: StatusOf,
                        is_default: Callable[[Path], bool] = lambda _: True) -> FirstStage:
    """The completed eval run ``name`` designates, checked against this evaluation."""
    run_dir = _named(name, name, dataset, run_root, is_default, stage_status)
    status = "missing" if not run_dir.is_dir() else stage_status(run_dir)
    if status != "done":
        raise FirstStageError(f"task.first_stage={name}: run {run_dir.name} is {status} "
                              f"(under {run_root}); a first stage must be a completed eval")
    try:
        result = read_result(run_dir)
    except ValueError as exc:
        raise FirstStageError(f"task.first_stage={name}: run {run_dir.name} has no valid "
                              f"result ({exc})") from None
    if result.task != "eval":
        raise FirstStageError(f"task.first_stage={name}: run {run_dir.name} is a "
                              f"{result.task} stage, not an eval")
    where = (result.dataset, result.split)
    if where != (dataset, split):
        raise FirstStageError(f"task.first_stage={name}: run {run_dir.name} ranked "
                              f"{where[0]}/{where[1]}, this evaluation is {dataset}/{split}")
    protocol: Mapping[str, Any] = result.protocol
    if protocol.get("first_stage") is not None:
        raise FirstStageError(f"task.first_stage={name}: run {run_dir.name} is itself a "
                              f"re-ranking; a first stage must rank by embeddings")
    gallery = min(int(protocol.get("n_images") or 0), int(protocol.get("n_texts") or 0))
    if k_test > gallery:
        raise FirstStageError(f"task.first_stage={name}: task.k_test={k_test} exceeds the "
                              f"gallery of run {run_dir.name} ({protocol.get('n_images')} "
                              f"images, {protocol.get('n_texts')} texts)")
    return FirstStage(run_dir, result)
