"""The ``result.json`` schema: one record per stage, written here and validated before use."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Mapping

from harness.atomic import atomic_write_json

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema_version", "stage_id", "grid", "task", "model", "dataset", "split",
                 "scale", "protocol", "metrics", "efficiency", "train", "env", "created_at")
PROTOCOL_KEYS = ("dataset", "split", "n_images", "n_texts", "image_size", "max_text_len",
                 "first_stage", "k_test", "fusion", "precision", "eval_batch_size", "world_size")


def make_result(*, stage_id: str, grid: str | None, task: str, model: str, dataset: str,
                split: str | None, scale: str, protocol: Mapping[str, Any] | None = None,
                metrics: Mapping[str, float] | None = None,
                efficiency: Mapping[str, Any] | None = None,
                train: Mapping[str, Any] | None = None, env: Mapping[str, Any] | None = None,
                extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A complete result record; protocol fields that do not apply are present and None."""
    full_protocol = {key: None for key in PROTOCOL_KEYS}
    full_protocol.update(protocol or {})
    return {
        "schema_version": SCHEMA_VERSION, "stage_id": stage_id, "grid": grid, "task": task,
        "model": model, "dataset": dataset, "split": split, "scale": scale,
        "protocol": full_protocol, "metrics": dict(metrics or {}),
        "efficiency": dict(efficiency or {}), "train": dict(train or {}), "env": dict(env or {}),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **dict(extra or {}),
    }


def write_result(run_dir: Path, result: Mapping[str, Any]) -> Path:
    """Validate and atomically write ``result.json``."""
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise ValueError(f"result for {run_dir} lacks keys {missing}")
    path = run_dir / "result.json"
    atomic_write_json(path, result)
    return path


def result_problem(run_dir: Path) -> str | None:
    """Why ``run_dir/result.json`` is not a valid record (missing, truncated, wrong schema or
    another stage's), or None when it is one."""
    path = run_dir / "result.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "result.json is missing"
    except (OSError, UnicodeDecodeError) as exc:
        return f"result.json is unreadable ({exc})"
    try:
        record = json.loads(text)
    except ValueError as exc:
        return f"result.json is not valid JSON ({exc})"
    if not isinstance(record, dict):
        return "result.json is not a JSON object"
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        return f"result.json lacks keys {missing}"
    if record["schema_version"] != SCHEMA_VERSION:
        return (f"result.json has schema_version {record['schema_version']!r}, "
                f"expected {SCHEMA_VERSION}")
    if record["stage_id"] != run_dir.name:
        return f"result.json belongs to stage {record['stage_id']!r}"
    return None


def read_result(run_dir: Path) -> dict[str, Any]:
    """The validated record of a stage; ValueError naming the file and the problem otherwise."""
    problem = result_problem(run_dir)
    if problem is not None:
        raise ValueError(f"{run_dir}: {problem}")
    return json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
