"""``python -m harness.report``: rebuild every table and figure from grid manifests and records.

    python -m harness.report [--runs DIR] [--results DIR] [--grids smoke table2 ...]
                             [--manifest FILE ...] [--allow-empty]

Nothing is run, no config is composed and no scheduler is asked: each grid run wrote a
manifest (``<runs>/.grids/<grid>-<time>.json``) listing its stages, their labels and lineage,
and each finished stage a run record (``result.json``). The newest manifest of each grid wins
(``--manifest FILE`` picks others), so a grid run with overrides (``scale=paper``,
``scale.train.steps=6``) is reported as it ran, without repeating them. A grid's tables list
exactly its manifest's stages and mark absent ones ``missing``. Writes
``<results>/collected.csv``, ``<results>/tables/`` and ``<results>/figures/`` and prints every
file written. When no manifest exists, or none of their stages has a run directory (a fresh
clone, a wrong ``--runs``), it writes nothing and exits 1, so committed tables are not
replaced by rows of ``missing``; ``--allow-empty`` writes them anyway.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from harness.analysis.collect import collect, collect_manifest, write_collected
from harness.analysis.paper import load_paper_numbers
from harness.analysis.plots import write_figures
from harness.analysis.tables import write_tables
from harness.manifest import (
    MANIFEST_DIR,
    Manifest,
    ManifestError,
    newest_manifests,
    read_manifest,
)

#: Where runs and results go when not told (the config's defaults: ``run_root``, honouring
#: ``$HARNESS_RUNS``, and ``results_dir``).
DEFAULT_RESULTS = Path("results")


def default_runs() -> Path:
    """The run root a grid writes to by default (``$HARNESS_RUNS``, else ``runs``)."""
    return Path(os.environ.get("HARNESS_RUNS") or "runs")


def write_grid_report(manifest: Manifest | Path, results_dir: Path,
                      run_root: Path | None = None) -> list[Path]:
    """Tables and figures of one grid run (what the grid runner calls after a grid)."""
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    root = Path(run_root) if run_root is not None else Path(manifest.run_root)
    df = collect_manifest(manifest, root)
    paper = load_paper_numbers()
    # Bench stages of other grids under the same run root may time this grid's galleries.
    timing = collect(root)
    return [*write_tables(df, manifest.grid_config, results_dir, paper),
            *write_figures(df, manifest.grid_config, results_dir, paper, timing)]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.report",
        description="Rebuild tables and figures from grid manifests and run records "
                    "(runs nothing, composes no config).")
    parser.add_argument("--runs", type=Path, default=None,
                        help="run root holding the stage directories and .grids/ "
                             "(default: $HARNESS_RUNS or runs)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="where tables/, figures/ and collected.csv go (default: results)")
    parser.add_argument("--grids", nargs="+", default=None,
                        help="grid names (default: every grid with a manifest)")
    parser.add_argument("--manifest", type=Path, action="append", default=[],
                        help="report this manifest file instead of its grid's newest "
                             "(repeatable)")
    parser.add_argument("--allow-empty", action="store_true",
                        help="write tables even when no run directory exists (all rows missing)")
    parser.add_argument("overrides", nargs="*",
                        help="ignored: each grid's manifest records the overrides it ran with")
    args = parser.parse_args(argv)
    # `--grids a b k=v` swallows the overrides that follow it; a grid name has no '='.
    if args.grids:
        args.overrides = [*(g for g in args.grids if "=" in g), *args.overrides]
        args.grids = [g for g in args.grids if "=" not in g] or None
    return args


def _manifests(args: argparse.Namespace, run_root: Path) -> dict[str, Manifest]:
    chosen = {}
    for path in args.manifest:
        manifest = read_manifest(path)
        chosen[manifest.grid] = manifest
    if args.manifest and not args.grids:
        return chosen
    found = newest_manifests(run_root, args.grids)
    return {**found, **chosen}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (1 when nothing could be reported)."""
    args = _parse(argv)
    run_root = args.runs if args.runs is not None else default_runs()
    results = args.results
    if args.overrides:
        print(f"[report] ignoring {' '.join(args.overrides)}: each grid's manifest records "
              f"the overrides it ran with", file=sys.stderr)
    try:
        manifests = _manifests(args, run_root)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    absent = [g for g in args.grids or [] if g not in manifests]
    if not manifests or absent:
        names = ", ".join(absent) or "any grid"
        print(f"error: no grid manifest for {names} under {run_root / MANIFEST_DIR}: nothing "
              f"written (tables under {results} are unchanged); run the grid "
              f"(`python -m harness.run grid=NAME ...` writes one), pass --runs DIR, or "
              f"--manifest FILE", file=sys.stderr)
        return 1
    stage_dirs = [run_root / s.stage_id for m in manifests.values() for s in m.stages]
    if not args.allow_empty and not any(d.is_dir() for d in stage_dirs):
        print(f"error: no runs found under {run_root} for grid(s) {', '.join(manifests)}: "
              f"nothing written (tables under {results} are unchanged); pass --runs DIR, or "
              f"--allow-empty to write tables of missing rows", file=sys.stderr)
        return 1
    paper = load_paper_numbers()
    df = collect(run_root, manifests)
    written = [write_collected(df, results / "collected.csv")]
    for name, manifest in manifests.items():
        rows = collect_manifest(manifest, run_root)
        written += write_tables(rows, manifest.grid_config, results, paper)
        written += write_figures(rows, manifest.grid_config, results, paper, timing=df)
        counts = rows["status"].value_counts().to_dict()
        print(f"[report] {name}: {len(rows)} stages from {manifest.path} "
              f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})", file=sys.stderr)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
