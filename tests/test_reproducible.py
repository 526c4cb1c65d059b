"""The same stage run twice on one machine gives bitwise-identical weights, metrics and ranks.

Both runs go through the stage runner users call (:func:`harness.stage.run_stage`) in two
separate run roots, fine-tuning then evaluating a toy CLIP on a small embedded dataset.
Across machines the numbers may differ (README, "Reproducibility"); on one machine they may
not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import compose
from harness.eval.retrieval import metrics_from_ranks, read_per_query

TOY = ["model=clip", "data=synthetic", "data.generate.n_images=40", "scale.train.steps=6",
       "scale.train.batch_size=8", "scale.train.warmup_steps=2", "scale.eval_batch_size=16",
       "data.num_workers=0"]
TRAIN = ["task.progress=false", "task.tensorboard=false"]


def _run_twice_in(root: Path, data: Path) -> tuple[Path, Path]:
    import harness.stage as stage

    runs = root / "runs"
    common = [*TOY, f"data.root={data}", f"run_root={runs}"]
    finetune = stage.run_stage(compose(["task=finetune", *common, *TRAIN]), runs)
    evaluated = stage.run_stage(
        compose(["task=eval", *common, f"task.init_from={finetune.name}"]), runs)
    return finetune, evaluated


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "latest.pt", map_location="cpu",
                      weights_only=False)["model"]


@pytest.mark.slow
def test_same_stage_twice_gives_bitwise_identical_weights_and_metrics(tmp_path):
    data = tmp_path / "data"
    ft_a, ev_a = _run_twice_in(tmp_path / "a", data)
    ft_b, ev_b = _run_twice_in(tmp_path / "b", data)
    assert (ft_a.name, ev_a.name) == (ft_b.name, ev_b.name)  # the same stages

    wa, wb = _weights(ft_a), _weights(ft_b)
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        # Bytes, not allclose: one machine, one thread count, the same kernels.
        assert wa[name].numpy().tobytes() == wb[name].numpy().tobytes(), name

    ra, rb = (json.loads((d / "result.json").read_text()) for d in (ev_a, ev_b))
    assert ra["metrics"] == rb["metrics"] and "i2t_R@1" in ra["metrics"]
    assert ra["intervals"] == rb["intervals"]
    pa, pb = read_per_query(ev_a / ra["per_query"]), read_per_query(ev_b / rb["per_query"])
    assert pa.keys() == pb.keys() >= {"i2t", "t2i"}
    for direction in pa:
        assert np.array_equal(pa[direction], pb[direction]), direction
    # The per-query record is enough to recompute the metrics without the model.
    again = metrics_from_ranks(torch.from_numpy(pa["i2t"]), torch.from_numpy(pa["t2i"]))
    assert again == {k: ra["metrics"][k] for k in again}
