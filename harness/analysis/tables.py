"""Result tables: a grid's retrieval numbers as Markdown, straight from its result files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.launch.grid import PlannedStage
from harness.launch.store import atomic_write_text

RECALL_KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum")


def _load_result(stage: PlannedStage) -> dict[str, Any] | None:
    path = stage.run_dir / "result.json"
    if stage.status() != "done" or not path.is_file():
        return None
    return json.loads(path.read_text())


def retrieval_rows(plan: Sequence[PlannedStage]) -> list[dict[str, Any]]:
    """One row per eval stage: its metrics, or its status when no result exists."""
    rows = []
    for stage in plan:
        if stage.task != "eval":
            continue
        result = _load_result(stage)
        row: dict[str, Any] = {"model": stage.model, "dataset": stage.dataset,
                               "stage_id": stage.run_dir.name}
        if result is None:
            row["status"] = stage.status() if stage.status() != "pending" else "missing"
        else:
            protocol = result["protocol"]
            row.update(status="done", scale=result["scale"], split=result["split"],
                       gallery=f"{protocol['n_images']} img / {protocol['n_texts']} txt",
                       **{k: result["metrics"].get(k) for k in RECALL_KEYS})
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    """Markdown table of retrieval rows; a row without a result shows its status, no numbers."""
    head = ["model", "dataset", "scale", "split", "gallery", *RECALL_KEYS, "stage"]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for row in rows:
        if row["status"] != "done":
            cells = [row["model"], row["dataset"], "", "", f"**{row['status']}**",
                     *[""] * len(RECALL_KEYS), row["stage_id"]]
        else:
            cells = [row["model"], row["dataset"], row["scale"], row["split"], row["gallery"],
                     *[f"{row[k]:.2f}" for k in RECALL_KEYS], row["stage_id"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", "R@K in percent; i2t = image→text, t2i = text→image; rsum = sum of the six."]
    return "\n".join(lines) + "\n"


def write_grid_tables(grid: Mapping[str, Any], plan: Sequence[PlannedStage],
                      results_dir: Path) -> list[Path]:
    """Write ``<results_dir>/tables/<grid>.md``; returns the paths written."""
    rows = retrieval_rows(plan)
    if not rows:
        return []
    path = results_dir / "tables" / f"{grid['name']}.md"
    title = f"{grid['name']}: {grid.get('claim', '')}".rstrip(": ")
    atomic_write_text(path, markdown_table(rows, title))
    return [path]
