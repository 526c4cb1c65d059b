"""Paired comparisons of two evaluated runs: the bootstrap of each metric's difference.

Both runs must have ranked the same queries (same dataset, split and gallery sizes). Each
resample draws one set of query indices and applies it to both runs' ranks, so what the
queries have in common (easy and hard ones) cancels out of the difference: that is what makes
the paired interval narrower than two separate ones. Queries without a positive in either run
(rank 0 in ``ranks.npz``: unimodal queries that were skipped) are left out of that direction.

Entry points: :func:`paired_bootstrap` on rank arrays, :func:`compare_runs` on two run
directories, and :func:`compare_rows` for the tables (every row of a collected table against
one reference row); :func:`read_reference` and :func:`paired_seeds` are what the retrieval
table uses to mark rows (the reference comes from the grid's ``reference:`` key).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from harness.eval.bootstrap import (
    DEFAULT_KS,
    DEFAULT_LEVEL,
    DEFAULT_SAMPLES,
    DEFAULT_SEED,
    RSUM_DIRECTIONS,
    check_ranks,
    check_settings,
    direction_rng,
)
from harness.eval.retrieval import read_per_query

# Protocol fields that must agree for two runs' queries to be the same queries.
SAME_QUERY_FIELDS = ("dataset", "split", "n_images", "n_texts")
# Resamples drawn at once: bounds memory at block x n indices per run.
_BLOCK = 100
COLUMNS = ("stage_id", "reference", "metric", "diff", "low", "high", "p", "significant",
           "note")


def _paired_arrays(a: ArrayLike, b: ArrayLike, direction: str,
                   names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    xa, xb = np.asarray(a), np.asarray(b)
    if xa.shape != xb.shape:
        raise ValueError(f"{direction}: {names[0]} has {xa.size} queries and {names[1]} has "
                         f"{xb.size}; a paired comparison needs the same queries")
    kept = (xa > 0) & (xb > 0)  # 0: no positive for this query (a skipped unimodal query)
    if not kept.any():
        raise ValueError(f"{direction}: no query has a rank in both {names[0]} and {names[1]}")
    return (check_ranks(xa[kept], f"{names[0]}:{direction}"),
            check_ranks(xb[kept], f"{names[1]}:{direction}"))


def _direction_diffs(a: np.ndarray, b: np.ndarray, direction: str, ks: Sequence[int],
                     samples: int, seed: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Observed differences a - b and their paired resamples, keyed like metrics_from_ranks."""
    def stats(x: np.ndarray) -> dict[str, np.ndarray]:
        out = {f"{direction}_R@{k}": 100.0 * (x <= k).mean(-1) for k in ks}
        out[f"{direction}_medr"] = np.median(x, -1)
        out[f"{direction}_meanr"] = x.mean(-1)
        return out

    observed = {k: float(v) for k, v in _subtract(stats(a), stats(b)).items()}
    rng = direction_rng(seed, direction)
    parts = []
    for b0 in range(0, samples, _BLOCK):
        idx = rng.integers(0, a.size, (min(_BLOCK, samples - b0), a.size))
        parts.append(_subtract(stats(a[idx]), stats(b[idx])))
    return observed, {k: np.concatenate([p[k] for p in parts]) for k in observed}


def _subtract(x: Mapping[str, Any], y: Mapping[str, Any]) -> dict[str, Any]:
    return {k: x[k] - y[k] for k in x}


def _summary(observed: float, drawn: np.ndarray, level: float) -> dict[str, Any]:
    tail = (1.0 - level) / 2.0
    low, high = (float(v) for v in np.quantile(drawn, [tail, 1.0 - tail]))
    # Two-sided: twice the smaller share of resampled differences on either side of 0,
    # counting the observed sample once (never 0 from a finite number of resamples).
    below = (1 + np.count_nonzero(drawn <= 0)) / (drawn.size + 1)
    above = (1 + np.count_nonzero(drawn >= 0)) / (drawn.size + 1)
    return {"diff": observed, "low": low, "high": high, "p": float(min(1.0, 2 * min(below,
                                                                                  above))),
            "significant": bool(low > 0 or high < 0)}


def paired_bootstrap(ranks_a: Mapping[str, ArrayLike], ranks_b: Mapping[str, ArrayLike], *,
                     names: tuple[str, str] = ("a", "b"), ks: Sequence[int] = DEFAULT_KS,
                     samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED,
                     level: float = DEFAULT_LEVEL) -> dict[str, dict[str, Any]]:
    """metric -> {diff (a - b), low, high, p (two-sided), significant} for every R@K, rsum,
    medr and meanr of the directions both runs have, same resampled queries for both."""
    check_settings(samples, level)
    ks = tuple(sorted(ks))
    shared = [d for d in ranks_a if d in ranks_b]
    if not shared:
        raise ValueError(f"{names[0]} ({', '.join(ranks_a) or 'nothing'}) and {names[1]} "
                         f"({', '.join(ranks_b) or 'nothing'}) share no ranked direction")
    observed: dict[str, float] = {}
    drawn: dict[str, np.ndarray] = {}
    for direction in shared:
        a, b = _paired_arrays(ranks_a[direction], ranks_b[direction], direction, names)
        obs, dr = _direction_diffs(a, b, direction, ks, samples, seed)
        observed.update(obs)
        drawn.update(dr)
    if all(d in shared for d in RSUM_DIRECTIONS):
        keys = [f"{d}_R@{k}" for d in RSUM_DIRECTIONS for k in ks]
        observed["rsum"] = sum(observed[k] for k in keys)
        drawn["rsum"] = sum(drawn[k] for k in keys)
    return {k: _summary(observed[k], drawn[k], level) for k in observed}


def load_run(run_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(per-query ranks by direction, protocol) of an evaluated run directory."""
    run_dir = Path(run_dir)
    try:
        record = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{run_dir}: no readable result.json ({exc})") from exc
    rel = record.get("per_query")
    if not rel:
        raise ValueError(f"{run_dir}: result.json has no per_query ranks (evaluated before "
                         "per-query records existed, or not a retrieval eval): re-run its "
                         "eval stage")
    return read_per_query(run_dir / rel), dict(record.get("protocol") or {})


def check_same_queries(protocol_a: Mapping[str, Any], protocol_b: Mapping[str, Any],
                       names: tuple[str, str]) -> None:
    """ValueError naming both runs unless their protocols rank the same queries."""
    diff = [f"{f}: {protocol_a.get(f)!r} vs {protocol_b.get(f)!r}" for f in SAME_QUERY_FIELDS
            if protocol_a.get(f) != protocol_b.get(f)]
    if diff:
        raise ValueError(f"{names[0]} and {names[1]} were not evaluated on the same split and "
                         f"protocol ({'; '.join(diff)}): no paired comparison")


def compare_runs(run_a: Path, run_b: Path, **options: Any) -> dict[str, dict[str, Any]]:
    """:func:`paired_bootstrap` of run_a - run_b from their run directories."""
    names = (Path(run_a).name, Path(run_b).name)
    ranks_a, protocol_a = load_run(Path(run_a))
    ranks_b, protocol_b = load_run(Path(run_b))
    check_same_queries(protocol_a, protocol_b, names)
    return paired_bootstrap(ranks_a, ranks_b, names=names, **options)


def compare_rows(df: pd.DataFrame, ref: str, metrics: Sequence[str] | None = None,
                 **options: Any) -> pd.DataFrame:
    """Every row of a collected table (columns ``stage_id`` and ``run_dir``) against the row
    whose ``stage_id`` is ``ref``: one row per (stage_id, metric) with the difference row -
    ref, its interval ``low``/``high``, two-sided ``p``, ``significant`` (the interval
    excludes 0), ``reference`` (= ref) and ``note``. Rows without per-query ranks (not done,
    not a retrieval eval) or ranked on other queries get NaN numbers, significant False and
    the reason in ``note``.
    ``metrics`` (e.g. ["rsum", "i2t_R@1"]) limits the output; options go to
    :func:`paired_bootstrap` (ks, samples, seed, level)."""
    for column in ("stage_id", "run_dir"):
        if column not in df.columns:
            raise ValueError(f"compare_rows needs a {column!r} column; the table has "
                             f"{', '.join(map(str, df.columns))}")
    match = df[df["stage_id"] == ref]
    if match.empty:
        raise ValueError(f"reference stage {ref!r} is not a row of the table")
    ref_ranks, ref_protocol = load_run(Path(match["run_dir"].iloc[0]))
    rows: list[dict[str, Any]] = []
    for stage_id, run_dir in zip(df["stage_id"], df["run_dir"]):
        if stage_id == ref:
            continue
        note = ""
        try:
            ranks, protocol = load_run(Path(str(run_dir)))
            check_same_queries(protocol, ref_protocol, (str(stage_id), ref))
            result = paired_bootstrap(ranks, ref_ranks, names=(str(stage_id), ref), **options)
        except ValueError as exc:  # the row cannot be compared: say why in its note
            result, note = {}, str(exc)
        wanted = metrics if metrics is not None else (sorted(result) or ["rsum"])
        for metric in wanted:
            summary = result.get(metric, {"diff": np.nan, "low": np.nan, "high": np.nan,
                                          "p": np.nan, "significant": False})
            rows.append({"stage_id": stage_id, "reference": ref, "metric": metric, **summary,
                         "note": note})
    return pd.DataFrame(rows, columns=list(COLUMNS))


#: Differences a table reports against its reference row, in this order.
TABLE_METRICS = ("rsum", "i2t_R@1", "t2i_R@1")


@dataclass(frozen=True)
class Reference:
    """The row each other row of a table is compared with: a model and its variant."""

    model: str
    overrides: frozenset[str]

    def describe(self) -> str:
        """How a note names the reference."""
        variant = " ".join(sorted(self.overrides))
        return f"{self.model} ({variant or 'no variant override'})"

    def matches(self, model: str, variant: str) -> bool:
        """Whether a row of ``model`` with these distinguishing overrides is the reference."""
        return model == self.model and frozenset(variant.split()) == self.overrides


def read_reference(grid: Mapping[str, Any]) -> Reference | None:
    """The grid's ``reference: {model: <name>, overrides: [...]}``, or None without one."""
    value = grid.get("reference")
    if value is None:
        return None
    where = f"grid {grid.get('name')!r} reference"
    if not isinstance(value, Mapping) or not isinstance(value.get("model"), str):
        raise ValueError(f"{where}: expected {{model: <harness model>, overrides: [...]}}, "
                         f"got {value!r}")
    overrides = value.get("overrides") or []
    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
        raise ValueError(f"{where}.overrides: expected a list of key=value strings, got "
                         f"{overrides!r}")
    unknown = sorted(set(value) - {"model", "overrides"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: model, overrides")
    return Reference(value["model"], frozenset(overrides))


def paired_seeds(pairs: Sequence[tuple[tuple[str, str], tuple[str, str]]],
                 **options: Any) -> dict[str, dict[str, Any]]:
    """Per metric of :data:`TABLE_METRICS`, a row against its reference over seed-matched
    pairs ``((stage_id, run_dir), (ref_stage_id, ref_run_dir))``: ``diff`` (mean over pairs),
    ``low``/``high`` (the paired interval; NaN for several pairs), ``n``, ``excluding``
    (pairs whose interval excludes 0 on the side of the mean) and ``significant`` (every pair
    does), ``note`` (why a pair could not be compared)."""
    found: dict[str, list[dict[str, Any]]] = {m: [] for m in TABLE_METRICS}
    notes = []
    for (sid, run_dir), (ref, ref_dir) in pairs:
        frame = pd.DataFrame({"stage_id": [sid, ref], "run_dir": [run_dir, ref_dir]})
        try:
            out = compare_rows(frame, ref, metrics=TABLE_METRICS, **options)
        except ValueError as exc:  # the reference itself has no ranks: say so in the cell
            notes.append(str(exc))
            continue
        for rec in out.to_dict("records"):
            if rec["note"]:
                notes.append(rec["note"])
            elif not np.isnan(rec["diff"]):
                found[rec["metric"]].append(rec)
    summary = {}
    for metric, recs in found.items():
        if not recs:
            continue
        diff = float(np.mean([r["diff"] for r in recs]))
        # A pair counts on the side of the mean; a mean of exactly 0 has no side, so seeds
        # that disagree in sign (one above 0, one below) never read as significant.
        side = [(r["low"] > 0) if diff > 0 else (r["high"] < 0) if diff < 0 else False
                for r in recs]
        one = len(recs) == 1
        summary[metric] = {"diff": diff, "low": recs[0]["low"] if one else np.nan,
                           "high": recs[0]["high"] if one else np.nan,
                           "p": recs[0]["p"] if one else np.nan, "n": len(recs),
                           "excluding": int(sum(side)), "significant": all(side)}
    return {**summary, "note": "; ".join(dict.fromkeys(notes))}  # type: ignore[dict-item]


def paired_text(summary: Mapping[str, Any]) -> str:
    """The table cell of :func:`paired_seeds`: each difference, ``*`` where it excludes 0,
    and ``within noise`` when none does."""
    parts = []
    for metric in TABLE_METRICS:
        s = summary.get(metric)
        if not s:
            continue
        name = metric.replace("_", " ").replace("rsum", "RSUM")
        if s["n"] == 1:
            spread = f" [{s['low']:+.1f}, {s['high']:+.1f}]"
        else:
            spread = f" (n={s['n']} seeds, {s['excluding']}/{s['n']} exclude 0)"
        parts.append(f"{name} {s['diff']:+.2f}{spread}{'*' if s['significant'] else ''}")
    if not parts:
        return f"not compared: {summary.get('note') or 'no paired ranks'}"
    marked = any(summary[m]["significant"] for m in TABLE_METRICS if m in summary)
    return "; ".join(parts) + ("" if marked else " — within noise")
