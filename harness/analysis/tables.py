"""Result tables: the paper's tables rebuilt with the harness's rows beside the published ones.

Harness rows join published rows on protocol keys only, never on free text
(:func:`paper_protocol`): dataset, split, gallery size and regime (fine-tuned or zero-shot).
A harness ``coco`` row on the ``test`` split with 5000 images and a fine-tuned parent joins
``coco / karpathy_test / finetuned_5k``; ``flickr30k`` with 1000 images joins ``finetuned_1k``.
The embedded synthetic dataset has no published counterpart. A stage without a result shows its
status, never numbers. Each grid gets ``<grid>.md`` (every table of the grid) plus
``<grid>_<kind>.tex`` and ``.csv`` per table; kinds are ``retrieval``, ``cost``, ``ratio`` and
``unimodal`` (the last three in :mod:`harness.analysis.cost_tables`); a kind with nothing to
show is left out. Optional grid keys: ``tables: [retrieval, cost]`` picks the kinds, and
``paper_rows: true|false`` lists every published row of a joined protocol (default: only for a
grid named like a published table, e.g. ``table2``) or only those of the harness's models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from harness.analysis.collect import collect_plan
from harness.analysis.paper import load_paper_numbers, paper_rsum
from harness.analysis.render import Section, Table, to_markdown, write_table
from harness.atomic import atomic_write_text
from harness.launch.grid import PlannedStage

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


def _section_keys(rows: pd.DataFrame) -> list[tuple[str, tuple[str, str] | None]]:
    """Section (dataset, paper protocol) of each row; rows without a result join their dataset."""
    done = {}
    for i, row in rows.iterrows():
        if has_numbers(row):
            done[i] = (str(row["dataset"]), paper_protocol(
                row["dataset"], row["split"], row.get("protocol.n_images"), row["regime"]))
    keys = []
    for i, row in rows.iterrows():
        same = [k for k in done.values() if k[0] == str(row["dataset"])]
        keys.append(done.get(i) or (same[0] if same else (str(row["dataset"]), None)))
    return keys


def section_heading(dataset: str, joined: tuple[str, str] | None, split: Any,
                    has_results: bool = True) -> str:
    """Heading naming a section's dataset and the published protocol it joins (or none)."""
    if joined is not None:
        size = joined[1].rsplit("_", 1)[1].upper()
        return (f"{DATASET_LABEL.get(dataset, dataset)} — Karpathy test, {size} images "
                f"(paper protocol {joined[1]})")
    if dataset == "synthetic":
        return ("synthetic — the harness's embedded synthetic dataset, not a paper dataset: "
                "no paper counterpart, paper columns empty")
    if not has_results:
        return (f"{dataset} — split {split}: no result yet, so no gallery to join on; "
                "published rows appear once a run reports its protocol")
    return (f"{dataset} — split {split}: not a published protocol: no paper counterpart, "
            "paper columns empty")


def _harness_cells(row: Mapping[str, Any], variant: str | None) -> list[str]:
    numbers = has_numbers(row)
    metrics = [num(row.get(f"metric.{m}")) if numbers else "" for m in METRICS]
    cells = ["harness", str(row["model"])]
    cells += [variant or "—"] if variant is not None else []
    return [*cells, text(row.get("scale")), text(row.get("regime")), gallery(row),
            *metrics, status_text(row), str(row["stage_id"])]


def _paper_cells(prow: PaperRow, regime: str, protocol: str, variant: bool) -> list[str]:
    status = prow.status() + STATUS_MARK[prow.status()]
    return ["paper", prow.model, *(["—"] if variant else []), "published", regime, protocol,
            *[prow.cell(m) for m in METRICS], status, ""]


def _value_status(prow: PaperRow) -> str:
    """The row's status, or each number's where they differ (e.g. R@1 sourced, R@5 recalled)."""
    if len(set(prow.statuses.values())) <= 1:
        return prow.status()
    return "; ".join(f"{m}={s}" for m, s in prow.statuses.items())


def _delta(row: Mapping[str, Any], prow: PaperRow) -> dict[str, float]:
    out = {}
    for m in METRICS:
        mine = row.get(f"metric.{m}")
        if m in prow.values and not missing(mine):
            out[m] = float(mine) - prow.values[m]
    return out


def _record(source: str, model: str, key: tuple[str, tuple[str, str] | None],
            **fields: Any) -> dict[str, Any]:
    joined = key[1] or (None, None)
    return {"source": source, "model": model, "section_dataset": key[0],
            "paper_split": joined[0], "paper_protocol": joined[1], **fields}


def retrieval_table(df: pd.DataFrame, grid: Mapping[str, Any], paper: pd.DataFrame
                    ) -> Table | None:
    """Cross-modal retrieval of a grid's eval stages beside the published rows they join."""
    rows = df[df["task"].isin(RETRIEVAL_TASKS)].reset_index(drop=True)
    if rows.empty:
        return None
    name = str(grid["name"])
    index = paper_index(paper)
    # A grid named like a published table rebuilds it whole; others show only matching models.
    full = bool(grid.get("paper_rows", name in set(paper["table"])))
    variants = distinguishing_overrides(rows)
    show_variant = any(variants.values())
    keys = _section_keys(rows)
    sections: dict[tuple[str, tuple[str, str] | None], Section] = {}
    data: list[dict[str, Any]] = []
    for key in dict.fromkeys(keys):
        members = rows.loc[[k == key for k in keys]]
        done = any(has_numbers(r) for _, r in members.iterrows())
        section = sections[key] = Section(section_heading(key[0], key[1],
                                                          members["split"].iloc[0], done))
        if key[1] is None:
            continue
        wanted = {PAPER_MODEL.get(str(m)) for m in members["model"]}
        regime = key[1][1].split("_")[0]
        for (model, dataset, split_, protocol), prow in index.items():
            if (dataset, split_, protocol) == (key[0], *key[1]) and (full or model in wanted):
                section.rows.append(_paper_cells(prow, regime, protocol, show_variant))
                data.append(_record("paper", model, key, regime=regime, status=prow.status(),
                                    value_status=_value_status(prow),
                                    pretrain_pairs=prow.pretrain_pairs, **prow.values))
    for key, (_, row) in zip(keys, rows.iterrows()):
        variant = variants[row["stage_id"]] if show_variant else None
        sections[key].rows.append(_harness_cells(row, variant))
        metrics = {m: row.get(f"metric.{m}") for m in METRICS} if has_numbers(row) else {}
        data.append(_record(
            "harness", str(row["model"]), key, variant=variant, scale=row.get("scale"),
            regime=row.get("regime"), split=row.get("split"),
            n_images=row.get("protocol.n_images"), n_texts=row.get("protocol.n_texts"),
            stage_id=row["stage_id"], status=status_text(row),
            chance_i2t_R1=row.get("chance.i2t_R@1"), chance_t2i_R1=row.get("chance.t2i_R@1"),
            **metrics))
        prow = index.get((PAPER_MODEL.get(str(row["model"]), ""), key[0], *(key[1] or ("", ""))))
        # A smoke-scale model is a pipeline check: a delta to a published number means nothing.
        if prow is None or not has_numbers(row) or row.get("scale") == "smoke":
            continue
        delta = _delta(row, prow)
        sections[key].rows.append(
            ["Δ vs paper", prow.model, *(["—"] if show_variant else []), "", "", "",
             *[f"{delta[m]:+.2f}" if m in delta else "" for m in METRICS],
             f"harness − paper ({prow.model}, {prow.status()}{STATUS_MARK[prow.status()]})",
             ""])
        data.append(_record("delta", prow.model, key, stage_id=row["stage_id"],
                            status=f"harness - paper ({prow.status()})", **delta))
    columns = ["Source", "Model", *(["Variant"] if show_variant else []), "Scale", "Regime",
               "Protocol / gallery", *[m.replace("_", " ") for m in RECALL_KEYS], "RSUM",
               "Status", "Run"]
    first = columns.index("i2t R@1")
    notes = ["R@K in percent; i2t = image→text, t2i = text→image; RSUM = sum of the six.",
             LEGEND,
             "Δ = harness − paper, against the published row of the same model under the same "
             "protocol (dataset, split, gallery size, fine-tuned or zero-shot).",
             "Harness ↔ paper models: " + ", ".join(f"{k} ↔ {v}" for k, v in PAPER_MODEL.items())
             + "; other harness models have no published row of the same model.",
             "Scale smoke = tiny models for a pipeline check, never comparable to the paper "
             "(no Δ is computed for them).",
             "A row without numbers shows its stage status; nothing is filled in.",
             *_chance_notes(rows)]
    if show_variant:
        notes.append("Variant = the overrides (of the stage or its training parents) that "
                     "differ from the other rows.")
    return Table(stem=f"{name}_retrieval",
                 title=f"{name}: cross-modal retrieval — {grid.get('claim', '')}".rstrip(" —"),
                 columns=columns, sections=list(sections.values()), notes=notes,
                 data=_ordered(pd.DataFrame(data)), numeric=frozenset(range(first, first + 7)))


CSV_ORDER = ("source", "section_dataset", "paper_split", "paper_protocol", "model", "variant",
             "scale", "regime", "split", "n_images", "n_texts", *METRICS, "status",
             "value_status", "pretrain_pairs", "stage_id", "chance_i2t_R1", "chance_t2i_R1")


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    first = [c for c in CSV_ORDER if c in frame.columns]
    return frame[[*first, *(c for c in frame.columns if c not in first)]]


def _chance_notes(rows: pd.DataFrame) -> list[str]:
    out = []
    for _, row in rows.iterrows():
        if has_numbers(row) and not missing(row.get("chance.t2i_R@1")):
            out.append(f"Chance (random ranking) on {row['dataset']} {gallery(row)}: "
                       f"i2t R@1 = {num(row.get('chance.i2t_R@1'))}, "
                       f"t2i R@1 = {num(row.get('chance.t2i_R@1'))}.")
    return list(dict.fromkeys(out))


def grid_tables(df: pd.DataFrame, grid: Mapping[str, Any], paper: pd.DataFrame) -> list[Table]:
    """Every table of a grid from its collected rows (see module docstring for the kinds)."""
    from harness.analysis.cost_tables import cost_table, ratio_table, unimodal_table

    builders = {"retrieval": retrieval_table, "cost": cost_table, "ratio": ratio_table,
                "unimodal": unimodal_table}
    kinds = list(grid.get("tables") or builders)
    unknown = [k for k in kinds if k not in builders]
    if unknown:
        raise ValueError(f"grid {grid['name']!r}: unknown table kind(s) {unknown}; "
                         f"known: {list(builders)}")
    tables = [builders[kind](df, grid, paper) for kind in kinds]
    return [t for t in tables if t is not None]


def write_tables(df: pd.DataFrame, grid: Mapping[str, Any], results_dir: Path,
                 paper: pd.DataFrame | None = None) -> list[Path]:
    """Write ``tables/<grid>.md`` and each table's ``.tex``/``.csv``; returns the paths."""
    paper = load_paper_numbers() if paper is None else paper
    tables = grid_tables(df, grid, paper)
    if not tables:
        return []
    out = Path(results_dir) / "tables"
    md = out / f"{grid['name']}.md"
    atomic_write_text(md, "\n".join(to_markdown(t) for t in tables))
    return [md, *(p for t in tables for p in write_table(t, out))]


def write_grid_tables(grid: Mapping[str, Any], plan: Sequence[PlannedStage],
                      results_dir: Path) -> list[Path]:
    """Collect a planned grid's stages and write its tables; returns the paths written."""
    return write_tables(collect_plan(plan, str(grid["name"])), grid, results_dir)
