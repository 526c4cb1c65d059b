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

from harness.eval.retrieval import PER_QUERY_FILE, write_per_query


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
