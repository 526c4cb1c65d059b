"""Grid manifests (``<run_root>/.grids/<grid>-<time>.json``): what one grid run planned.

Every executor writes one when it starts a grid (local runs and SLURM submissions alike):
the grid's own config section, the command-line overrides, and per stage its id, label,
task, model, dataset, scale, evaluated split, parent and overrides (its lineage). The report
reads manifests and run records only, so it never composes a config or asks a scheduler;
the newest manifest of a grid wins. Bottom layer: standard library and :mod:`harness.atomic`.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.atomic import atomic_write_json

MANIFEST_VERSION = 1
MANIFEST_DIR = ".grids"


class ManifestError(ValueError):
    """A manifest that is unreadable or malformed; the message names the file and field."""


class LegacyManifest(ManifestError):
    """A manifest written before manifests carried lineage (no ``manifest_version``)."""


@dataclass(frozen=True)
class ManifestStage:
    """One planned stage of a grid, as the report needs it."""

    stage_id: str
    label: str
    task: str
    model: str
    dataset: str
    scale: str | None = None
    split: str | None = None           # evaluated split (eval stages), else None
    parent: str | None = None          # stage id of the training stage it starts from
    overrides: tuple[str, ...] = ()    # the stage's own overrides (task/model/data included)
    submission: dict[str, Any] = field(default_factory=dict)  # executor's details (job id, log)

    def to_json(self) -> dict[str, Any]:
        """The stage's entry in the manifest's ``stages`` object (keyed by stage id)."""
        return {"label": self.label, "task": self.task, "model": self.model,
                "dataset": self.dataset, "scale": self.scale, "split": self.split,
                "parent": self.parent, "overrides": list(self.overrides), **self.submission}


@dataclass(frozen=True)
class Manifest:
    """One grid run: the grid's config, its overrides and its stages in dependency order."""

    grid: str
    created_at: str
    executor: str
    run_root: str
    grid_config: dict[str, Any]
    overrides: tuple[str, ...]
    stages: tuple[ManifestStage, ...]
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest as written."""
        return {"manifest_version": MANIFEST_VERSION, "grid": self.grid,
                "created_at": self.created_at, "executor": self.executor,
                "run_root": self.run_root, "grid_config": self.grid_config,
                "overrides": list(self.overrides),
                # JSON objects are written with sorted keys: the plan's order is kept here.
                "order": [s.stage_id for s in self.stages],
                "stages": {s.stage_id: s.to_json() for s in self.stages}}


def stamp() -> str:
    """Time stamp of a manifest's file name (microseconds: two grids in one second differ)."""
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def write_manifest(run_root: Path, manifest: Manifest, when: str | None = None) -> Path:
    """Write ``<run_root>/.grids/<grid>-<time>.json`` atomically; returns its path."""
    path = Path(run_root) / MANIFEST_DIR / f"{manifest.grid}-{when or stamp()}.json"
    atomic_write_json(path, manifest.to_json())
    return path


def _need(data: Mapping[str, Any], key: str, kind: type, where: str, name: str) -> Any:
    if key not in data:
        raise ManifestError(f"{where}: field {name}: missing")
    value = data[key]
    if not isinstance(value, kind):
        raise ManifestError(f"{where}: field {name}: expected {kind.__name__}, "
                            f"got {type(value).__name__}")
    return value


def _optional_text(data: Mapping[str, Any], key: str, where: str, name: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ManifestError(f"{where}: field {name}: expected a string or null, "
                            f"got {type(value).__name__}")
    return value


def _stage(stage_id: str, entry: Any, where: str) -> ManifestStage:
    name = f"stages.{stage_id}"
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: field {name}: expected an object")
    texts = {key: _need(entry, key, str, where, f"{name}.{key}")
             for key in ("label", "task", "model", "dataset")}
    overrides = _need(entry, "overrides", list, where, f"{name}.overrides")
    known = {"label", "task", "model", "dataset", "scale", "split", "parent", "overrides"}
    return ManifestStage(
        stage_id=stage_id, **texts,
        scale=_optional_text(entry, "scale", where, f"{name}.scale"),
        split=_optional_text(entry, "split", where, f"{name}.split"),
        parent=_optional_text(entry, "parent", where, f"{name}.parent"),
        overrides=tuple(str(o) for o in overrides),
        submission={k: v for k, v in entry.items() if k not in known})


def read_manifest(path: Path) -> Manifest:
    """A checked manifest; :class:`ManifestError` naming the file and field otherwise."""
    where = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{where}: not a readable JSON manifest ({exc})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: not a JSON object")
    if "manifest_version" not in data:
        raise LegacyManifest(f"{where}: field manifest_version: missing (written before grids "
                             f"recorded their stages' lineage: rerun the grid, done stages "
                             f"are skipped)")
    version = data["manifest_version"]
    if version != MANIFEST_VERSION:
        raise ManifestError(f"{where}: field manifest_version: {version!r}, this harness "
                            f"reads {MANIFEST_VERSION}")
    stages = _need(data, "stages", dict, where, "stages")
    order = _need(data, "order", list, where, "order")
    if sorted(order) != sorted(stages):
        raise ManifestError(f"{where}: field order: lists {sorted(order)}, but stages holds "
                            f"{sorted(stages)}")
    return Manifest(
        grid=_need(data, "grid", str, where, "grid"),
        created_at=_need(data, "created_at", str, where, "created_at"),
        executor=_need(data, "executor", str, where, "executor"),
        run_root=_need(data, "run_root", str, where, "run_root"),
        grid_config=_need(data, "grid_config", dict, where, "grid_config"),
        overrides=tuple(_need(data, "overrides", list, where, "overrides")),
        stages=tuple(_stage(sid, stages[sid], where) for sid in order),
        path=Path(path))


def manifest_files(run_root: Path) -> list[Path]:
    """Every manifest file under ``<run_root>/.grids``, oldest first by name."""
    folder = Path(run_root) / MANIFEST_DIR
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def newest_manifests(run_root: Path, grids: Iterable[str] | None = None
                     ) -> dict[str, Manifest]:
    """The newest readable manifest of each grid (of ``grids`` only, when given).

    Newest by ``created_at``, then by file name. Legacy files (no ``manifest_version``) are
    skipped, so a run root that predates them still reports the grids rerun since; any other
    malformed manifest raises :class:`ManifestError` rather than letting an older one win.
    """
    wanted = set(grids) if grids is not None else None
    newest: dict[str, Manifest] = {}
    for path in manifest_files(run_root):
        try:
            manifest = read_manifest(path)
        except LegacyManifest:
            continue
        if wanted is not None and manifest.grid not in wanted:
            continue
        best = newest.get(manifest.grid)
        key = (manifest.created_at, path.name)
        if best is None or key >= (best.created_at, best.path.name if best.path else ""):
            newest[manifest.grid] = manifest
    return newest
