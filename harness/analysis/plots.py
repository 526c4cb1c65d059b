"""Figures of a grid (PNG and PDF, matplotlib Agg), read from the collected frame only.

* ``<grid>_recall_vs_time``: R@1 against retrieval seconds (log x) per model, the paper's
  efficiency argument in one picture;
* ``<grid>_cost_breakdown``: parameters per tower and FLOPs per image / text / pair (stacked);
* ``<grid>_recall_at_k``: R@1/5/10 in both directions per model, published rows dashed;
* ``<grid>_train_<stage>``: each loss term against step, from a training stage's metrics.jsonl.

Each figure's caption (what it shows, what was skipped and why) goes to ``<grid>.md`` beside
the figures.
"""

from __future__ import annotations

import json
import math
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
    paper_index,
    paper_protocol,
)
from harness.analysis.collect import costs_long, eval_run_seconds  # noqa: E402
from harness.atomic import atomic_write, atomic_write_text  # noqa: E402
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
    for extra in (lambda sid: variants.get(sid) or "default", lambda sid: sid[-8:]):
        counts = pd.Series(list(labels.values())).value_counts()
        labels = {sid: f"{label} [{extra(sid)}]" if counts[label] > 1 else label
                  for sid, label in labels.items()}
    return labels


def _done(df: pd.DataFrame, tasks: tuple[str, ...] = RETRIEVAL_TASKS) -> pd.DataFrame:
    rows = df[df["task"].isin(tasks)]
    return rows[[has_numbers(r) for _, r in rows.iterrows()]].reset_index(drop=True)


def _timings(row: Mapping[str, Any], own: pd.DataFrame, bench: pd.DataFrame
             ) -> list[tuple[str, float, bool]]:
    """``(source, seconds, measured)`` for one eval row, best source first, same gallery only."""
    if not own.empty:
        return [(f"{c['protocol']} {c['mode']}", float(c["total_s"]), c["status"] == "measured")
                for _, c in own.iterrows()]
    # A bench stage of the same model and scale timed a protocol of this very gallery size.
    same = bench[(bench["model"] == row["model"]) & (bench["scale"] == row.get("scale"))
                 & (bench["n_images"] == row.get("protocol.n_images"))
                 & (bench["n_texts"] == row.get("protocol.n_texts"))]
    if not same.empty:
        return [(f"bench {c['protocol']} {c['mode']}", float(c["total_s"]),
                 c["status"] == "measured") for _, c in same.iterrows()]
    total = eval_run_seconds(row)[2]
    return [] if total is None else [("eval run", total, True)]


def _decade_log_axis(ax: Any, values: list[float]) -> None:
    """Log x from the decade below the smallest value to the one above the largest.

    Whole decades keep at least two labelled major ticks; matplotlib's default labels the
    minor ticks of a range inside one decade, and they overlap.
    """
    from matplotlib.ticker import FuncFormatter, NullFormatter

    positive = [v for v in values if v > 0]
    ax.set_xscale("log")
    if positive:
        low = 10.0 ** math.floor(math.log10(min(positive)))
        high = 10.0 ** math.ceil(math.log10(max(positive)))
        ax.set_xlim(low, high if high > low else low * 10)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def recall_vs_time(df: pd.DataFrame, grid: str, out_dir: Path,
                   timing: pd.DataFrame | None = None) -> list[Figure]:
    """R@1 (both directions) against retrieval seconds, log x; models without timing skipped.

    Seconds come from the eval stage's own timed protocols, else from a bench stage in
    ``timing`` (same model, scale and gallery size), else from the eval run's own encode and
    rank seconds; the legend names the source of each point.
    """
    rows = _done(df)
    if rows.empty:
        return []
    labels = row_labels(rows)
    costs = costs_long(rows)
    bench_rows = _done(timing, ("bench",)) if timing is not None else pd.DataFrame()
    bench = costs_long(bench_rows).merge(bench_rows[["stage_id", "scale"]], on="stage_id") \
        if not bench_rows.empty else pd.DataFrame(columns=["model", "scale", "n_images",
                                                           "n_texts"])
    points, skipped = [], []
    for _, row in rows.iterrows():
        found = _timings(row, costs[costs["stage_id"] == row["stage_id"]], bench)
        points += [(row, f"{labels[row['stage_id']]}: {src}", sec, ok) for src, sec, ok in found]
        if not found:
            skipped.append(labels[row["stage_id"]])
    if not points:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, direction in zip(axes, ("i2t", "t2i")):
        for i, (row, label, seconds, measured) in enumerate(points):
            color = colors[i % len(colors)]
            ax.scatter(seconds, float(row[f"metric.{direction}_R@1"]), label=label, s=50,
                       marker="o" if measured else "D", linewidths=1.5,
                       facecolors=color if measured else "none", edgecolors=color)
        _decade_log_axis(ax, [seconds for _, _, seconds, _ in points])
        ax.set_title(f"{direction} R@1")
        ax.set_xlabel("retrieval seconds (log scale)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("R@1 (%)")
    axes[1].legend(fontsize=7, loc="best")
    caption = ("R@1 on each stage's eval split against the seconds to retrieve over a gallery "
               "of that size: a protocol the stage timed, a bench stage of the same model and "
               "scale on the same gallery size ('bench'), or the eval run's own encode + rank "
               "seconds ('eval run'); hollow diamonds are extrapolated times.")
    caption += f" Skipped (no timing): {', '.join(skipped)}." if skipped else ""
    png = _save(fig, out_dir, f"{grid}_recall_vs_time")[0]
    return [(png, caption)]


def _stacked(ax: Any, labels: list[str], parts: dict[str, list[float]], scale: float) -> None:
    bottom = [0.0] * len(labels)
    for name, values in parts.items():
        heights = [v / scale for v in values]
        ax.bar(labels, heights, bottom=bottom, label=name)
        bottom = [b + h for b, h in zip(bottom, heights)]
    for x, total in enumerate(bottom):  # totals on top: small models stay readable
        ax.annotate(f"{total:.3g}", (x, total), ha="center", va="bottom", fontsize=7)
    ax.tick_params(axis="x", rotation=20)
    ax.legend(fontsize=7)


def cost_breakdown(df: pd.DataFrame, grid: str, out_dir: Path) -> list[Figure]:
    """Stacked bars: parameters per tower and FLOPs per image / text / pair, per model."""
    rows = _done(df, COST_TASKS)
    if rows.empty or "eff.params_total" not in rows or rows["eff.params_total"].isna().all():
        return []
    rows = rows[rows["eff.params_total"].notna()]
    labels = list(row_labels(rows).values())
    towers = [c for c in rows.columns if c.startswith("eff.params.") and rows[c].notna().any()]
    flops = [c for c in ("eff.image_flops", "eff.text_flops", "eff.pair_flops")
             if c in rows and rows[c].notna().any()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _stacked(axes[0], labels, {c.removeprefix("eff.params."): rows[c].fillna(0).tolist()
                               for c in towers}, 1e6)
    axes[0].set_ylabel("parameters (M)")
    axes[0].set_title("parameters per tower")
    _stacked(axes[1], labels, {c.removeprefix("eff.").replace("_flops", ""):
                               rows[c].fillna(0).tolist() for c in flops}, 1e9)
    axes[1].set_ylabel("GFLOPs (2 × MACs)")
    axes[1].set_title("FLOPs per image / text / pair")
    caption = ("Parameters per top-level module (shared parameters counted once in the total, "
               "here stacked per module) and forward FLOPs of one image, one text and one pair "
               "(FLOPs = 2 × multiply-accumulates); a dual encoder has no pair part.")
    png = _save(fig, out_dir, f"{grid}_cost_breakdown")[0]
    return [(png, caption)]


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
    axes[1].legend(fontsize=7)
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
    figures = [*recall_vs_time(df, name, out, timing), *cost_breakdown(df, name, out),
               *recall_at_k(df, name, out, paper), *training_curves(df, name, out)]
    if not figures:
        return []
    lines = [f"# {name}: figures", ""]
    for png, caption in figures:
        lines += [f"![{png.stem}]({png.name})", "", f"*{png.stem}*: {caption}", ""]
    md = out / f"{name}.md"
    atomic_write_text(md, "\n".join(lines))
    return [md, *(p for png, _ in figures for p in (png, png.with_suffix(".pdf")))]
