"""Cost tables (the paper's efficiency argument) and unimodal retrieval tables of a grid.

``cost``: parameters, FLOPs per image / text / pair, index and query cost, and the seconds of
each timed protocol with its measured/extrapolated label. ``ratio``: dual-encoder over
cross-encoder protocol seconds, beside COOKIE's "3/1000 inference time" claim. ``unimodal``:
``t2t_R@K`` / ``i2i_R@K`` where the metrics carry them. All read the collected frame only.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import pandas as pd

from harness.analysis.cells import (
    COST_TASKS,
    RETRIEVAL_TASKS,
    STATUS_MARK,
    distinguishing_overrides,
    gallery,
    has_numbers,
    missing,
    num,
    sig,
    status_text,
    text,
)
from harness.analysis.collect import costs_long, eval_run_seconds
from harness.analysis.render import Section, Table

FLOPS_NOTE = ("FLOPs = 2 × multiply-accumulates (torch.utils.flop_counter), forward pass of one "
              "image, one text or one (image, text) pair; elementwise ops not counted.")
TIMING_NOTE = ("Index = encoding the whole gallery (cross-encoders: their cacheable unimodal "
               "features); query = median seconds of one query (dual: encode it and rank the "
               "index) or its pair scoring (cross); total = the whole protocol, measured when "
               "every part ran, extrapolated linearly from a timed sample otherwise. Data "
               "loading, decoding and tokenisation are excluded.")
ZERO_FLOPS_NOTE = ("— in GFLOPs / image or text: that encode does no matrix products. A "
                   "cross-encoder (single-stream) has no text-only encoding: its cacheable text "
                   "features are an embedding lookup, and all its text work is in GFLOPs / pair.")
_MODE_LABEL = {"dual": "index + rank", "full_scoring": "full scoring", "topk_rerank": "top-k rerank"}


def _rows(df: pd.DataFrame, tasks: tuple[str, ...]) -> pd.DataFrame:
    return df[df["task"].isin(tasks)].reset_index(drop=True)


def _scaled(value: Any, scale: float, digits: int = 3) -> str:
    return "" if missing(value) else sig(float(value) / scale, digits)


def _flops_cell(value: Any) -> str:
    # Zero FLOPs is not a cost of zero: that encode does no matrix products at all (a
    # single-stream model's text features are an embedding lookup); the note says so.
    return "—" if not missing(value) and float(value) == 0 else _scaled(value, 1e9)


def _model_cells(row: Mapping[str, Any]) -> list[str]:
    return [_scaled(row.get("eff.params_total"), 1e6, 4), _flops_cell(row.get("eff.image_flops")),
            _flops_cell(row.get("eff.text_flops")), _scaled(row.get("eff.pair_flops"), 1e9)]


def shows_when_empty(grid: Mapping[str, Any], kind: str) -> bool:
    """Whether the grid's config asks for table ``kind`` even when no stage has costs."""
    return kind in (grid.get("show_empty_tables") or ())


def _model_data(row: Mapping[str, Any], variant: str | None = None) -> dict[str, Any]:
    return {"stage_id": row["stage_id"], "model": row["model"], "scale": row.get("scale"),
            **({"variant": variant} if variant is not None else {}),
            "task": row.get("task"), "status": status_text(row),
            "params_total": row.get("eff.params_total"), "image_flops": row.get("eff.image_flops"),
            "text_flops": row.get("eff.text_flops"), "pair_flops": row.get("eff.pair_flops")}


def cost_table(df: pd.DataFrame, grid: Mapping[str, Any], paper: pd.DataFrame) -> Table | None:
    """Parameters, FLOPs, index/query cost and protocol seconds of each eval stage."""
    rows = _rows(df, COST_TASKS)
    name = str(grid["name"])
    has_eff = any(c.startswith(("eff.", "cost.")) and rows[c].notna().any() for c in rows.columns)
    if rows.empty or not (has_eff or shows_when_empty(grid, "cost")):
        return None
    costs = costs_long(rows)
    variants = distinguishing_overrides(rows)
    # A Variant column only where rows differ by more than model and scale (ablations).
    varied = any(isinstance(v, str) and v for v in variants.values())
    section, data = Section(None), []
    for _, row in rows.iterrows():
        variant = variants.get(row["stage_id"])
        variant = variant if isinstance(variant, str) and variant else "—"
        base = [str(row["model"]), *([variant] if varied else []), text(row.get("scale")),
                *_model_cells(row)]
        model_data = _model_data(row, variant if varied else None)
        mine = costs[costs["stage_id"] == row["stage_id"]]
        if not has_numbers(row):
            section.rows.append([*base, *[""] * 9, status_text(row)])
            data.append(model_data)
            continue
        for _, cost in mine.iterrows():
            section.rows.append([
                *base, f"{cost['protocol']} ({int(cost['n_images'])}/{int(cost['n_texts'])})",
                _MODE_LABEL.get(cost["mode"], cost["mode"]), sig(cost["index_s"], 4),
                _scaled(cost["query_i2t_s"], 1e-3), _scaled(cost["query_t2i_s"], 1e-3),
                sig(cost["total_s"], 4), text(cost["status"]), _scaled(cost["flops"], 1e12),
                text(cost["hardware"], ""), "done"])
            fields = cost.drop(["stage_id", "model"]).rename({"status": "timing"}).to_dict()
            data.append({**model_data, **fields})
        if mine.empty:  # no protocol timed: show what the eval itself measured, labelled so
            enc, rank, total = eval_run_seconds(row)
            section.rows.append([*base, f"eval split ({gallery(row)})", "eval run*",
                                 sig(enc, 4), "", "", sig(total, 4),
                                 "measured (this split)" if total is not None else "not timed",
                                 "", text(row.get("eff.hardware"), ""), "done"])
            data.append({**model_data, "protocol": "eval_split", "mode": "eval_run",
                         "n_images": row.get("protocol.n_images"),
                         "n_texts": row.get("protocol.n_texts"), "index_s": enc,
                         "ranking_s": rank, "total_s": total, "timing": "measured_this_split",
                         "hardware": row.get("eff.hardware")})
    columns = ["Model", *(["Variant"] if varied else []), "Scale", "Params (M)",
               "GFLOPs / image", "GFLOPs / text", "GFLOPs / pair", "Protocol (img/txt)", "Mode",
               "Index (s)", "Query i2t (ms)", "Query t2i (ms)", "Total (s)", "Timing",
               "Protocol TFLOPs", "Hardware", "Status"]
    notes = [FLOPS_NOTE, TIMING_NOTE,
             "An empty GFLOPs / pair means the model scores no pairs (a dual encoder).",
             "Params (M) counts every parameter once (tied weights included): the height of "
             "the model's bar in the cost-breakdown figure.",
             "* eval run: no protocol was timed for this stage; its seconds are the eval's own "
             "encode (including image loading and decoding; cross-encoders: unimodal features) "
             "and, in the total, pair scoring and ranking on its split.",
             "A row without numbers shows its stage status; nothing is filled in."]
    if any(r[i] == "—" for r in section.rows for i in (3 + varied, 4 + varied)):
        notes.insert(3, ZERO_FLOPS_NOTE)
    return Table(stem=f"{name}_cost", title=f"{name}: retrieval cost per model",
                 columns=columns, sections=[section], notes=notes, data=pd.DataFrame(data),
                 numeric=frozenset(i + varied for i in (2, 3, 4, 5, 8, 9, 10, 11, 13)))


def paper_claim(paper: pd.DataFrame, direction: str, model: str = "COOKIE"
                ) -> tuple[float, str] | None:
    """``(value, status)`` of a scalar claim row in results/paper, or None."""
    rows = paper[(paper["table"] == "claims") & (paper["direction"] == direction)
                 & (paper["model"] == model)]
    if rows.empty:
        return None
    return float(rows["value"].iloc[0]), str(rows["status"].iloc[0])


def ratio_table(df: pd.DataFrame, grid: Mapping[str, Any], paper: pd.DataFrame) -> Table | None:
    """Dual over cross-encoder protocol seconds per protocol, beside the paper's 3/1000."""
    name = str(grid["name"])
    costs = costs_long(_rows(df, COST_TASKS))
    if costs.empty and not shows_when_empty(grid, "ratio"):
        return None
    claim = paper_claim(paper, "inference_time_ratio")
    claim_text = (f"{claim[0]:g}{STATUS_MARK[claim[1]]} (COOKIE vs one-stream)" if claim
                  else "not in results/paper")
    section, data = Section(None), []
    for protocol, group in costs.groupby("protocol", sort=True):
        duals = group[group["mode"] == "dual"]
        crosses = group[group["mode"] != "dual"]
        for _, dual in duals.iterrows():
            for _, cross in crosses.iterrows():
                ratio = float(dual["total_s"]) / float(cross["total_s"])
                timing = ("measured" if dual["status"] == cross["status"] == "measured"
                          else "extrapolated")
                same_hw = dual["hardware"] == cross["hardware"]
                section.rows.append([
                    str(protocol), str(dual["model"]),
                    f"{cross['model']} ({_MODE_LABEL.get(cross['mode'], cross['mode'])})",
                    sig(dual["total_s"], 4), sig(cross["total_s"], 4), sig(ratio), timing,
                    "yes" if same_hw else "NO", claim_text])
                data.append({"protocol": protocol, "dual_model": dual["model"],
                             "dual_stage_id": dual["stage_id"], "cross_model": cross["model"],
                             "cross_stage_id": cross["stage_id"], "cross_mode": cross["mode"],
                             "dual_total_s": dual["total_s"], "cross_total_s": cross["total_s"],
                             "ratio": ratio, "status": timing, "same_hardware": same_hw,
                             "paper_ratio": claim[0] if claim else None,
                             "paper_status": claim[1] if claim else None})
    if not section.rows:
        section.rows.append(["—", "", "", "", "", "", "not measured: no dual and cross-encoder "
                             "timed on one protocol", "", claim_text])
        data.append({"status": "not measured", "paper_ratio": claim[0] if claim else None,
                     "paper_status": claim[1] if claim else None})
    columns = ["Protocol", "Dual encoder", "Cross-encoder (mode)", "Dual total (s)",
               "Cross total (s)", "Ratio dual / cross", "Timing", "Same hardware",
               "Paper claim"]
    notes = ["Ratio = dual-encoder protocol seconds / cross-encoder protocol seconds; the "
             "paper claims about 3/1000 (0.003) of a one-stream model's inference time, without "
             "stating hardware, gallery size or what is timed.",
             "Timing is extrapolated when either side is; compare only rows on the same "
             "hardware.", TIMING_NOTE,
             "Paper numbers: unmarked = sourced, † = recalled, ‡ = assumed."]
    return Table(stem=f"{name}_ratio", title=f"{name}: dual vs cross-encoder inference time",
                 columns=columns, sections=[section], notes=notes, data=pd.DataFrame(data),
                 numeric=frozenset({3, 4, 5}))


_UNIMODAL = re.compile(r"^metric\.(t2t|i2i)_R@(\d+)$")


def unimodal_table(df: pd.DataFrame, grid: Mapping[str, Any], paper: pd.DataFrame
                   ) -> Table | None:
    """Text→text and image→image recall@K where the eval metrics carry them."""
    rows = _rows(df, RETRIEVAL_TASKS)
    cols = sorted((c for c in rows.columns if _UNIMODAL.match(c) and rows[c].notna().any()),
                  key=lambda c: (_UNIMODAL.match(c)[1], int(_UNIMODAL.match(c)[2])))
    if not cols:
        return None
    name = str(grid["name"])
    variants = distinguishing_overrides(rows)
    section, data = Section(None), []
    for _, row in rows.iterrows():
        values = [num(row.get(c)) if has_numbers(row) else "" for c in cols]
        status = status_text(row)
        if has_numbers(row) and not any(values):
            status = "done (no unimodal metrics)"
        section.rows.append([str(row["model"]), variants[row["stage_id"]] or "—",
                             text(row.get("scale")), str(row["dataset"]), gallery(row),
                             *values, status])
        data.append({"stage_id": row["stage_id"], "model": row["model"],
                     "variant": variants[row["stage_id"]], "scale": row.get("scale"),
                     "dataset": row["dataset"], "n_images": row.get("protocol.n_images"),
                     "n_texts": row.get("protocol.n_texts"), "status": status_text(row),
                     **({c.removeprefix("metric."): row.get(c) for c in cols}
                        if has_numbers(row) else {})})
    notes = ["t2t = text→text (another caption of the same image counts as a hit); i2i = "
             "image→image; R@K in percent."]
    for direction, what in (("image_retrieval_delta", "image retrieval (i2i)"),
                            ("text_matching_delta", "text matching (t2t)")):
        claim = paper_claim(paper, direction)
        if claim:
            notes.append(f"Paper claim: +{claim[0]:g}{STATUS_MARK[claim[1]]} on unimodal "
                         f"{what}; baseline, dataset, metric and whether points or relative "
                         "are not known, so no delta is computed.")
    columns = ["Model", "Variant", "Scale", "Dataset", "Gallery",
               *[c.removeprefix("metric.").replace("_", " ") for c in cols], "Status"]
    return Table(stem=f"{name}_unimodal", title=f"{name}: unimodal retrieval",
                 columns=columns, sections=[section], notes=notes, data=pd.DataFrame(data),
                 numeric=frozenset(range(5, 5 + len(cols))))
