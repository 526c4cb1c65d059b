"""The run record (``result.json``): one typed, versioned schema for writers and readers.

Claims: what the writer writes reads back field for field; a version-1 record (written before
lineage) stays readable; every malformed field is refused with the file and the field named;
the optional ``intervals``/``per_query``/re-rank fields may be absent; and analysis takes a
stage's lineage from its record, not from its config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.analysis.collect import read_stage
from harness.launch.store import stage_state
from harness.record import (
    SCHEMA_VERSION,
    Ancestor,
    Lineage,
    RecordError,
    make_record,
    parse_record,
    read_record,
    write_record,
)

FIXTURE = Path(__file__).parent / "fixtures" / "analysis" / "runs"
STAGE = "eval-cookie-coco-12345678"
LINEAGE = Lineage(parents=(Ancestor("finetune-cookie-coco-aaaa0000", "finetune", "coco"),
                           Ancestor("pretrain-cookie-synthetic-bbbb0000", "pretrain",
                                    "synthetic")),
                  grid="table2", scale="paper", overrides=("task=eval", "scale.train.steps=6"))


def _record(**extra):
    return make_record(
        stage_id=STAGE, grid="table2", task="eval", model="cookie", dataset="coco",
        split="test", scale="paper", lineage=LINEAGE,
        protocol={"dataset": "coco", "split": "test", "n_images": 5000, "n_texts": 25000},
        metrics={"i2t_R@1": 71.5, "rsum": 480.0},
        efficiency={"precision": "fp32", "params": {"total": 10, "image_tower": 4},
                    "measured": {"encode_s": 1.5, "features_from_cache": False}},
        train={}, env={"python": "3.12"}, chance={"i2t_R@1": 0.1}, extra=extra)


def _written(tmp_path: Path, **extra) -> Path:
    run_dir = tmp_path / STAGE
    run_dir.mkdir()
    write_record(run_dir, _record(**extra))
    return run_dir


def test_written_record_reads_back_field_for_field(tmp_path: Path) -> None:
    run_dir = tmp_path / STAGE
    run_dir.mkdir()
    written = _record()
    write_record(run_dir, written)
    back = read_record(run_dir)
    assert back == written
    assert back.schema_version == SCHEMA_VERSION == 2
    assert back.lineage == LINEAGE and back.regime() == "finetuned"
    assert back.metrics == {"i2t_R@1": 71.5, "rsum": 480.0}
    assert back.protocol["n_images"] == 5000 and back.protocol["rerank_k"] is None
    assert back.efficiency["params"] == {"total": 10, "image_tower": 4}
    on_disk = json.loads((run_dir / "result.json").read_text())
    assert on_disk["lineage"]["parents"][0] == {"stage_id": "finetune-cookie-coco-aaaa0000",
                                                "task": "finetune", "dataset": "coco"}
    assert "intervals" not in on_disk and "per_query" not in on_disk


def test_optional_stats_blocks_round_trip(tmp_path: Path) -> None:
    intervals = {"bounds": {"i2t_R@1": [70.0, 73.0]}, "samples": 1000, "seed": 0,
                 "level": 0.95}
    run_dir = _written(tmp_path, intervals=intervals, per_query="ranks.npz")
    back = read_record(run_dir)
    assert back.intervals is not None and back.intervals.bounds == {"i2t_R@1": (70.0, 73.0)}
    assert (back.intervals.samples, back.intervals.seed, back.intervals.level) == (1000, 0, 0.95)
    assert back.per_query == "ranks.npz"
    assert json.loads((run_dir / "result.json").read_text())["intervals"] == intervals


def test_stage_timing_round_trips_and_is_absent_when_not_given(tmp_path: Path) -> None:
    timing = {"stage_s": 12.5, "process_age_at_start_s": 3.25}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    back = read_record(_written(tmp_path / "a", timing=timing))
    assert back.timing == timing and "timing" not in back.extra
    assert "timing" not in json.loads((_written(tmp_path / "b") / "result.json").read_text())


def test_a_version_1_record_is_read_without_lineage_and_collect_uses_its_config() -> None:
    run_dir = FIXTURE / "eval-cookie-coco-bbbb2222"
    record = read_record(run_dir)
    assert record.schema_version == 1 and record.lineage is None and record.regime() is None
    # Analysis falls back to the stage's resolved.yaml for the parent of a version-1 record.
    row = read_stage(run_dir)
    assert row["regime"] == "finetuned" and row["parent"] == "finetune-cookie-coco-aaaa1111"


def test_collect_takes_lineage_from_a_version_2_record_without_any_config(tmp_path) -> None:
    run_dir = _written(tmp_path)
    (run_dir / "COMPLETE").write_text("{}")
    assert not (run_dir / "resolved.yaml").exists()  # nothing to compose or read besides it
    row = read_stage(run_dir)
    assert row["status"] == "done" and row["regime"] == "finetuned"
    assert row["parent"] == "finetune-cookie-coco-aaaa0000"
    assert row["overrides"] == "scale.train.steps=6"  # identity choices left out


def _broken(tmp_path: Path, edit) -> Path:
    run_dir = _written(tmp_path)
    path = run_dir / "result.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return run_dir


def _set(path: str, value):
    def edit(data):
        *head, last = path.split(".")
        node = data
        for key in head:
            node = node[key]
        if value is _DROP:
            del node[last]
        else:
            node[last] = value
    return edit


_DROP = object()

BROKEN = [
    ("schema_version", _set("schema_version", _DROP), "schema_version: missing"),
    ("schema_version", _set("schema_version", 3), "3 is not a version"),
    ("lineage", _set("lineage", _DROP), "field lineage: missing"),
    ("lineage.parents", _set("lineage.parents", "finetune"), "expected a list"),
    ("metrics.i2t_R@1", _set("metrics.i2t_R@1", "71.5"), "expected a number"),
    ("protocol.n_images", _set("protocol.n_images", "5000"), "expected int"),
    ("protocol.rerank_k", _set("protocol.rerank_k", 1.5), "expected int"),
    ("efficiency.params.total", _set("efficiency.params.total", 1.5), "integer count"),
    ("efficiency.measured.encode_s", _set("efficiency.measured.encode_s", "fast"),
     "expected a number"),
    ("split", _set("split", 3), "expected a string or null"),
    ("task", _set("task", _DROP), "field task: missing"),
    ("intervals.bounds.i2t_R@1", _set("intervals", {"bounds": {"i2t_R@1": [73, 70]},
                                                    "samples": 10, "seed": 0, "level": 0.9}),
     "low <= high"),
    ("intervals.level", _set("intervals", {"bounds": {}, "samples": 10, "seed": 0,
                                           "level": 95}), "coverage"),
    ("timing.stage_s", _set("timing", {"stage_s": "slow"}), "expected a number"),
    ("per_query", _set("per_query", "/abs/ranks.npz"), "relative to the run directory"),
    ("per_query", _set("per_query", "../other/ranks.npz"), "relative to the run directory"),
    ("stage_id", _set("stage_id", "eval-cookie-coco-00000000"), "belongs to stage"),
]


@pytest.mark.parametrize(("field", "edit", "problem"), BROKEN,
                         ids=[f"{f}:{p[:18]}" for f, _, p in BROKEN])
def test_a_malformed_record_names_its_file_and_field(tmp_path, field, edit, problem) -> None:
    run_dir = _broken(tmp_path, edit)
    with pytest.raises(RecordError) as caught:
        read_record(run_dir)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{run_dir / 'result.json'}: field {field}: "), message
    assert problem in message


def test_complete_beside_a_malformed_record_is_not_done_and_says_which_field(tmp_path) -> None:
    run_dir = _broken(tmp_path, _set("metrics.rsum", [1, 2]))
    (run_dir / "COMPLETE").write_text("{}")
    status, why = stage_state(run_dir)
    assert status == "interrupted" and "field metrics.rsum" in why
    assert read_stage(run_dir)["status"] == "interrupted"


def test_the_writer_refuses_what_the_reader_would(tmp_path) -> None:
    other = tmp_path / "eval-cookie-coco-00000000"
    other.mkdir()
    with pytest.raises(RecordError, match="field stage_id"):
        write_record(other, _record())
    assert not (other / "result.json").exists()
    with pytest.raises(RecordError, match="field metrics.rsum: expected a number"):
        make_record(stage_id=STAGE, grid=None, task="eval", model="cookie", dataset="coco",
                    split="test", scale="smoke", lineage=LINEAGE, metrics={"rsum": "high"})


def test_every_fixture_record_parses() -> None:
    # The analysis fixtures are version-1 records as the harness wrote them before lineage.
    for path in sorted(FIXTURE.glob("*/result.json")):
        parse_record(json.loads(path.read_text()), str(path))


def test_a_record_copied_to_another_stage_directory_is_refused(tmp_path) -> None:
    run_dir = _written(tmp_path)
    copy = tmp_path / "eval-cookie-coco-99999999"
    shutil.copytree(run_dir, copy)
    with pytest.raises(RecordError, match="belongs to stage"):
        read_record(copy)
