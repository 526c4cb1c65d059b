"""Bad-input accounting shared by every loader: raise with a location, or skip and count."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

BadSamplePolicy = Literal["error", "skip"]
POLICIES: tuple[str, ...] = ("error", "skip")


class DataError(ValueError):
    """Bad input data; the message names the file and the entry."""


@dataclass(frozen=True)
class Problem:
    """One bad entry: where it is and what is wrong with it."""

    file: str
    entry: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file} [{self.entry}]: {self.problem}"


@dataclass
class DataReport:
    """Problems found while loading, and what the policy did with them."""

    policy: BadSamplePolicy = "error"
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise DataError(f"data.on_bad_sample must be one of {POLICIES}, got {self.policy!r}")

    def flag(self, file: str | Path, entry: str, problem: str) -> None:
        """Record a bad entry; under the ``error`` policy, stop here with its location."""
        item = Problem(str(file), entry, problem)
        if self.policy == "error":
            raise DataError(f"{item} (set data.on_bad_sample=skip to skip and count such entries)")
        self.problems.append(item)

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to a named counter (kept, skipped, ...)."""
        self.counts[key] = self.counts.get(key, 0) + n

    def summary(self) -> dict[str, object]:
        """JSON-ready summary: counters, problems by kind and the first problems in full."""
        kinds = Counter(p.problem.split(":")[0] for p in self.problems)
        return {
            "policy": self.policy,
            "counts": dict(self.counts),
            "n_skipped": len(self.problems),
            "skipped_by_kind": dict(kinds),
            "examples": [str(p) for p in self.problems[:50]],
        }

    def write(self, path: Path) -> None:
        """Write the summary as JSON next to a run's results."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.summary(), indent=2, sort_keys=True) + "\n")
