"""The table3 cost grid end to end at smoke scale: bench stages, cost and ratio tables."""

from __future__ import annotations

import json

import pytest

from harness.run import main

pytestmark = pytest.mark.slow


def test_table3_grid_measures_every_model_and_writes_the_ratio_table(tmp_path, capsys):
    args = ["grid=table3", "task=bench", f"run_root={tmp_path / 'runs'}",
            f"results_dir={tmp_path / 'results'}", f"data.root={tmp_path / 'data'}",
            "scale.bench_budget_s=0.05", "task.protocols=[flickr30k_1k]",
            "scale.eval_batch_size=8", "task.pair_batch=32"]
    assert main(args) == 0
    assert "4 ran, 0 already done, 0 failed" in capsys.readouterr().out
    results, reranking = {}, None
    for path in (tmp_path / "runs").glob("bench-*/result.json"):
        result = json.loads(path.read_text())
        if result["protocol"]["first_stage"] is not None:  # single stream over COOKIE's top-k
            reranking = result
            continue
        results[result["model"]] = result
    assert set(results) == {"cookie", "clip", "single_stream"}
    assert reranking is not None and reranking["protocol"]["first_stage"] == "cookie"
    rerank = reranking["efficiency"]["protocols"]["flickr30k_1k"]["topk_rerank"]
    cookie = results["cookie"]["protocol_seconds"]["flickr30k_1k"]["embedding"]["seconds"]
    assert rerank["first_stage_s"] > 0 and rerank["total_s"] > rerank["first_stage_s"]
    assert cookie > 0
    for model, result in results.items():
        eff = result["efficiency"]
        assert eff["params"]["total"] > 0 and eff["flops"]["image_encode_flops"] > 0
        assert eff["hardware"] and eff["precision"] == "fp32"
        assert eff["batch_sizes"] == {"encode": 8, "pairs": 32}
        modes = result["protocol_seconds"]["flickr30k_1k"]
        for mode in modes.values():
            assert mode["seconds"] > 0 and mode["status"] in ("measured", "extrapolated")
        if model == "single_stream":
            assert set(modes) == {"full_scoring", "topk_rerank"}
            assert eff["flops"]["pair_score_flops"] > 0
            # Full scoring of 1,000 x 5,000 pairs costs more than re-ranking the top 128.
            assert modes["full_scoring"]["seconds"] > modes["topk_rerank"]["seconds"]
        else:
            assert set(modes) == {"embedding"}
    ratio = (tmp_path / "results" / "tables" / "table3_ratio.csv").read_text()
    assert "flickr30k_1k" in ratio and "single_stream" in ratio
    assert (tmp_path / "results" / "tables" / "table3.md").is_file()
