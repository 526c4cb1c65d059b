"""Retrieval-metric and cost-model claims the mutation runs found untested.

Each test protects one claim of :mod:`harness.eval.retrieval` or :mod:`harness.eval.efficiency`
that a surviving mutant showed no selected test checked (see docs/testing.md, "Mutation
testing"). Everything runs on the CPU with tiny inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.eval.bootstrap import (
    DEFAULT_KS,
    DEFAULT_LEVEL,
    DEFAULT_SAMPLES,
    DEFAULT_SEED,
    bootstrap_intervals,
)
from harness.eval.retrieval import PER_QUERY_FILE, read_per_query, record_per_query, write_per_query

# ------------------------------------------------------------------ retrieval: per-query ranks


def test_per_query_ranks_that_are_not_1d_integers_are_refused_naming_the_direction(
        tmp_path: Path) -> None:
    # A float or 2-D rank array would silently truncate or flatten in ranks.npz.
    with pytest.raises(ValueError) as err:
        write_per_query(tmp_path, {"i2t": torch.tensor([1, 2]), "t2i": np.array([1.0, 2.0])})
    assert str(err.value) == ("per-query ranks 't2i' must be a 1-D integer array, got float64 "
                              "of shape (2,)")
    with pytest.raises(ValueError, match=r"^per-query ranks 'i2t' .* int64 of shape \(1, 2\)$"):
        write_per_query(tmp_path, {"i2t": torch.tensor([[1, 2]])})
    assert not (tmp_path / PER_QUERY_FILE).exists()


RANKS = {"i2t": np.array([1, 3, 2, 12, 1, 6]), "t2i": np.array([2, 1, 1, 9, 4, 1, 1, 30])}


@pytest.mark.parametrize("bootstrap", [None, {}])
def test_per_query_intervals_default_to_the_bootstrap_defaults(
        tmp_path: Path, bootstrap: dict | None) -> None:
    # No task.bootstrap (or an empty one) means 1000 resamples, seed 0, a 95 % interval.
    got = record_per_query(tmp_path, RANKS, bootstrap)["intervals"]
    assert (got["samples"], got["seed"], got["level"]) == (DEFAULT_SAMPLES, DEFAULT_SEED,
                                                           DEFAULT_LEVEL)
    assert got == bootstrap_intervals(RANKS, DEFAULT_KS, DEFAULT_SAMPLES, DEFAULT_SEED,
                                      DEFAULT_LEVEL)


def test_per_query_intervals_use_the_given_samples_seed_and_level(tmp_path: Path) -> None:
    got = record_per_query(tmp_path, RANKS, {"samples": 40, "seed": 7, "level": 0.5},
                           ks=(2,))["intervals"]
    assert (got["samples"], got["seed"], got["level"]) == (40, 7, 0.5)
    assert got == bootstrap_intervals(RANKS, (2,), 40, 7, 0.5)
    # The seed and level change the bounds, so neither may be dropped on the way.
    assert got["bounds"] != bootstrap_intervals(RANKS, (2,), 40, DEFAULT_SEED, 0.5)["bounds"]
    assert got["bounds"] != bootstrap_intervals(RANKS, (2,), 40, 7, DEFAULT_LEVEL)["bounds"]


def test_a_single_bootstrap_sample_still_gives_intervals(tmp_path: Path) -> None:
    # Only samples: 0 turns the intervals off.
    got = record_per_query(tmp_path, RANKS, {"samples": 1})
    assert got["intervals"]["samples"] == 1
    assert set(got["intervals"]["bounds"]) >= {"i2t_R@1", "t2i_meanr", "rsum"}


def test_queries_without_a_positive_are_left_out_of_the_intervals(tmp_path: Path) -> None:
    # Rank 0 marks a query with no positive (t2t, i2i): it is written but not resampled.
    ranks = {"t2t": np.array([0, 2, 1, 0, 5, 1])}
    got = record_per_query(tmp_path, ranks, {"samples": 30, "seed": 3})
    assert got["intervals"] == bootstrap_intervals({"t2t": [2, 1, 5, 1]}, DEFAULT_KS, 30, 3)
    assert read_per_query(tmp_path / got["per_query"])["t2t"].tolist() == [0, 2, 1, 0, 5, 1]


def test_a_rank_file_holding_pickled_objects_is_refused(tmp_path: Path) -> None:
    # ranks.npz is read with allow_pickle=False: a file from elsewhere cannot run code.
    path = tmp_path / PER_QUERY_FILE
    np.savez(path, i2t=np.array([1, "two"], dtype=object))
    with pytest.raises(ValueError, match=r"not a readable per-query rank file \(Object arrays"):
        read_per_query(path)


def test_a_file_that_is_not_a_rank_file_is_refused_naming_its_path_and_why(
        tmp_path: Path) -> None:
    path = tmp_path / PER_QUERY_FILE
    path.write_text("i2t,t2i\n1,2\n")
    with pytest.raises(ValueError) as err:
        read_per_query(path)
    # The message names the file and carries numpy's reason.
    assert str(err.value) == f"{path}: not a readable per-query rank file ({err.value.__cause__})"
    assert str(err.value.__cause__)
