"""Where the minutes of a grid run go: stage seconds by task, start-up, and the wall time.

Run after ``nox -s reproduce`` (or any ``harness.run grid=...``):
``python bench/profile_runs.py [--runs runs] [--grids table2 table3 ...]``. It reads the
newest manifest of each grid and the run records of its stages, nothing else, and prints:

- per grid: its wall time (manifest written -> last stage record written), the stages that
  ran in it and those reused from earlier runs (done before the manifest);
- per task of the stages that ran: how many, the seconds of their stage bodies summed
  (training stages: the training loop's share of it too), and the process start-up before
  each stage (interpreter, imports; a stage process of ``cluster.workers>1`` or SLURM);
- the stages that took longest.

Stage bodies run side by side under ``cluster.workers=2``, so their sum exceeds the wall
time; the ratio says how well the grid kept both workers busy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def stage_seconds(record: Any) -> float:
    """The stage body's seconds from a record (0 for a record written before timing was)."""
    return float((record.timing or {}).get("stage_s") or 0.0)


def loop_seconds(record: Any) -> float:
    """The training loop's seconds of a training stage's record (0 for other stages)."""
    return float((record.train or {}).get("wall_s") or 0.0)


def grid_profile(run_root: Path, grid: str, manifest: Any) -> dict[str, Any]:
    """One grid's stage records read against its newest manifest."""
    from harness.record import RecordError, read_record

    start = _time(manifest.created_at)
    ran, reused, missing = [], [], []
    for stage in manifest.stages:
        try:
            record = read_record(run_root / stage.stage_id)
        except RecordError:
            missing.append(stage.stage_id)
            continue
        (ran if _time(record.created_at) >= start else reused).append(record)
    end = max((_time(r.created_at) for r in ran), default=start)
    return {"grid": grid, "wall_s": (end - start).total_seconds(), "ran": ran,
            "reused": reused, "missing": missing}


def task_rows(records: list[Any]) -> list[tuple[str, int, float, float, float]]:
    """(task, stages, stage seconds, training-loop seconds, start-up seconds) per task."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for record in records:
        row = totals[record.task]
        row[0] += 1
        row[1] += stage_seconds(record)
        row[2] += loop_seconds(record)
        row[3] += float((record.timing or {}).get("process_age_at_start_s") or 0.0)
    return [(task, int(n), s, loop, boot) for task, (n, s, loop, boot) in sorted(totals.items())]


def main(argv: list[str] | None = None) -> int:
    """Print the profile of the newest run of each grid."""
    from harness.manifest import newest_manifests

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--grids", nargs="*", default=None)
    parser.add_argument("--longest", type=int, default=8)
    args = parser.parse_args(argv)
    manifests = newest_manifests(args.runs, args.grids)
    if not manifests:
        print(f"no grid manifests under {args.runs / '.grids'}", file=sys.stderr)
        return 1
    profiles = [grid_profile(args.runs, g, m) for g, m in sorted(manifests.items(),
                                                                 key=lambda i: i[1].created_at)]
    print("| Grid | Wall (manifest to last record) | Stages run | Reused | Stage seconds "
          "summed | Busy workers (summed / wall) |")
    print("|---|---|---:|---:|---:|---:|")
    for p in profiles:
        busy = sum(stage_seconds(r) for r in p["ran"])
        ratio = f"{busy / p['wall_s']:.2f}" if p["wall_s"] > 0 else "—"
        print(f"| {p['grid']} | {_minutes(p['wall_s'])} | {len(p['ran'])} | {len(p['reused'])} "
              f"| {busy:.0f} | {ratio} |")
    ran = [r for p in profiles for r in p["ran"]]
    print("\n| Task | Stages | Stage seconds | of which the training loop | Process start-up |")
    print("|---|---:|---:|---:|---:|")
    for task, n, seconds, loop, boot in task_rows(ran):
        print(f"| {task} | {n} | {seconds:.0f} | {loop:.0f} | {boot:.0f} |")
    untimed = [r.stage_id for r in ran if not r.timing]
    if untimed:
        print(f"\n{len(untimed)} stage record(s) carry no timing (written before it was "
              f"recorded): {', '.join(untimed)}")
    longest = sorted(ran, key=lambda r: -stage_seconds(r))
    print("\n| Longest stages | Task | Model | Stage s | Training loop s |")
    print("|---|---|---|---:|---:|")
    for record in longest[:args.longest]:
        print(f"| {record.stage_id} | {record.task} | {record.model} | "
              f"{stage_seconds(record):.0f} | {loop_seconds(record):.0f} |")
    for p in profiles:
        if p["missing"]:
            print(f"\n{p['grid']}: no record for {', '.join(p['missing'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
