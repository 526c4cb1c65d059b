"""Published numbers (results/paper/*.csv): loading, schema validation and derived RSUM.

The CSVs are long format, one row per published number; see results/paper/README.md for the
meaning of each column and for the provenance caveats behind every ``status``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd

from harness.resources import locate

COLUMNS: tuple[str, ...] = (
    "table", "model", "dataset", "split", "protocol", "direction", "k", "value",
    "pretrain_pairs", "source", "status",
)
# Weakest first: a derived number is only as trustworthy as its weakest input.
STATUS_ORDER: tuple[str, ...] = ("assumed", "recalled", "sourced")
RECALL_DIRECTIONS: frozenset[str] = frozenset({"i2t", "t2i"})
CLAIM_DIRECTIONS: frozenset[str] = frozenset({
    "inference_time_ratio",   # fraction of a one-stream model's inference time (3/1000 -> 0.003)
    "inference_speedup",      # "N x faster" than one-stream models
    "image_retrieval_delta",  # improvement printed with a % sign, in the units it was printed
    "text_matching_delta",
})
RECALL_KS: frozenset[int] = frozenset({1, 5, 10})
KEY: tuple[str, ...] = ("table", "model", "dataset", "protocol", "direction", "k")
RSUM_GROUP: tuple[str, ...] = ("table", "model", "dataset", "split", "protocol")


def default_paper_dir() -> Path:
    """The checkout's results/paper, else the installed package's copy; raises naming both."""
    return locate("published numbers", "results/paper", "paper")


def _where(path: Path, row: int) -> str:
    # Row 1 is the first data row; the header is line 1, so data row n sits on line n + 1.
    return f"{path}: row {row} (line {row + 1})"


def _parse_int(text: str, what: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{where}: {what} must be an integer, got {text!r}") from None


def _validate_row(rec: dict[str, str], where: str) -> dict[str, object]:
    """Check one raw CSV record and return it with typed value, k and pretrain_pairs."""
    for col in ("table", "model", "direction", "value", "source", "status"):
        if not rec[col].strip():
            raise ValueError(f"{where}: column {col!r} is empty")
    status = rec["status"]
    if status not in STATUS_ORDER:
        raise ValueError(f"{where}: status {status!r} is not one of {list(STATUS_ORDER)}")
    direction = rec["direction"]
    if direction not in RECALL_DIRECTIONS | CLAIM_DIRECTIONS:
        allowed = sorted(RECALL_DIRECTIONS | CLAIM_DIRECTIONS)
        raise ValueError(f"{where}: direction {direction!r} is not one of {allowed}")
    try:
        value = float(rec["value"])
    except ValueError:
        raise ValueError(f"{where}: value must be a number, got {rec['value']!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: value must be finite, got {rec['value']!r}")

    k: int | None = None
    if direction in RECALL_DIRECTIONS:
        for col in ("dataset", "split", "protocol"):
            if not rec[col].strip():
                raise ValueError(f"{where}: column {col!r} is empty on a recall row")
        k = _parse_int(rec["k"], "k", where)
        if k not in RECALL_KS:
            raise ValueError(f"{where}: k must be one of {sorted(RECALL_KS)}, got {k}")
        if not 0.0 <= value <= 100.0:
            raise ValueError(f"{where}: recall value must lie in [0, 100], got {value}")
    elif rec["k"].strip():
        raise ValueError(f"{where}: k must be empty on a claim row ({direction}), got {rec['k']!r}")

    pairs: int | None = None
    if rec["pretrain_pairs"].strip():
        pairs = _parse_int(rec["pretrain_pairs"], "pretrain_pairs", where)
        if pairs <= 0:
            raise ValueError(f"{where}: pretrain_pairs must be positive, got {pairs}")
    return {**rec, "value": value, "k": k, "pretrain_pairs": pairs}


def _read_file(path: Path) -> list[tuple[dict[str, object], str]]:
    """Read and validate one CSV; return its typed rows, each with its location for messages."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: file is empty (expected header {','.join(COLUMNS)})")
        if tuple(header) != COLUMNS:
            missing = [c for c in COLUMNS if c not in header]
            extra = [c for c in header if c not in COLUMNS]
            raise ValueError(
                f"{path}: row 0 (line 1, header): columns must be exactly {list(COLUMNS)}; "
                f"got {header} (missing {missing}, unexpected {extra})"
            )
        out = []
        for n, cells in enumerate(reader, start=1):
            where = _where(path, n)
            if len(cells) != len(COLUMNS):
                raise ValueError(f"{where}: expected {len(COLUMNS)} fields, got {len(cells)}")
            out.append((_validate_row(dict(zip(COLUMNS, cells, strict=True)), where), where))
    return out


def load_paper_numbers(paper_dir: Path | None = None) -> pd.DataFrame:
    """Read and validate every results/paper/*.csv; raise ValueError naming file and row."""
    root = Path(paper_dir) if paper_dir is not None else default_paper_dir()
    files = sorted(root.glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no published-number CSVs (*.csv) under {root}")
    rows: list[dict[str, object]] = []
    seen: dict[tuple[object, ...], str] = {}
    for path in files:
        for row, where in _read_file(path):
            key = tuple(row[c] for c in KEY)
            if key in seen:
                shown = ", ".join(f"{c}={v!r}" for c, v in zip(KEY, key, strict=True))
                raise ValueError(f"{where}: duplicate key ({shown}), first seen at {seen[key]}")
            seen[key] = where
            rows.append(row)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["value"] = df["value"].astype(float)
    df["k"] = df["k"].astype("Int64")
    df["pretrain_pairs"] = df["pretrain_pairs"].astype("Int64")
    return df


def weakest_status(statuses: list[str] | pd.Series) -> str:
    """Return the least certain status among the given ones (assumed < recalled < sourced)."""
    return min(statuses, key=STATUS_ORDER.index)


def paper_rsum(df: pd.DataFrame) -> pd.DataFrame:
    """Derive RSUM per (table, model, dataset, split, protocol) where all six recalls exist."""
    cols = [*RSUM_GROUP, "rsum", "status", "pretrain_pairs"]
    rec = df[df["direction"].isin(RECALL_DIRECTIONS)]
    out = []
    for group, sub in rec.groupby(list(RSUM_GROUP), sort=True, dropna=False):
        present = set(zip(sub["direction"], sub["k"].astype(int), strict=True))
        if present != {(d, k) for d in RECALL_DIRECTIONS for k in RECALL_KS} or len(sub) != 6:
            continue
        pairs = sub["pretrain_pairs"].dropna()
        out.append({
            **dict(zip(RSUM_GROUP, group, strict=True)),
            # Inputs are printed to 0.1; rounding removes float noise such as 555.0000000001.
            "rsum": round(float(sub["value"].sum()), 6),
            "status": weakest_status(sub["status"]),
            "pretrain_pairs": pairs.iloc[0] if len(pairs) else pd.NA,
        })
    result = pd.DataFrame(out, columns=cols)
    result["pretrain_pairs"] = result["pretrain_pairs"].astype("Int64")
    return result.reset_index(drop=True)
