"""Run records seen from the eval side: the names the stage runner and older code use.

The schema itself lives in :mod:`harness.record` (bottom layer); this module keeps the
writer's and reader's entry points under their historical names.
"""

from __future__ import annotations

from pathlib import Path

from harness.record import (
    PROTOCOL_KEYS,
    SCHEMA_VERSION,
    RecordError,
    RunRecord,
    make_record,
    read_record,
    record_problem,
    write_record,
)

__all__ = ["PROTOCOL_KEYS", "REQUIRED_KEYS", "SCHEMA_VERSION", "RecordError", "RunRecord",
           "make_result", "read_result", "result_problem", "write_result"]

#: Keys every record written now carries.
REQUIRED_KEYS = ("schema_version", "stage_id", "grid", "task", "model", "dataset", "split",
                 "scale", "protocol", "metrics", "efficiency", "train", "env", "created_at",
                 "lineage")

make_result = make_record


def write_result(run_dir: Path, record: RunRecord) -> Path:
    """Check and atomically write ``result.json``."""
    return write_record(run_dir, record)


def result_problem(run_dir: Path) -> str | None:
    """Why ``run_dir/result.json`` is not a valid record (missing, truncated, wrong schema or
    another stage's), or None when it is one."""
    return record_problem(run_dir)


def read_result(run_dir: Path) -> RunRecord:
    """The validated record of a stage; :class:`RecordError` naming the file and field."""
    return read_record(run_dir)
