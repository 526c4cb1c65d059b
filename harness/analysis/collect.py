"""Collect run directories into one tidy table: one row per stage, flattened columns.

Layout (``collected.csv``): **one row per stage**, whatever its status, so a failed, running or
never-run stage is a row with its status and empty numbers, never a silent gap. Nested blocks of
``result.json`` become dotted columns:

* identity: ``stage_id run_dir status error grids grid task model dataset split scale regime
  parent overrides created_at has_result``
* ``protocol.<field>`` for every protocol field; ``metric.<key>`` for every metric;
  ``chance.<key>`` for the chance level of a metric
* efficiency summary: ``eff.params_total``, ``eff.params.<tower>``, ``eff.image_flops``,
  ``eff.text_flops``, ``eff.pair_flops`` (FLOPs = 2 x MACs), ``eff.hardware``, ``eff.device``,
  ``eff.precision``, ``eff.measured.<what>_s`` (seconds measured on this split), and per timed
  protocol and mode ``cost.<protocol>.<mode>.{kind,n_images,n_texts,index_s,ranking_s,
  query_i2t_s,query_t2i_s,total_s,status,flops,hardware}`` where ``mode`` is ``dual`` (index + ranking of a
  dual encoder), ``full_scoring`` or ``topk_rerank`` (cross-encoder) and ``status`` is
  ``measured`` or ``extrapolated``
* ``train.steps train.samples_seen train.wall_s train.batch_size train.final_loss.<term>``
* ``label`` (``<task>:<model>:<dataset>``) for stages a grid manifest lists
* ``env.git_sha env.git_dirty env.device env.python env.torch``

Inputs are grid manifests (:mod:`harness.manifest`), run records (:mod:`harness.record`) and
the status markers of each stage directory: no config is composed and no scheduler is asked,
so a stage that started and has no verdict reads ``running`` (``python -m harness.run ...
dry_run=true`` asks SLURM or the lock whether its owner lives).

One row per stage (rather than per stage and metric) because every consumer (tables, figures)
compares stages, and a status belongs to a stage; :func:`costs_long` gives the one-row-per-
(stage, protocol, mode) view that cost tables need.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
import yaml

from harness.atomic import atomic_write_text
from harness.manifest import Manifest, ManifestStage
from harness.record import (
    DONE_MARKER,
    FAILED_MARKER,
    LOCK_FILE,
    RUNNING_MARKER,
    RecordError,
    read_record,
    regime,
)

#: Status of a planned stage whose run directory does not exist (never run or never submitted).
MISSING = "missing"
ID_COLUMNS = ("stage_id", "run_dir", "status", "error", "grids", "grid", "task", "model",
              "dataset", "split", "scale", "regime", "parent", "overrides", "created_at",
              "has_result")
COST_FIELDS = ("kind", "n_images", "n_texts", "index_s", "ranking_s", "query_i2t_s",
               "query_t2i_s", "total_s", "status", "flops", "hardware")
# Choices every stage has; they say which stage it is, not how it differs from its neighbours.
_IDENTITY_OVERRIDE_KEYS = ("task", "model", "data", "task.init_from")


def read_marker(run_dir: Path, marker: str) -> dict[str, Any]:
    """Details stored in a status marker, or an empty dict."""
    loaded = _read_json(run_dir / marker)
    return loaded if isinstance(loaded, dict) else {}


def recorded_state(run_dir: Path) -> tuple[str, str | None]:
    """A stage's status from its files alone, and why when it is not plainly done or pending.

    Unlike the launcher's check, this asks no scheduler and probes no process: a started
    stage without a verdict reads ``running`` unless its marker says it was stopped
    (``interrupted``). ``done`` needs the ``COMPLETE`` marker and a valid record.
    """
    if (run_dir / DONE_MARKER).is_file():
        try:
            read_record(run_dir)
        except RecordError as exc:
            return "interrupted", f"{DONE_MARKER} marker but {exc}"
        return "done", None
    if (run_dir / FAILED_MARKER).is_file():
        return "failed", read_marker(run_dir, FAILED_MARKER).get("error")
    running = read_marker(run_dir, RUNNING_MARKER)
    if running.get("preempted") or running.get("interrupted"):
        return "interrupted", "stopped before it finished (the next run resumes it)"
    if (run_dir / RUNNING_MARKER).is_file() or (run_dir / LOCK_FILE).is_file():
        return "running", ("started, no result yet (the report asks no scheduler whether "
                           "its owner still lives: `python -m harness.run ... dry_run=true` "
                           "does)")
    return "pending", None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a stage directory (a marker, a result or an env record)."""
    names = (DONE_MARKER, FAILED_MARKER, RUNNING_MARKER, LOCK_FILE, "result.json", "env.json")
    return path.is_dir() and any((path / name).exists() for name in names)


def _lineage_from_dirs(run_dir: Path) -> list[tuple[str, str]]:
    """``(task, dataset)`` of each ancestor, nearest first, following ``task.init_from``."""
    chain: list[tuple[str, str]] = []
    seen = {run_dir.name}
    cfg = _read_yaml(run_dir / "resolved.yaml")
    while (parent := (cfg.get("task") or {}).get("init_from")) and parent not in seen:
        seen.add(parent)
        cfg = _read_yaml(run_dir.parent / parent / "resolved.yaml")
        if not cfg:
            chain.append(("?", "?"))
            break
        chain.append((str(cfg["task"]["name"]), str(cfg["data"]["name"])))
    return chain


def _flat(prefix: str, block: Mapping[str, Any] | None) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in (block or {}).items()
            if not isinstance(v, (dict, list))}


def _cost_columns(name: str, cost: Mapping[str, Any]) -> dict[str, Any]:
    """``cost.<protocol>.<mode>.*`` columns of one protocol's timing record."""
    base = {"kind": cost.get("kind"), "n_images": cost.get("n_images"),
            "n_texts": cost.get("n_texts"), "hardware": cost.get("hardware")}
    flops = cost.get("flops") or {}  # whole-protocol FLOPs, where the bench counted them
    modes: dict[str, dict[str, Any]] = {}
    if cost.get("kind") == "dual_encoder":
        query = cost.get("query") or {}
        modes["dual"] = {
            "index_s": (cost.get("index") or {}).get("seconds"),
            "ranking_s": (cost.get("ranking") or {}).get("seconds"),
            "query_i2t_s": (query.get("i2t") or {}).get("median_s"),
            "query_t2i_s": (query.get("t2i") or {}).get("median_s"),
            "total_s": cost.get("total_s"), "status": cost.get("status"),
            "flops": flops.get("total_flops")}
    elif cost.get("kind") == "cross_encoder":
        features = (cost.get("features") or {}).get("seconds")
        for mode in ("full_scoring", "topk_rerank"):
            part = cost.get(mode)
            if not isinstance(part, Mapping):
                continue
            per_query = part.get("per_query_s") or {}
            modes[mode] = {"index_s": features, "ranking_s": None,
                           "query_i2t_s": per_query.get("i2t"),
                           "query_t2i_s": per_query.get("t2i"),
                           "total_s": part.get("total_s"), "status": part.get("status"),
                           "flops": flops.get(f"{mode}_flops")}
    out: dict[str, Any] = {}
    for mode, fields in modes.items():
        out.update({f"cost.{name}.{mode}.{k}": v for k, v in {**base, **fields}.items()})
    return out


def _efficiency_columns(eff: Mapping[str, Any]) -> dict[str, Any]:
    params = eff.get("params") or {}
    flops = eff.get("flops") or {}
    row: dict[str, Any] = {
        "eff.params_total": params.get("total"),
        **{f"eff.params.{k}": v for k, v in params.items() if k != "total"},
        "eff.image_flops": flops.get("image_encode_flops"),
        "eff.text_flops": flops.get("text_encode_flops"),
        "eff.pair_flops": flops.get("pair_score_flops"),
        "eff.flops_count_mode": flops.get("count_mode"),
        "eff.hardware": eff.get("hardware"), "eff.device": eff.get("device"),
        "eff.precision": eff.get("precision"),
        **_flat("eff.measured.", eff.get("measured")),
    }
    for name, cost in (eff.get("protocols") or {}).items():
        if isinstance(cost, Mapping):
            row.update(_cost_columns(str(name), cost))
    return row


def _env_columns(env: Mapping[str, Any]) -> dict[str, Any]:
    git = env.get("git") or {}
    device = env.get("device") or {}
    described = device.get("gpu") or device.get("processor") or device.get("platform")
    return {"env.git_sha": git.get("sha"), "env.git_dirty": git.get("dirty"),
            "env.device": described, "env.python": env.get("python"),
            "env.torch": (env.get("packages") or {}).get("torch")}


def _train_columns(train: Mapping[str, Any]) -> dict[str, Any]:
    row = _flat("train.", train)
    row.update({f"train.final_loss.{k}": v
                for k, v in (train.get("final_losses") or {}).items()})
    return row


def result_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten one ``result.json`` record into collected columns (no status, no lineage)."""
    row: dict[str, Any] = {key: result.get(key) for key in
                           ("stage_id", "grid", "task", "model", "dataset", "split", "scale",
                            "created_at")}
    row.update(_flat("protocol.", result.get("protocol")))
    row.update(_flat("metric.", result.get("metrics")))
    row.update(_flat("chance.", result.get("chance")))
    row.update(_efficiency_columns(result.get("efficiency") or {}))
    row.update(_train_columns(result.get("train") or {}))
    row.update(_env_columns(result.get("env") or {}))
    return row


def _own_overrides(items: Iterable[str]) -> list[str]:
    """Overrides that say how a stage differs, not which stage it is."""
    return [item for item in items
            if item.partition("=")[0].lstrip("+~") not in _IDENTITY_OVERRIDE_KEYS]


def read_stage(run_dir: Path) -> dict[str, Any]:
    """One collected row for a stage directory, whatever its status (files only)."""
    status, why = recorded_state(run_dir) if run_dir.is_dir() else (MISSING, None)
    row: dict[str, Any] = {"stage_id": run_dir.name, "run_dir": str(run_dir), "status": status,
                           "error": None, "has_result": False}
    if status == "failed":
        info = read_marker(run_dir, FAILED_MARKER)
        row["error"] = info.get("error") or "failed (no error recorded)"
    elif status in ("interrupted", "running"):
        row["error"] = why
    record = read_record(run_dir) if status == "done" else None
    if record is not None:
        row.update(result_row(record.to_json()), has_result=True)
    elif run_dir.is_dir():
        cfg = _read_yaml(run_dir / "resolved.yaml")
        row.update({"task": (cfg.get("task") or {}).get("name"),
                    "model": (cfg.get("model") or {}).get("name"),
                    "dataset": (cfg.get("data") or {}).get("name"),
                    "scale": (cfg.get("scale") or {}).get("name")})
        row.update(_env_columns(_read_json(run_dir / "env.json") or {}))
    if record is not None and record.lineage is not None:
        # Schema 2: the record says where the stage sits; no config file is read.
        parents = record.lineage.parents
        row["parent"] = parents[0].stage_id if parents else None
        row["regime"] = record.regime()
        row["overrides"] = "; ".join(_own_overrides(record.lineage.overrides))
        return row
    cfg = _read_yaml(run_dir / "resolved.yaml")  # schema 1 or no record: the stage's config
    parent = (cfg.get("task") or {}).get("init_from")
    row["parent"] = Path(str(parent)).name if parent else None
    if row.get("dataset"):
        row["regime"] = regime(str(row["dataset"]), _lineage_from_dirs(run_dir))
    return row


def lineage_overrides(stage: ManifestStage, stages: Sequence[ManifestStage]) -> list[str]:
    """The grid overrides of a stage and its ancestors in ``stages`` (identity choices left
    out)."""
    by_id = {s.stage_id: s for s in stages}
    out: list[str] = []
    node: ManifestStage | None = stage
    seen: set[str] = set()
    while node is not None and node.stage_id not in seen:
        seen.add(node.stage_id)
        out += [item for item in _own_overrides(node.overrides) if item not in out]
        node = by_id.get(node.parent) if node.parent else None
    return out


def _chain(stage: ManifestStage, stages: Sequence[ManifestStage]) -> list[ManifestStage]:
    by_id = {s.stage_id: s for s in stages}
    chain: list[ManifestStage] = []
    node = by_id.get(stage.parent) if stage.parent else None
    while node is not None and node not in chain:
        chain.append(node)
        node = by_id.get(node.parent) if node.parent else None
    return chain


def _planned_row(stage: ManifestStage, stages: Sequence[ManifestStage], run_root: Path
                 ) -> dict[str, Any]:
    row = read_stage(Path(run_root) / stage.stage_id)
    chain = _chain(stage, stages)
    planned = {"task": stage.task, "model": stage.model, "dataset": stage.dataset,
               "scale": stage.scale, "split": stage.split, "parent": stage.parent}
    for key, value in planned.items():
        if row.get(key) is None:
            row[key] = value
    row["label"] = stage.label
    lineage = [(s.task, s.dataset) for s in chain]
    if stage.parent is not None and not chain:
        # A parent outside this manifest (run by another grid): its directory name,
        # <task>-<model>-<dataset>-<hash8>, says what it trained on, which is all the regime
        # needs (the nearest training stage decides it).
        parts = stage.parent.split("-")
        lineage = [(parts[0], parts[2])] if len(parts) == 4 else [("?", "?")]
    row["regime"] = regime(stage.dataset, lineage)
    row["overrides"] = "; ".join(lineage_overrides(stage, stages))
    if row["status"] == MISSING:
        row["error"] = _other_configs(stage, Path(run_root))
    return row


def _other_configs(stage: ManifestStage, root: Path) -> str | None:
    """Names of finished runs of the same task, model and dataset under another config."""
    prefix = f"{stage.task}-{stage.model}-{stage.dataset}-"
    others = sorted(p.name for p in root.glob(f"{prefix}*") if p.is_dir()) \
        if root.is_dir() else []
    if not others:
        return None
    return f"runs of this stage under other configs exist: {', '.join(others[:3])}"


def _frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    rows = list(rows)
    extra = sorted({k for row in rows for k in row} - set(ID_COLUMNS))
    df = pd.DataFrame(rows, columns=[*ID_COLUMNS, *extra])
    return df.astype({"has_result": bool}).reset_index(drop=True)


def collect_plan(stages: Sequence[ManifestStage], grid: str, run_root: Path) -> pd.DataFrame:
    """Exactly the stages of one grid, in manifest order; absent ones are ``missing``."""
    rows = []
    for stage in stages:
        row = _planned_row(stage, stages, run_root)
        row["grids"] = grid
        rows.append(row)
    return _frame(rows)


def collect_manifest(manifest: Manifest, run_root: Path | None = None) -> pd.DataFrame:
    """The stages of one grid manifest (under ``run_root``, default the manifest's own)."""
    root = Path(run_root) if run_root is not None else Path(manifest.run_root)
    return collect_plan(manifest.stages, manifest.grid, root)


def collect(run_root: Path, manifests: Mapping[str, Manifest] | None = None) -> pd.DataFrame:
    """Every stage directory under ``run_root`` plus every stage of ``manifests``, one row
    each; ``grids`` names the manifests that list a stage."""
    rows: dict[str, dict[str, Any]] = {}
    grids: dict[str, list[str]] = {}
    for name, manifest in (manifests or {}).items():
        for stage in manifest.stages:
            grids.setdefault(stage.stage_id, []).append(name)
            if stage.stage_id not in rows:
                rows[stage.stage_id] = _planned_row(stage, manifest.stages, run_root)
    root = Path(run_root)
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name not in rows and is_run_dir(path):
            rows[path.name] = read_stage(path)
    for stage_id, row in rows.items():
        row["grids"] = " ".join(grids.get(stage_id, [])) or None
    return _frame(rows.values())


def costs_long(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (stage, timed protocol, mode) from the ``cost.*`` columns of ``df``."""
    keys = sorted({tuple(c.split(".")[1:3]) for c in df.columns
                   if c.startswith("cost.") and c.count(".") >= 3})
    out = []
    for _, row in df.iterrows():
        for protocol, mode in keys:
            values = {f: row.get(f"cost.{protocol}.{mode}.{f}") for f in COST_FIELDS}
            if not pd.isna(values["total_s"]):
                out.append({"stage_id": row["stage_id"], "model": row["model"],
                            "protocol": protocol, "mode": mode, **values})
    return pd.DataFrame(out, columns=["stage_id", "model", "protocol", "mode", *COST_FIELDS])


def _number(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def eval_run_seconds(row: Mapping[str, Any]) -> tuple[float | None, float | None, float | None]:
    """``(index_s, rank_s, total_s)`` an eval stage measured on its own split, ``None`` if not.

    Dual encoders record their encode and rank seconds; cross-encoders their features,
    pair scoring and ranking, with the sum as ``total_s``.
    """
    index = _number(row.get("eff.measured.encode_s"))
    if index is None:
        index = _number(row.get("eff.measured.features_s"))
    rank = _number(row.get("eff.measured.rank_s"))
    total = _number(row.get("eff.measured.total_s"))
    if total is None and index is not None:
        total = index + (rank or 0.0)
    return index, rank, total


def write_collected(df: pd.DataFrame, path: Path) -> Path:
    """Write the collected table as CSV (atomic); returns ``path``."""
    atomic_write_text(Path(path), df.to_csv(index=False))
    return Path(path)
