"""Claims of harness.analysis.compare that its whole-module mutation run found untested (see
docs/testing.md, "Mutation testing")."""

from __future__ import annotations

from harness.analysis.compare import Reference, read_reference


def test_a_reference_matches_its_model_with_the_same_overrides_in_any_order() -> None:
    ref = read_reference({"name": "g", "reference": {"model": "cookie",
                                                     "overrides": ["b=2", "a=1"]}})
    assert ref == Reference("cookie", frozenset({"a=1", "b=2"}))
    assert ref.matches("cookie", "a=1 b=2") and ref.matches("cookie", "b=2  a=1")
    assert not ref.matches("cookie", "a=1")  # a subset of the overrides is another variant
    assert not ref.matches("cookie", "a=1 b=2 c=3")
    assert not ref.matches("clip", "a=1 b=2")  # same overrides, other model
    assert ref.describe() == "cookie (a=1 b=2)"  # sorted, whatever order the grid gave
