"""Bootstrap intervals from per-query ranks (harness.eval.bootstrap) and the ranks.npz record
(harness.eval.retrieval.record_per_query)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.eval.bootstrap import (
    bootstrap_intervals,
    direction_rng,
    mean_samples,
    median_samples,
    percentile_interval,
    resampled_mean_ranks,
)
from harness.eval.retrieval import (
    PER_QUERY_FILE,
    metrics_from_ranks,
    read_per_query,
    record_per_query,
)

Z975 = 1.959963984540054


def _ranks_with_r1(n: int, p: float, seed: int = 0) -> np.ndarray:
    """n ranks, exactly round(p n) of them 1, the others spread over 2..50."""
    rng = np.random.default_rng(seed)
    r = rng.integers(2, 51, n)
    r[rng.permutation(n)[: round(p * n)]] = 1
    return r


def _naive(ranks: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """[samples, n] explicit query resamples: the definition the fast draws must match."""
    rng = np.random.default_rng(seed)
    return ranks[rng.integers(0, ranks.size, (samples, ranks.size))]


@pytest.mark.parametrize("p, n", [(0.3, 2000), (0.05, 500), (0.6, 150)])
def test_r1_interval_width_matches_the_binomial_interval(p, n):
    ranks = _ranks_with_r1(n, p)
    low, high = bootstrap_intervals({"t2i": ranks}, samples=4000, seed=1)["bounds"]["t2i_R@1"]
    analytic = 2 * Z975 * 100 * math.sqrt(p * (1 - p) / n)
    assert abs((high - low) / analytic - 1) < 0.2, (high - low, analytic)
    assert low < 100 * p < high


@pytest.mark.parametrize("n", [151, 150, 600])
def test_median_draws_match_explicit_resampling(n):
    ranks = np.random.default_rng(n).geometric(0.08, n)  # many ties, odd and even n
    fast = median_samples(ranks, 20000, np.random.default_rng(0))
    naive = np.median(_naive(ranks, 20000, 1), axis=1)
    for q in (0.025, 0.25, 0.5, 0.75, 0.975):
        assert abs(np.quantile(fast, q) - np.quantile(naive, q)) <= 1.0, q
    # Same distribution over the few values a median takes, not only the same quantiles.
    for v in np.unique(naive):
        assert abs(np.mean(fast == v) - np.mean(naive == v)) < 0.02, v


def test_recall_and_rsum_draws_match_explicit_resampling():
    rng = np.random.default_rng(3)
    i2t, t2i = rng.geometric(0.15, 300), rng.geometric(0.1, 800)
    fast = bootstrap_intervals({"i2t": i2t, "t2i": t2i}, samples=10000, seed=0)["bounds"]
    xi, xt = _naive(i2t, 10000, 1), _naive(t2i, 10000, 2)
    recalls = {f"{d}_R@{k}": 100 * (x <= k).mean(1) for d, x in (("i2t", xi), ("t2i", xt))
               for k in (1, 5, 10)}
    naive = {key: percentile_interval(v, 0.95) for key, v in recalls.items()}
    naive["rsum"] = percentile_interval(sum(recalls.values()), 0.95)
    for key, (low, high) in naive.items():
        width = high - low
        assert abs(fast[key][0] - low) < 0.1 * width and abs(fast[key][1] - high) < 0.1 * width


def test_mean_rank_normal_draws_match_explicit_resampling():
    ranks = np.random.default_rng(4).geometric(0.02, 400)  # skewed, as ranks are
    fast = percentile_interval(mean_samples(ranks, 20000, np.random.default_rng(0)), 0.95)
    slow = percentile_interval(resampled_mean_ranks(ranks, 20000, np.random.default_rng(1)),
                               0.95)
    width = slow[1] - slow[0]
    assert abs(fast[0] - slow[0]) < 0.1 * width and abs(fast[1] - slow[1]) < 0.1 * width


def test_mean_rank_draws_stay_within_the_observed_ranks():
    ranks = np.array([1, 1, 1, 1, 1, 40])  # six queries: a normal tail would go below 1
    drawn = mean_samples(ranks, 5000, np.random.default_rng(0))
    assert drawn.min() >= 1 and drawn.max() <= 40 and drawn.min() == 1


def test_every_metric_has_an_interval_around_its_point_value():
    rng = np.random.default_rng(5)
    i2t, t2i = rng.geometric(0.2, 200), rng.geometric(0.1, 1000)
    out = bootstrap_intervals({"i2t": i2t, "t2i": t2i}, samples=500, seed=3, level=0.9)
    point = metrics_from_ranks(torch.as_tensor(i2t), torch.as_tensor(t2i))
    assert set(point) <= set(out["bounds"])
    for key, value in point.items():
        assert out["bounds"][key][0] <= value <= out["bounds"][key][1], key
    assert (out["samples"], out["seed"], out["level"]) == (500, 3, 0.9)


def test_seeded_and_each_direction_its_own_stream():
    rng = np.random.default_rng(6)
    i2t, t2i = rng.geometric(0.2, 200), rng.geometric(0.1, 1000)
    both = bootstrap_intervals({"i2t": i2t, "t2i": t2i}, seed=7)
    assert both == bootstrap_intervals({"i2t": i2t, "t2i": t2i}, seed=7)
    other = bootstrap_intervals({"i2t": i2t, "t2i": t2i}, seed=8)
    assert both["bounds"]["t2i_R@1"] != other["bounds"]["t2i_R@1"]
    # t2i's draws do not depend on whether i2t was there, and i2t and t2i do not share one.
    alone = bootstrap_intervals({"t2i": t2i}, seed=7)
    assert alone["bounds"]["t2i_meanr"] == both["bounds"]["t2i_meanr"]
    assert "rsum" not in alone["bounds"]
    a, b = direction_rng(7, "i2t").random(4), direction_rng(7, "t2i").random(4)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("ranks, message", [
    (np.array([1, 0, 3]), "ranks 't2i'[1] = 0: ranks are 1-based"),
    (np.ones((2, 2), dtype=int), "ranks 't2i' must be 1-D, got shape (2, 2)"),
    (np.array([1.0, 2.0]), "ranks 't2i' must be integers, got float64"),
    (np.array([], dtype=int), "ranks 't2i' is empty"),
])
def test_bad_ranks_name_the_direction(ranks, message):
    with pytest.raises(ValueError) as err:
        bootstrap_intervals({"t2i": ranks})
    assert str(err.value) == message


@pytest.mark.parametrize("kwargs, word", [({"samples": 0}, "samples"), ({"level": 1.0}, "level"),
                                          ({"ks": (1, 1)}, "ks")])
def test_bad_settings_are_refused(kwargs, word):
    with pytest.raises(ValueError, match=word):
        bootstrap_intervals({"t2i": np.array([1, 2])}, **kwargs)


def test_record_per_query_writes_int32_ranks_and_intervals_without_skipped_queries(tmp_path):
    ranks = {"i2t": torch.tensor([1, 2, 9]), "t2i": torch.tensor([3, 1, 1, 4, 2, 6]),
             "t2t": torch.tensor([0, 2, 1, 0, 5, 1])}  # 0: a query without a positive
    out = record_per_query(tmp_path, ranks, {"samples": 200, "seed": 1, "level": 0.9})
    assert out["per_query"] == PER_QUERY_FILE
    back = read_per_query(tmp_path / out["per_query"])
    assert set(back) == {"i2t", "t2i", "t2t"}
    for direction, r in ranks.items():
        assert back[direction].dtype == np.int32
        assert back[direction].tolist() == r.tolist()
    assert out["intervals"] == bootstrap_intervals(
        {"i2t": [1, 2, 9], "t2i": [3, 1, 1, 4, 2, 6], "t2t": [2, 1, 5, 1]}, samples=200, seed=1,
        level=0.9)
    assert [p.name for p in tmp_path.iterdir()] == [PER_QUERY_FILE]  # no temp file left
    assert "intervals" not in record_per_query(tmp_path, ranks, {"samples": 0})


def test_a_torn_rank_file_is_refused_with_its_path(tmp_path):
    record_per_query(tmp_path, {"i2t": torch.tensor([1, 2])}, {"samples": 0})
    path = tmp_path / PER_QUERY_FILE
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match=f"{path}: not a readable per-query rank file"):
        read_per_query(path)
