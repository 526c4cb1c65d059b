"""Table cells and paper joins: the shared layer below the table and figure builders.

Formatting of numbers and statuses, the published-row index, and the protocol keys a harness
row joins a published row on. :mod:`harness.analysis.tables`, ``cost_tables`` and ``plots``
import from here and never from each other's builders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from harness.analysis.paper import paper_rsum
from harness.record import Intervals, RecordError, read_record

RECALL_KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10")
METRICS = (*RECALL_KEYS, "rsum")
RETRIEVAL_TASKS = ("eval",)       # stages that measure recall
COST_TASKS = ("eval", "bench")    # stages whose efficiency block may time protocols
STATUS_MARK = {"sourced": "", "recalled": "†", "assumed": "‡"}
LEGEND = ("Paper numbers: unmarked = sourced, † = recalled (not verified against the primary "
          "PDF), ‡ = assumed; a derived RSUM carries the weakest mark of its six inputs "
          "(results/paper/*.csv).")
#: Harness model -> the published model it reproduces. The CLIP-style and single-stream
#: baselines are stand-ins for a model family, not any published model, so they have none.
PAPER_MODEL: dict[str, str] = {"cookie": "COOKIE"}
PAPER_SPLIT: dict[str, str] = {"test": "karpathy_test"}
#: (dataset, test images) -> gallery suffix of the published protocol name.
PAPER_GALLERY: dict[tuple[str, int], str] = {("coco", 5000): "5k", ("coco", 1000): "1k",
                                             ("flickr30k", 1000): "1k"}
DATASET_LABEL = {"coco": "COCO", "flickr30k": "Flickr30K"}


def paper_protocol(dataset: Any, split: Any, n_images: Any, regime: Any
                   ) -> tuple[str, str] | None:
    """``(paper split, paper protocol)`` a harness row joins, or None when it has no counterpart."""
    if split not in PAPER_SPLIT or missing(n_images):
        return None
    size = PAPER_GALLERY.get((str(dataset), int(n_images)))
    prefix = {"finetuned": "finetuned", "zeroshot": "zeroshot"}.get(str(regime))
    if size is None or prefix is None:
        return None
    return PAPER_SPLIT[str(split)], f"{prefix}_{size}"


@dataclass
class PaperRow:
    """One published model's recalls under one protocol, with each number's status."""

    table: str
    model: str
    values: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    pretrain_pairs: Any = None

    def status(self) -> str:
        """The weakest status of the row's numbers."""
        order = list(STATUS_MARK)[::-1]  # assumed < recalled < sourced
        return min(self.statuses.values(), key=order.index, default="sourced")

    def cell(self, metric: str) -> str:
        """The published number as printed (one decimal) with its status mark."""
        if metric not in self.values:
            return ""
        return f"{self.values[metric]:.1f}{STATUS_MARK[self.statuses[metric]]}"


PaperKey = tuple[str, str, str, str]  # (model, dataset, split, protocol)


def paper_index(paper: pd.DataFrame) -> dict[PaperKey, PaperRow]:
    """Published recall rows keyed by (model, dataset, split, protocol), in file order."""
    index: dict[PaperKey, PaperRow] = {}
    recalls = paper[paper["direction"].isin(("i2t", "t2i"))]
    for rec in recalls.itertuples(index=False):
        key = (rec.model, rec.dataset, rec.split, rec.protocol)
        row = index.setdefault(key, PaperRow(rec.table, rec.model,
                                             pretrain_pairs=rec.pretrain_pairs))
        metric = f"{rec.direction}_R@{int(rec.k)}"
        row.values[metric], row.statuses[metric] = float(rec.value), rec.status
    for rec in paper_rsum(paper).itertuples(index=False):
        key = (rec.model, rec.dataset, rec.split, rec.protocol)
        if key in index:
            index[key].values["rsum"], index[key].statuses["rsum"] = rec.rsum, rec.status
    return index


def status_text(row: Mapping[str, Any]) -> str:
    """What a row without numbers says instead: its stage status, and why."""
    status = row.get("status")
    if status == "done" and row.get("has_result"):
        return "done"
    error = "" if missing(row.get("error")) else str(row.get("error"))  # NaN: no error
    reason = {"missing": "missing: never run (no run directory)"
                         + (f"; {error}" if error else ""),
              "pending": "pending: not started", "running": "running: no result yet",
              "interrupted": f"interrupted (reruns next time): {error}",
              "failed": f"failed: {error if len(error) <= 90 else error[:89] + '…'}", "done": f"no result: {error}"}
    return reason.get(str(status), str(status))


def has_numbers(row: Mapping[str, Any]) -> bool:
    """Whether a collected row carries a result to print."""
    return row.get("status") == "done" and bool(row.get("has_result"))


def missing(value: Any) -> bool:
    """Whether a cell value is absent (None or NaN)."""
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def num(value: Any, digits: int = 2) -> str:
    """A number as text with ``digits`` decimals, or empty for a missing value."""
    return "" if missing(value) else f"{float(value):.{digits}f}"


def sig(value: Any, digits: int = 3) -> str:
    """A number to ``digits`` significant figures, never in exponent form; empty if missing."""
    if missing(value):
        return ""
    value = float(value)
    if value == 0 or abs(value) >= 10 ** (digits - 1):
        return f"{value:.0f}"
    return f"{value:.{digits}g}" if abs(value) >= 1e-4 else f"{value:.1e}"


def text(value: Any, empty: str = "—") -> str:
    """A cell value as text; ``empty`` for None or NaN."""
    return empty if missing(value) else str(value)


def gallery(row: Mapping[str, Any]) -> str:
    """``<n> img / <m> txt`` of the evaluated split, or a dash without a result."""
    n_img, n_txt = row.get("protocol.n_images"), row.get("protocol.n_texts")
    if missing(n_img):
        return "—"
    return f"{int(n_img)} img / {int(n_txt)} txt"


def distinguishing_overrides(rows: pd.DataFrame) -> dict[str, str]:
    """Per stage id, the overrides (own and ancestors') not shared by every row of the table."""
    sets = {r["stage_id"]: [o for o in str(r.get("overrides") or "").split("; ") if o]
            for _, r in rows.iterrows()}
    common = set.intersection(*(set(v) for v in sets.values())) if sets else set()
    return {sid: " ".join(o for o in items if o not in common) for sid, items in sets.items()}


def seed_of(row: Mapping[str, Any]) -> int | None:
    """The ``seed=<s>`` a stage (or its training parents) was given by a grid, or None."""
    for item in str(row.get("overrides") or "").split("; "):
        key, _, value = item.partition("=")
        if key.lstrip("+~") == "seed" and value.strip().lstrip("-").isdigit():
            return int(value)
    return None


def without_seed(variant: str) -> str:
    """A variant's overrides less its ``seed=`` (seeds of one experiment are one row)."""
    return " ".join(o for o in variant.split() if o.partition("=")[0].lstrip("+~") != "seed")


def row_intervals(row: Mapping[str, Any]) -> Intervals | None:
    """The bootstrap intervals of a done row's run record, or None when it has none."""
    if not has_numbers(row) or missing(row.get("run_dir")):
        return None
    try:
        return read_record(Path(str(row["run_dir"]))).intervals
    except RecordError:  # collect already read it; a record gone since shows no interval
        return None


def interval_text(low: float, high: float) -> str:
    """``[low, high]`` with one decimal, as printed after a point value."""
    return f"[{low:.1f}, {high:.1f}]"
