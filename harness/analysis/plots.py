"""Figures of a grid (PNG and PDF, matplotlib Agg), read from the collected frame only.

* ``<grid>_recall_vs_time``: R@1 against timed protocol seconds (log x) per model, re-ranking
  rows marked, the paper's 3/1000 drawn: its efficiency argument in one picture;
* ``<grid>_cost_breakdown``: parameters per part (image tower, text tower, shared
  transformer, heads; one colour per part in every figure) and FLOPs per image / text / pair;
* ``<grid>_recall_at_k``: R@1/5/10 in both directions per model, published rows dashed;
* ``<grid>_train_<stage>``: each loss term against step, from a training stage's metrics.jsonl.

Each figure's caption (what it shows, what was skipped and why) goes to ``<grid>.md`` beside
the figures. Legends sit outside the axes and long tick labels are wrapped, so nothing is drawn
over data, titles or other labels (tests/test_figures.py checks the boxes).
"""

from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from harness.analysis.cells import (  # noqa: E402
    COST_TASKS,
    PAPER_MODEL,
    RETRIEVAL_TASKS,
    STATUS_MARK,
    distinguishing_overrides,
    has_numbers,
    missing,
    paper_index,
    paper_protocol,
)
from harness.analysis.collect import costs_long  # noqa: E402
from harness.analysis.cost_tables import paper_claim  # noqa: E402
from harness.atomic import atomic_write, atomic_write_text  # noqa: E402
from harness.eval.param_parts import PARTS  # noqa: E402
from harness.record import TRAINING_TASKS  # noqa: E402

KS = (1, 5, 10)
Figure = tuple[Path, str]  # (PNG path, caption); the PDF sits beside the PNG


def _save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()  # once here, rather than bbox_inches="tight" re-drawing at every save
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{stem}.{ext}"
        # The shared helper: readable by others (umask), fsynced, a clear full-disk error.
        atomic_write(path, lambda handle, ext=ext: fig.savefig(handle, format=ext, dpi=150))
        paths.append(path)
    plt.close(fig)
    return paths


def row_labels(rows: pd.DataFrame) -> dict[str, str]:
    """A legend label per stage id: the model, plus dataset, variant or hash where it repeats."""
    variants = distinguishing_overrides(rows)
    several_datasets = rows["dataset"].nunique() > 1
    labels = {}
    for _, row in rows.iterrows():
        label = str(row["model"])
        if several_datasets:
            label += f" · {row['dataset']}"
        labels[row["stage_id"]] = label
    for extra in (lambda sid: variants.get(sid) if isinstance(variants.get(sid), str)
                  and variants.get(sid) else "default", lambda sid: sid[-8:]):
        counts = pd.Series(list(labels.values())).value_counts()
        labels = {sid: f"{label} [{extra(sid)}]" if counts[label] > 1 else label
                  for sid, label in labels.items()}
    return labels


def _done(df: pd.DataFrame, tasks: tuple[str, ...] = RETRIEVAL_TASKS) -> pd.DataFrame:
    rows = df[df["task"].isin(tasks)]
    return rows[[has_numbers(r) for _, r in rows.iterrows()]].reset_index(drop=True)


def timed_mode(row: Mapping[str, Any]) -> str:
    """The timed protocol mode an eval row's recall belongs to (``dual``, ``full_scoring``, …)."""
    if not missing(row.get("protocol.rerank_k")):
        return "topk_rerank"  # a cross-encoder re-ranking a first stage's top-k
    cross = not (missing(row.get("protocol.scoring")) and missing(row.get("eff.pair_flops")))
    return "full_scoring" if cross else "dual"


def model_overrides(row: Mapping[str, Any]) -> frozenset[str]:
    """The ``model.*`` overrides of a row's lineage: what changes the model's architecture."""
    value = row.get("overrides")
    items = value.split("; ") if isinstance(value, str) else []
    return frozenset(o for o in items if o.startswith("model."))


def _protocol_costs(rows: pd.DataFrame, bench_rows: pd.DataFrame) -> pd.DataFrame:
    """Timed protocols of the eval stages and of bench stages, with scale and model overrides."""
    frames = []
    for r in (rows, bench_rows):
        if r.empty:
            continue
        keys = pd.DataFrame({"stage_id": r["stage_id"], "scale": r.get("scale"),
                             "variant": [model_overrides(x) for _, x in r.iterrows()]})
        frames.append(costs_long(r).merge(keys, on="stage_id"))
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["stage_id", "model", "protocol", "mode", "n_images", "n_texts", "total_s",
                 "status", "scale", "variant"])


def _figure_protocol(rows: pd.DataFrame, costs: pd.DataFrame) -> str | None:
    """The protocol on the x label: the first eval gallery timed, else the smallest timed one."""
    if costs.empty:
        return None
    for _, row in rows.iterrows():
        same = _same_gallery(costs, row)
        if not same.empty:
            return str(same["protocol"].iloc[0])
    return str(_by_size(costs)["protocol"].iloc[0])


def _same_gallery(costs: pd.DataFrame, row: Mapping[str, Any]) -> pd.DataFrame:
    return costs[(costs["n_images"] == row.get("protocol.n_images"))
                 & (costs["n_texts"] == row.get("protocol.n_texts"))]


def _by_size(costs: pd.DataFrame) -> pd.DataFrame:
    size = costs["n_images"].astype(float) * costs["n_texts"].astype(float)
    return costs.assign(_size=size).sort_values(["_size", "protocol"])


def _row_cost(row: Mapping[str, Any], costs: pd.DataFrame, protocol: str | None
              ) -> pd.Series | None:
    """The timed protocol for one eval row: its own gallery, else the figure's, else smallest."""
    # An ablated architecture (model.wst.layers=0) is not timed by the default model's bench.
    mine = costs[(costs["model"] == row["model"]) & (costs["scale"] == row.get("scale"))
                 & (costs["mode"] == timed_mode(row))
                 & (costs["variant"] == model_overrides(row))]
    for pick in (_same_gallery(mine, row), mine[mine["protocol"] == protocol], _by_size(mine)):
        if not pick.empty:
            return pick.iloc[0]
    return None


def _decade_log_axis(ax: Any, values: list[float]) -> None:
    """Log x from the decade below the smallest value to the one above the largest.

    Whole decades keep at least two labelled major ticks; matplotlib's default labels the
    minor ticks of a range inside one decade, and they overlap.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    positive = [v for v in values if v > 0]
    ax.set_xscale("log")
    if positive:
        low = 10.0 ** math.floor(math.log10(min(positive)))
        high = 10.0 ** math.ceil(math.log10(max(positive)))
        ax.set_xlim(low, high if high > low else low * 10)
        decades = math.log10(high / low) if high > low else 1
        # Many decades: label every other one so the tick labels stay apart.
        ax.xaxis.set_major_locator(LogLocator(base=10.0 ** max(1, math.ceil(decades / 6))))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _legend_outside(ax: Any, **kwargs: Any) -> Any:
    # Right of the axes, so no legend ever covers a bar or a point.
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                     fontsize=7, **kwargs)


def recall_vs_time(df: pd.DataFrame, grid: str, out_dir: Path,
                   timing: pd.DataFrame | None = None,
                   paper: pd.DataFrame | None = None) -> list[Figure]:
    """``<grid>_recall_vs_time`` (see :func:`recall_vs_time_figure`), saved; [] if nothing."""
    drawn = recall_vs_time_figure(df, timing, paper)
    if drawn is None:
        return []
    return [(_save(drawn[0], out_dir, f"{grid}_recall_vs_time")[0], drawn[1])]


def recall_vs_time_figure(df: pd.DataFrame, timing: pd.DataFrame | None = None,
                          paper: pd.DataFrame | None = None) -> tuple[plt.Figure, str] | None:
    """R@1 (both directions) against protocol seconds, log x; models without timing skipped.

    Seconds are a timed retrieval protocol (the efficiency block of the eval stage itself or of
    a ``task=bench`` stage in ``timing``, same model and scale) in the mode the recall was
    measured in: dual, full scoring or top-k re-ranking. Eval-run seconds (data loading
    included) are never plotted.
    """
    rows = _done(df)
    if rows.empty:
        return None
    labels = row_labels(rows)
    bench_rows = _done(timing, ("bench",)) if timing is not None else pd.DataFrame()
    costs = _protocol_costs(rows, bench_rows)
    protocol = _figure_protocol(rows, costs)
    points, skipped = [], []
    for _, row in rows.iterrows():
        mode, label = timed_mode(row), labels[row["stage_id"]]
        cost = _row_cost(row, costs, protocol)
        if cost is None:
            skipped.append(f"{label} ({_MODE_TEXT.get(mode, mode)})")
            continue
        where = "" if cost["protocol"] == protocol else f", {cost['protocol']}"
        points.append((row, f"{label}: {_MODE_TEXT.get(mode, mode)}{where}",
                       float(cost["total_s"]), cost["status"] == "measured", mode))
    if not points:
        return None
    claim = paper_claim(paper, "inference_time_ratio") if paper is not None else None
    references = [(claim[0] * seconds, f"paper: {claim[0]:g} × {row['model']} full scoring")
                  for row, _, seconds, _, mode in points if claim and mode == "full_scoring"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, direction in zip(axes, ("i2t", "t2i")):
        for i, (row, label, seconds, measured, mode) in enumerate(points):
            color = colors[i % len(colors)]
            ax.scatter(seconds, float(row[f"metric.{direction}_R@1"]), label=label, s=55,
                       marker="^" if mode == "topk_rerank" else "o", linewidths=1.5,
                       facecolors=color if measured else "none", edgecolors=color)
        for x, ref_label in references:
            ax.axvline(x, color="0.4", ls="--", lw=1, label=ref_label)
        _decade_log_axis(ax, [p[2] for p in points] + [x for x, _ in references])
        ax.set_title(f"{direction} R@1")
        ax.set_xlabel(f"{protocol} protocol seconds (log scale)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("R@1 (%)")
    from matplotlib.lines import Line2D

    handles, names = axes[1].get_legend_handles_labels()
    keys = [Line2D([], [], ls="", marker="o", color="0.3", label="dual / full scoring"),
            Line2D([], [], ls="", marker="^", color="0.3", label="top-k re-ranking"),
            Line2D([], [], ls="", marker="o", mfc="none", color="0.3", label="hollow: time extrapolated")]
    _legend_outside(axes[1], handles=[*handles, *keys], labels=[*names, *(k.get_label()
                                                                         for k in keys)])
    caption = (f"R@1 on each stage's eval split against the seconds of the {protocol} retrieval "
               "protocol (or the protocol named in the legend: one of the stage's own gallery "
               "size) timed for the same model and scale (task=bench, or the eval stage's own "
               "timed protocol), in the mode the recall was measured in: dual = index + rank, "
               "full scoring = every pair through the cross-encoder, top-k re-ranking "
               "(triangles) = the cross-encoder re-scores a first stage's top k. Hollow markers: "
               "time extrapolated from a timed sample. Data loading is not in these seconds.")
    if references:
        caption += (f" Dashed: the paper's claim that COOKIE needs {claim[0]:g} of a one-stream "
                    "model's inference time, drawn at that fraction of each cross-encoder's "
                    "full-scoring seconds.")
    caption += (f" Skipped (no protocol timed for that model, model overrides, scale and "
                f"mode): "
                f"{', '.join(skipped)}."
                if skipped else "")
    fig.tight_layout()
    return fig, caption


_MODE_TEXT = {"dual": "dual", "full_scoring": "full scoring", "topk_rerank": "top-k re-rank"}

#: One colour per part or FLOP kind, the same in every figure (Okabe-Ito, colour-blind safe).
PART_COLORS = {"image_tower": "#0072B2", "text_tower": "#E69F00",
               "shared_transformer": "#009E73", "heads": "#CC79A7",
               "image": "#0072B2", "text": "#E69F00", "pair": "#009E73"}
PART_LABELS = {"image_tower": "image tower", "text_tower": "text tower",
               "shared_transformer": "shared transformer", "heads": "heads"}
_EXTRA_COLORS = tuple(matplotlib.colors.to_hex(c) for c in plt.get_cmap("tab20").colors)


def part_color(name: str) -> str:
    """The colour of a part name: fixed for the known parts, else stable across figures."""
    return PART_COLORS.get(name) or _EXTRA_COLORS[zlib.crc32(name.encode()) % len(_EXTRA_COLORS)]


def wrap_label(label: str, width: int = 14) -> str:
    """A tick label broken into lines of about ``width`` characters at spaces, dots or ``=``."""
    pieces = [p for p in re.split(r"(?<=[ .=\[])", label) if p]
    lines, line = [], ""
    for piece in pieces:
        if line and len(line) + len(piece.rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        line += piece
    lines.append(line.rstrip())
    return "\n".join(lines)


def _stacked(ax: Any, labels: list[str], parts: dict[str, list[float]], scale: float,
             totals: list[float] | None = None) -> None:
    bottom = [0.0] * len(labels)
    xs = list(range(len(labels)))
    for name, values in parts.items():
        heights = [v / scale for v in values]
        ax.bar(xs, heights, bottom=bottom, label=PART_LABELS.get(name, name),
               color=part_color(name), edgecolor="white", linewidth=0.5)
        bottom = [b + h for b, h in zip(bottom, heights)]
    shown = [t / scale for t in totals] if totals is not None else bottom
    for x, (top, total) in enumerate(zip(bottom, shown)):  # totals on top: small models readable
        ax.annotate(f"{total:.3g}", (x, top), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7)
    # Head-room for the totals, so no number reaches the title.
    ax.set_ylim(0, max([*bottom, *shown, 0.0]) * 1.18 or 1.0)
    ax.set_xticks(xs, [wrap_label(label) for label in labels], fontsize=7)
    if len(labels) > 3:
        ax.tick_params(axis="x", rotation=30)
        for tick in ax.get_xticklabels():
            tick.set_ha("right")
            tick.set_rotation_mode("anchor")
    _legend_outside(ax)


def cost_breakdown(df: pd.DataFrame, grid: str, out_dir: Path) -> list[Figure]:
    """``<grid>_cost_breakdown`` (see :func:`cost_breakdown_figure`), saved; [] if nothing."""
    drawn = cost_breakdown_figure(df)
    if drawn is None:
        return []
    return [(_save(drawn[0], out_dir, f"{grid}_cost_breakdown")[0], drawn[1])]


def cost_breakdown_figure(df: pd.DataFrame) -> tuple[plt.Figure, str] | None:
    """Stacked bars: parameters per part and FLOPs per image / text / pair, per model."""
    rows = _done(df, COST_TASKS)
    if rows.empty or "eff.params_total" not in rows or rows["eff.params_total"].isna().all():
        return None
    rows = rows[rows["eff.params_total"].notna()]
    labels = list(row_labels(rows).values())
    present = [c.removeprefix("eff.params.") for c in rows.columns
               if c.startswith("eff.params.") and rows[c].notna().any()]
    # Records from before the per-part split hold one count per top-level module; those
    # double-count tied weights, so their stack can exceed the total written on top.
    parts = list(PARTS) if "shared_transformer" in present else sorted(present)
    flops = [c for c in ("eff.image_flops", "eff.text_flops", "eff.pair_flops")
             if c in rows and rows[c].notna().any()]
    width = max(11.0, 1.8 * len(labels) + 4)
    fig, axes = plt.subplots(1, 2, figsize=(width, 4.6))
    _stacked(axes[0], labels, {p: rows[f"eff.params.{p}"].fillna(0).tolist() for p in parts},
             1e6, totals=rows["eff.params_total"].astype(float).tolist())
    axes[0].set_ylabel("parameters (M)")
    axes[0].set_title("parameters per part")
    _stacked(axes[1], labels, {c.removeprefix("eff.").replace("_flops", ""):
                               rows[c].fillna(0).tolist() for c in flops}, 1e9)
    axes[1].set_ylabel("GFLOPs (2 × MACs)")
    axes[1].set_title("FLOPs per image / text / pair")
    caption = ("Parameters per part, each parameter counted once (tied weights included), so "
               "a bar's height is the Params (M) of the cost table: image / text tower = "
               "modules only one modality runs through; shared transformer = modules both "
               "modalities run through (COOKIE's weight-sharing transformer) or that score a "
               "pair (a single-stream model's joint transformer); heads = the last layer of "
               "each encode or pair score and training-only heads (MLM, loss temperatures). "
               "Right: forward FLOPs of one image, one text and one pair (FLOPs = 2 × "
               "multiply-accumulates); a dual encoder has no pair part, and a single-stream "
               "model's text features are an embedding lookup (0 FLOPs).")
    fig.tight_layout()
    return fig, caption


def recall_at_k(df: pd.DataFrame, grid: str, out_dir: Path,
                paper: pd.DataFrame | None = None) -> list[Figure]:
    """R@1/5/10 per model in both directions; the published row of the same model dashed."""
    rows = _done(df)
    if rows.empty:
        return []
    labels = row_labels(rows)
    index = paper_index(paper) if paper is not None else {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    shown = set()
    for ax, direction in zip(axes, ("i2t", "t2i")):
        for _, row in rows.iterrows():
            ys = [row.get(f"metric.{direction}_R@{k}") for k in KS]
            ax.plot(KS, ys, marker="o", label=labels[row["stage_id"]])
            joined = paper_protocol(row["dataset"], row["split"],
                                    row.get("protocol.n_images"), row["regime"])
            prow = index.get((PAPER_MODEL.get(str(row["model"]), ""), row["dataset"],
                              *(joined or ("", ""))))
            if prow is not None:
                mark = STATUS_MARK[prow.status()]
                ax.plot(KS, [prow.values.get(f"{direction}_R@{k}") for k in KS], "--",
                        marker="x", label=f"{prow.model}{mark} (paper, {joined[1]})")
                shown.add(f"{prow.model}{mark}")
        ax.set_xticks(KS)
        ax.set_xlabel("K")
        ax.set_title(f"{direction} R@K")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("recall (%)")
    _legend_outside(axes[1])
    caption = "Recall@K (K = 1, 5, 10) per model, i2t = image→text and t2i = text→image."
    if shown:
        caption += (f" Dashed: published rows joined on protocol ({', '.join(sorted(shown))}; "
                    "† recalled, ‡ assumed).")
    png = _save(fig, out_dir, f"{grid}_recall_at_k")[0]
    return [(png, caption)]


def read_metrics_log(path: Path) -> pd.DataFrame:
    """``metrics.jsonl`` as a frame, one row per step (a resumed run's repeated steps: last)."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a killed job
    frame = pd.DataFrame(records)
    if frame.empty or "step" not in frame:
        return pd.DataFrame()
    return frame.drop_duplicates("step", keep="last").sort_values("step")


def training_curves(df: pd.DataFrame, grid: str, out_dir: Path) -> list[Figure]:
    """Each loss term against step, one figure per training stage that logged any."""
    figures = []
    for _, row in df[df["task"].isin(TRAINING_TASKS)].iterrows():
        log = Path(str(row["run_dir"])) / "metrics.jsonl"
        frame = read_metrics_log(log) if log.is_file() else pd.DataFrame()
        terms = [c for c in frame.columns if c == "loss" or c.startswith("loss/")]
        if not terms:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for term in terms:
            ax.plot(frame["step"], frame[term], label=term, lw=2 if term == "loss" else 1,
                    marker="o" if len(frame) < 20 else None)  # a short run: show its points
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"{row['task']} {row['model']} on {row['dataset']} ({row['status']})")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
        png = _save(fig, out_dir, f"{grid}_train_{row['stage_id']}")[0]
        figures.append((png, f"Training losses of {row['stage_id']} (status {row['status']}): "
                             "total loss and each term against step, from metrics.jsonl."))
    return figures


def write_figures(df: pd.DataFrame, grid: Mapping[str, Any], results_dir: Path,
                  paper: pd.DataFrame | None = None, timing: pd.DataFrame | None = None
                  ) -> list[Path]:
    """Every figure of a grid plus ``figures/<grid>.md`` with captions; returns the paths.

    ``timing``: collected rows of other grids whose bench stages may time this grid's
    galleries (see :func:`recall_vs_time`).
    """
    name = str(grid["name"])
    out = Path(results_dir) / "figures"
    versus_time = recall_vs_time(df, name, out, timing, paper)
    figures = [*versus_time, *cost_breakdown(df, name, out),
               *recall_at_k(df, name, out, paper), *training_curves(df, name, out)]
    if not figures:
        return []
    lines = [f"# {name}: figures", ""]
    if not versus_time and not _done(df).empty:  # say why the efficiency figure is absent
        lines += [f"*{name}_recall_vs_time* not drawn: no retrieval protocol was timed for "
                  "these models at this scale (`python -m harness.run grid=table3`, with the "
                  "same scale, times them).", ""]
    for png, caption in figures:
        lines += [f"![{png.stem}]({png.name})", "", f"*{png.stem}*: {caption}", ""]
    md = out / f"{name}.md"
    atomic_write_text(md, "\n".join(lines))
    return [md, *(p for png, _ in figures for p in (png, png.with_suffix(".pdf")))]
