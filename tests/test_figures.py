"""Figures and cost tables a reader can read, and that agree with each other.

* parameters are split per part (image tower, text tower, shared transformer, heads), each
  parameter once, so the cost-breakdown bar and the cost table's Params (M) are one number;
* no tick label runs into another, no legend sits on the axes, no total reaches a title;
* one colour per part name in every figure;
* recall-vs-time plots timed protocol seconds, marks re-ranking rows, draws the paper's 3/1000;
* the cost table shows what differs between rows, and says what a zero-FLOP encode means;
* whether an empty cost or ratio table is written is said in the grid config, not its name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
import yaml

from harness.analysis.collect import result_row
from harness.analysis.cost_tables import cost_table, ratio_table
from harness.analysis.plots import (
    PART_LABELS,
    cost_breakdown_figure,
    part_color,
    recall_vs_time_figure,
    write_figures,
)
from harness.analysis.tables import load_paper_numbers
from harness.config import compose, to_plain
from harness.eval.param_parts import PARTS, param_parts
from harness.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 1000


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    return load_paper_numbers()


def _smoke_model(name: str) -> tuple[torch.nn.Module, int, int]:
    cfg = compose([f"model={name}", "scale=smoke", "task=bench"])
    torch.manual_seed(0)
    model = MODELS.get(name)(to_plain(cfg.model), vocab_size=VOCAB)
    return model, int(cfg.model.image_size), int(cfg.data.max_text_len)


@pytest.fixture(scope="module")
def smoke_parts() -> dict[str, dict[str, int]]:
    """``param_parts`` of each registered model at smoke size, with its unique count."""
    out = {}
    for name in ("cookie", "clip", "single_stream"):
        model, image_size, text_len = _smoke_model(name)
        parts = param_parts(model, image_size=image_size, text_len=text_len)
        unique = {id(p): p.numel() for p in model.parameters()}
        out[name] = {**parts, "unique": sum(unique.values()),
                     "wst": sum(p.numel() for p in getattr(getattr(model, "encoder", model),
                                                           "wst", torch.nn.Module()).parameters())}
    return out


# --- parameters per part -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cookie", "clip", "single_stream"])
def test_parts_count_every_parameter_once(smoke_parts: dict, name: str) -> None:
    parts = smoke_parts[name]
    assert set(parts) >= {*PARTS, "total"}
    assert sum(parts[p] for p in PARTS) == parts["total"] == parts["unique"]


def test_cookie_parts_follow_what_each_module_does(smoke_parts: dict) -> None:
    cookie = smoke_parts["cookie"]
    # Every part is there, and the weight-sharing transformer is exactly the shared part.
    assert all(cookie[p] > 0 for p in PARTS)
    assert cookie["shared_transformer"] == cookie["wst"] > 0
    clip = smoke_parts["clip"]
    assert clip["shared_transformer"] == 0 and clip["heads"] > 0  # projections and temperature
    single = smoke_parts["single_stream"]
    # The joint transformer scores pairs; its tied MLM decoder is the text embedding, once.
    # (At smoke size the image tower is the CNN grid backbone, larger than the joint blocks.)
    assert single["shared_transformer"] > single["text_tower"] > 0 and single["image_tower"] > 0


def test_parts_of_a_tied_weight_count_once() -> None:
    from torch import nn

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.image = nn.Linear(3, 4)
            self.decoder = nn.Linear(4, 10, bias=False)
            self.decoder.weight = self.embed.weight  # training-only head, tied

        def encode_image(self, images: torch.Tensor) -> torch.Tensor:
            return self.image(images.mean(dim=(2, 3)))

        def encode_text(self, tokens: dict) -> torch.Tensor:
            return self.embed(tokens["input_ids"]).mean(1)

    parts = param_parts(Tied(), image_size=2, text_len=3)
    # image is the last (only) layer of encode_image, embed that of encode_text: both heads.
    assert parts == {"image_tower": 0, "text_tower": 0, "shared_transformer": 0,
                     "heads": 40 + 16, "total": 56}


# --- table and figure agree ----------------------------------------------------------------------

def _bench_record(model: str, parts: dict[str, int], *, image_flops: float = 4e7,
                  text_flops: float = 2e7, pair_flops: float | None = None,
                  stage: str | None = None, overrides: str | None = None) -> dict[str, Any]:
    flops = {"image_encode_flops": image_flops, "text_encode_flops": text_flops}
    if pair_flops is not None:
        flops["pair_score_flops"] = pair_flops
    result = {"stage_id": stage or f"bench-{model}-synthetic-00000000", "grid": "table3",
              "task": "bench", "model": model, "dataset": "synthetic", "split": None,
              "scale": "smoke",
              "efficiency": {"params": {k: v for k, v in parts.items()
                                        if k in (*PARTS, "total")}, "flops": flops,
                             "hardware": "cpu", "device": "cpu", "precision": "fp32"}}
    row = result_row(result)
    row.update(status="done", has_result=True, overrides=overrides or "", run_dir="")
    return row


def _bar_tops(ax: Any) -> list[float]:
    tops: dict[float, float] = {}
    for patch in ax.patches:
        x = round(patch.get_x() + patch.get_width() / 2, 6)
        tops[x] = max(tops.get(x, 0.0), patch.get_y() + patch.get_height())
    return [tops[x] for x in sorted(tops)]


def test_table_params_equal_the_figure_bar(smoke_parts: dict, paper: pd.DataFrame) -> None:
    df = pd.DataFrame([_bench_record(m, smoke_parts[m]) for m in ("cookie", "clip",
                                                                  "single_stream")])
    table = cost_table(df, {"name": "table3"}, paper)
    in_table = [float(r[table.columns.index("Params (M)")]) for r in table.sections[0].rows]
    fig, _ = cost_breakdown_figure(df)
    bars = _bar_tops(fig.axes[0])
    plt.close(fig)
    assert bars == pytest.approx(in_table, rel=1e-3)
    # single-stream shares its word embedding with its MLM decoder: once, in both.
    assert in_table[2] == pytest.approx(smoke_parts["single_stream"]["unique"] / 1e6, rel=1e-3)


# --- readable figures ---------------------------------------------------------------------------

ABLATIONS = ["", "model.wst.layers=0", "model.losses.vv.enabled=false",
             "model.losses.tt.enabled=false", "model.wst.layers=2"]


def _ablation_frame(smoke_parts: dict) -> pd.DataFrame:
    rows = [_bench_record("cookie", smoke_parts["cookie"], stage=f"eval-cookie-synthetic-{i:08d}",
                          overrides=o) for i, o in enumerate(ABLATIONS)]
    rows.append(_bench_record("single_stream", smoke_parts["single_stream"], text_flops=0,
                              pair_flops=2e7))
    return pd.DataFrame(rows)


def _boxes(fig: plt.Figure, artists: list) -> list:
    renderer = fig.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists if a.get_text()]


def _assert_readable(fig: plt.Figure) -> None:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        ticks = _boxes(fig, ax.get_xticklabels())
        for i, a in enumerate(ticks):
            for b in ticks[i + 1:]:
                assert not a.overlaps(b), f"x tick labels overlap in {ax.get_title()!r}"
        legend = ax.get_legend()
        if legend is not None:
            frame = ax.get_window_extent(renderer)
            assert not legend.get_window_extent(renderer).overlaps(frame), \
                f"legend drawn on the axes of {ax.get_title()!r}"
        title = ax.title.get_window_extent(renderer)
        for text in ax.texts:
            assert not text.get_window_extent(renderer).overlaps(title), \
                f"{text.get_text()!r} drawn over the title {ax.get_title()!r}"


def test_cost_breakdown_has_no_overlapping_labels(smoke_parts: dict) -> None:
    fig, caption = cost_breakdown_figure(_ablation_frame(smoke_parts))
    try:
        _assert_readable(fig)
    finally:
        plt.close(fig)
    assert "shared transformer" in caption


def test_one_colour_per_part_in_every_figure(smoke_parts: dict) -> None:
    colours: dict[str, set] = {}
    for frame in (_ablation_frame(smoke_parts),
                  pd.DataFrame([_bench_record("clip", smoke_parts["clip"])])):
        fig, _ = cost_breakdown_figure(frame)
        for container in fig.axes[0].containers:
            colours.setdefault(container.get_label(), set()).update(
                tuple(p.get_facecolor()) for p in container.patches)
        plt.close(fig)
    assert set(colours) == {PART_LABELS[p] for p in PARTS}
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == len(PARTS)
    from matplotlib.colors import to_rgba

    assert colours["heads"] == {to_rgba(part_color("heads"))}


# --- recall against protocol seconds -----------------------------------------------------------

def _eval_row(model: str, stage: str, i2t: float, **protocol: Any) -> dict[str, Any]:
    result = {"stage_id": stage, "grid": "table2", "task": "eval", "model": model,
              "dataset": "synthetic", "split": "test", "scale": "smoke",
              "protocol": {"n_images": 150, "n_texts": 750, **protocol},
              "metrics": {"i2t_R@1": i2t, "t2i_R@1": i2t / 2},
              # Loader start-up dominates an eval run's own seconds: never to be plotted.
              "efficiency": {"measured": {"encode_s": 900.0, "rank_s": 1.0, "total_s": 901.0}}}
    row = result_row(result)
    row.update(status="done", has_result=True, overrides="", run_dir="", regime="finetuned")
    return row


def _bench_costs(model: str, modes: dict[str, tuple[float, str]]) -> dict[str, Any]:
    row = _bench_record(model, {"total": 1}, stage=f"bench-{model}-synthetic-11111111")
    for mode, (seconds, status) in modes.items():
        prefix = f"cost.flickr30k_1k.{mode}."
        row.update({prefix + "total_s": seconds, prefix + "status": status,
                    prefix + "n_images": 1000, prefix + "n_texts": 5000,
                    prefix + "hardware": "cpu", prefix + "index_s": 1.0})
    return row


def test_recall_vs_time_plots_protocol_seconds_and_marks_reranking(paper: pd.DataFrame) -> None:
    evals = pd.DataFrame([
        _eval_row("cookie", "eval-cookie-synthetic-1", 20.0),
        _eval_row("single_stream", "eval-single_stream-synthetic-2", 8.0, scoring="full"),
        _eval_row("single_stream", "eval-single_stream-synthetic-3", 12.0, scoring="full",
                  rerank_k=16, first_stage="eval-cookie-synthetic-1"),
    ])
    timing = pd.DataFrame([
        _bench_costs("cookie", {"dual": (7.0, "measured")}),
        _bench_costs("single_stream", {"full_scoring": (4000.0, "extrapolated"),
                                       "topk_rerank": (800.0, "measured")}),
    ])
    fig, caption = recall_vs_time_figure(evals, timing, paper)
    try:
        ax = fig.axes[0]
        points = {}
        for collection in ax.collections:
            (x, y), = collection.get_offsets().tolist()
            points[collection.get_label()] = (x, y, collection.get_paths()[0].vertices.shape)
        cookie = next(v for k, v in points.items() if k.startswith("cookie"))
        full = next(v for k, v in points.items() if k.endswith("full scoring"))
        rerank = next(v for k, v in points.items() if k.endswith("top-k re-rank"))
        assert (cookie[:2], full[:2], rerank[:2]) == ((7.0, 20.0), (4000.0, 8.0), (800.0, 12.0))
        assert rerank[2] != full[2]  # another marker shape
        names = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
        assert "top-k re-ranking" in names
        # The paper's 3/1000 at that fraction of the cross-encoder's full-scoring seconds.
        refs = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"]
        assert refs == [pytest.approx(0.003 * 4000.0)]
        assert "paper: 0.003 × single_stream full scoring" in names
        _assert_readable(fig)
    finally:
        plt.close(fig)
    assert "flickr30k_1k" in caption and "Skipped" not in caption


def test_recall_vs_time_skips_rows_without_protocol_time(paper: pd.DataFrame,
                                                          tmp_path: Path) -> None:
    # An ablated COOKIE is another architecture: the default COOKIE's bench does not time it.
    ablated = _eval_row("cookie", "eval-cookie-synthetic-2", 15.0)
    ablated["overrides"] = "model.wst.layers=0; scale.train.steps=6"
    evals = pd.DataFrame([_eval_row("cookie", "eval-cookie-synthetic-1", 20.0), ablated])
    fig, caption = recall_vs_time_figure(evals, pd.DataFrame(
        [_bench_costs("cookie", {"dual": (7.0, "measured")})]), paper)
    points = [c.get_offsets().tolist() for c in fig.axes[0].collections]
    plt.close(fig)
    assert points == [[[7.0, 20.0]]]
    assert caption.endswith("mode): cookie [model.wst.layers=0 scale.train.steps=6] (dual).")
    evals = pd.DataFrame([_eval_row("cookie", "eval-cookie-synthetic-1", 20.0),
                          _eval_row("clip", "eval-clip-synthetic-1", 10.0)])
    timing = pd.DataFrame([_bench_costs("cookie", {"dual": (7.0, "measured")})])
    fig, caption = recall_vs_time_figure(evals, timing, paper)
    plt.close(fig)
    assert ("Skipped (no protocol timed for that model, model overrides, scale and mode): "
            "clip (dual).") in caption
    # Without any timed protocol there is no figure: eval-run seconds are never a stand-in,
    # and the grid's figure page says why it is missing.
    assert recall_vs_time_figure(evals, None, paper) is None
    paths = write_figures(evals, {"name": "g"}, tmp_path, paper)
    assert not any(p.name.startswith("g_recall_vs_time") for p in paths)
    assert "*g_recall_vs_time* not drawn" in (tmp_path / "figures" / "g.md").read_text()


# --- cost table cells ---------------------------------------------------------------------------

def test_cost_table_shows_what_differs_and_what_zero_flops_mean(smoke_parts: dict,
                                                                 paper: pd.DataFrame) -> None:
    table = cost_table(_ablation_frame(smoke_parts), {"name": "ablations"}, paper)
    rows = [dict(zip(table.columns, r)) for r in table.sections[0].rows]
    assert [r["Variant"] for r in rows] == ["—", *ABLATIONS[1:], "—"]
    single = rows[-1]
    assert (single["GFLOPs / text"], single["GFLOPs / pair"]) == ("—", "0.02")
    assert rows[0]["GFLOPs / text"] == "0.02"
    assert any("no text-only encoding" in note for note in table.notes)
    # Rows that differ only by model and scale get no Variant column at all.
    plain = pd.DataFrame([_bench_record(m, smoke_parts[m]) for m in ("cookie", "clip")])
    assert "Variant" not in cost_table(plain, {"name": "table3"}, paper).columns


def test_empty_cost_tables_are_asked_for_in_the_grid_config(paper: pd.DataFrame) -> None:
    pending = pd.DataFrame([{"stage_id": "bench-clip-synthetic-0", "task": "bench",
                             "model": "clip", "status": "pending", "has_result": False,
                             "scale": "smoke", "overrides": None}])
    grid = yaml.safe_load((ROOT / "configs" / "grid" / "table3.yaml").read_text())
    assert ratio_table(pending, grid, paper) is not None
    assert cost_table(pending, grid, paper) is not None
    # The name alone decides nothing.
    bare = {"name": grid["name"]}
    assert ratio_table(pending, bare, paper) is None and cost_table(pending, bare, paper) is None
