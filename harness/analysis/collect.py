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
* ``env.git_sha env.git_dirty env.device env.python env.torch``

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

from harness.launch.grid import TRAINING_TASKS, PlannedStage
from harness.launch.lock import LOCK_FILE
from harness.launch.store import (
    DONE_MARKER,
    FAILED_MARKER,
    RUNNING_MARKER,
    atomic_write_text,
    read_marker,
    stage_state,
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


def regime(dataset: str, lineage: Sequence[tuple[str, str]]) -> str | None:
    """``finetuned`` / ``zeroshot`` / ``transfer:<data>`` from the nearest training ancestor."""
    for task, data in lineage:
        if task == "finetune":
            return "finetuned" if data == dataset else f"transfer:{data}"
        if task == "pretrain":
            return "zeroshot"
    return None


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


def read_stage(run_dir: Path) -> dict[str, Any]:
    """One collected row for a stage directory, whatever its status."""
    status, why = stage_state(run_dir) if run_dir.is_dir() else (MISSING, None)
    row: dict[str, Any] = {"stage_id": run_dir.name, "run_dir": str(run_dir), "status": status,
                           "error": None, "has_result": False}
    if status == "failed":
        info = read_marker(run_dir, FAILED_MARKER)
        row["error"] = info.get("error") or "failed (no error recorded)"
    elif status == "interrupted":
        row["error"] = why
    result = _read_json(run_dir / "result.json") if status == "done" else None
    if result is not None:
        row.update(result_row(result), has_result=True)
    elif status == "done":
        row["error"] = "COMPLETE marker but result.json is missing or unreadable"
    if result is None and run_dir.is_dir():
        cfg = _read_yaml(run_dir / "resolved.yaml")
        row.update({"task": (cfg.get("task") or {}).get("name"),
                    "model": (cfg.get("model") or {}).get("name"),
                    "dataset": (cfg.get("data") or {}).get("name"),
                    "scale": (cfg.get("scale") or {}).get("name")})
        row.update(_env_columns(_read_json(run_dir / "env.json") or {}))
    cfg = _read_yaml(run_dir / "resolved.yaml")
    row["parent"] = (cfg.get("task") or {}).get("init_from")
    if row.get("dataset"):
        row["regime"] = regime(str(row["dataset"]), _lineage_from_dirs(run_dir))
    return row


def lineage_overrides(stage: PlannedStage) -> list[str]:
    """The grid overrides of a stage and its ancestors (identity choices left out)."""
    out: list[str] = []
    node: PlannedStage | None = stage
    while node is not None:
        for item in node.overrides:
            key = item.partition("=")[0].lstrip("+~")
            if key not in _IDENTITY_OVERRIDE_KEYS and item not in out:
                out.append(item)
        node = node.parent
    return out


def _planned_row(stage: PlannedStage) -> dict[str, Any]:
    row = read_stage(stage.run_dir)
    chain, node = [], stage.parent
    while node is not None:
        chain.append((node.task, node.dataset))
        node = node.parent
    split = stage.cfg.task.get("split") if stage.task not in TRAINING_TASKS else None
    planned = {"task": stage.task, "model": stage.model, "dataset": stage.dataset,
               "scale": stage.cfg.scale.name, "split": split,
               "parent": stage.parent.run_dir.name if stage.parent else None}
    for key, value in planned.items():
        if row.get(key) is None:
            row[key] = value
    row["regime"] = regime(stage.dataset, chain)
    row["overrides"] = "; ".join(lineage_overrides(stage))
    if row["status"] == MISSING:
        row["error"] = _other_configs(stage)
    return row


def _other_configs(stage: PlannedStage) -> str | None:
    """Names of finished runs of the same task, model and dataset under another config."""
    prefix = f"{stage.task}-{stage.model}-{stage.dataset}-"
    root = stage.run_dir.parent
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


def collect_plan(plan: Sequence[PlannedStage], grid: str) -> pd.DataFrame:
    """Exactly the stages of one planned grid, in plan order; absent ones are ``missing``."""
    rows = []
    for stage in plan:
        row = _planned_row(stage)
        row["grids"] = grid
        rows.append(row)
    return _frame(rows)


def collect(run_root: Path, plans: Mapping[str, Sequence[PlannedStage]] | None = None
            ) -> pd.DataFrame:
    """Every stage directory under ``run_root`` plus every planned stage, one row each."""
    rows: dict[str, dict[str, Any]] = {}
    grids: dict[str, list[str]] = {}
    for name, plan in (plans or {}).items():
        for stage in plan:
            grids.setdefault(stage.run_dir.name, []).append(name)
            if stage.run_dir.name not in rows:
                rows[stage.run_dir.name] = _planned_row(stage)
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
