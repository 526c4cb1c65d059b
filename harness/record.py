"""The run record (``result.json``): the one contract between running a stage and analysing it.

Bottom layer: standard library and :mod:`harness.atomic` only, so the stage runner, the
launchers and the analysis all import the same types. A record is written by
:func:`write_record` from a :class:`RunRecord` and read back by :func:`read_record`, which
checks every field and raises :class:`RecordError` naming the file and the field.

Versions (``schema_version``): **2** is written now and adds the stage's ``lineage``; **1**
(records written before lineage existed) stays readable, with ``lineage`` None, and readers
fall back to the run directory's ``resolved.yaml`` for the parents. A record without a
``schema_version`` or with a newer one is refused with a message naming the file and field.
``docs/contracts.md`` describes every field.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence, TypedDict

from harness.atomic import atomic_write_json

SCHEMA_VERSION = 2
#: Versions :func:`parse_record` accepts (1: no ``lineage`` block).
READABLE_VERSIONS = (1, 2)
RECORD_FILE = "result.json"
# Status markers of a stage directory (written by harness.launch.store, read by analysis too).
DONE_MARKER = "COMPLETE"
FAILED_MARKER = "FAILED"
RUNNING_MARKER = "RUNNING"
LOCK_FILE = "LOCK"
#: Tasks that train a model; the nearest one among a stage's parents decides its regime.
TRAINING_TASKS = ("pretrain", "finetune")


class RecordError(ValueError):
    """A run record that is missing, unreadable or malformed; the message names file and field."""


class Protocol(TypedDict, total=False):
    """How an eval or bench stage measured: what it ranked, at which size and precision."""

    dataset: str | None          # data config name of the evaluated split
    split: str | None            # split evaluated (``test``, ``val``); None for bench stages
    n_images: int | None         # gallery images
    n_texts: int | None          # gallery captions
    image_size: int | None       # input resolution in pixels
    max_text_len: int | None     # tokens per caption
    first_stage: str | None      # stage id (or label) whose ranking a re-ranker re-scores
    rerank_k: int | None         # candidates re-ranked per query; None = every pair scored
    k_test: int | None           # bench: candidates a top-k re-ranker scores
    fusion: str | None           # cross-encoders: how image and text meet
    precision: str | None        # fp32 / bf16
    eval_batch_size: int | None  # items encoded at once
    world_size: int | None       # processes that evaluated


PROTOCOL_KEYS: tuple[str, ...] = tuple(Protocol.__annotations__)


class Cost(TypedDict, total=False):
    """Seconds of one timed protocol (``efficiency.protocols[<name>]``), measured or
    extrapolated; dual encoders fill ``index``/``ranking``/``query``, cross-encoders
    ``features`` and ``full_scoring``/``topk_rerank``."""

    kind: str                    # ``dual_encoder`` or ``cross_encoder``
    n_images: int
    n_texts: int
    status: str                  # ``measured`` or ``extrapolated``
    total_s: float
    hardware: str
    index: dict[str, Any]
    ranking: dict[str, Any]
    query: dict[str, Any]
    features: dict[str, Any]
    full_scoring: dict[str, Any]
    topk_rerank: dict[str, Any]
    flops: dict[str, Any]


COST_KINDS = ("dual_encoder", "cross_encoder")


class Efficiency(TypedDict, total=False):
    """Hardware, parameters, FLOPs and seconds of a stage's model."""

    flops_convention: str        # what one FLOP counts (2 x multiply-accumulates)
    precision: str
    hardware: str                # one-line description of the device
    device: str                  # ``cpu`` / ``cuda``
    params: dict[str, int]       # parameters per part, plus ``total``
    flops: dict[str, Any]        # per encode and per pair (``image_encode_flops`` ...)
    protocols: dict[str, Cost]   # timed protocols by name (bench stages)
    measured: dict[str, float | bool]  # seconds this eval stage spent on its own split, and
    #                                    flags such as ``features_from_cache``


@dataclass(frozen=True)
class Ancestor:
    """One training stage a stage descends from."""

    stage_id: str
    task: str
    dataset: str


@dataclass(frozen=True)
class Lineage:
    """Where a stage sits: its training parents (nearest first), grid, scale and overrides."""

    parents: tuple[Ancestor, ...] = ()
    grid: str | None = None
    scale: str | None = None
    overrides: tuple[str, ...] = ()

    def regime(self, dataset: str) -> str | None:
        """``finetuned`` / ``zeroshot`` / ``transfer:<data>`` from the nearest trained parent."""
        return regime(dataset, [(a.task, a.dataset) for a in self.parents])


@dataclass(frozen=True)
class Intervals:
    """Bootstrap confidence intervals of the metrics (optional)."""

    bounds: dict[str, tuple[float, float]]  # metric name -> (low, high), same unit as metrics
    samples: int                              # bootstrap resamples
    seed: int                                 # seed of the resampling
    level: float                              # coverage, e.g. 0.95


@dataclass(frozen=True)
class RunRecord:
    """Everything a finished stage reports (``result.json``)."""

    stage_id: str
    grid: str | None
    task: str
    model: str
    dataset: str
    split: str | None
    scale: str
    protocol: Protocol
    metrics: dict[str, float]
    efficiency: Efficiency
    train: dict[str, Any]
    env: dict[str, Any]
    created_at: str
    lineage: Lineage | None = None           # None only in version-1 records
    chance: dict[str, float] = field(default_factory=dict)  # metric -> value at random ranking
    intervals: Intervals | None = None       # optional confidence intervals
    per_query: str | None = None             # optional per-query ranks file, relative path
    first_stage_metrics: dict[str, float] | None = None  # re-ranking: the first stage's recall
    timing: dict[str, float] | None = None   # seconds: stage_s, process_age_at_start_s
    extra: dict[str, Any] = field(default_factory=dict)     # task-specific keys, kept as is
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """The record as written to ``result.json``."""
        out = asdict(self)
        extra = out.pop("extra")
        for key in ("intervals", "per_query", "lineage", "first_stage_metrics", "timing"):
            if out[key] is None:
                out.pop(key)
        # As JSON holds it (tuples become lists), so the reader checks what is written.
        return json.loads(json.dumps({**extra, **out}, default=str))

    def regime(self) -> str | None:
        """The stage's regime from its lineage, None when the record has none."""
        return self.lineage.regime(self.dataset) if self.lineage is not None else None


def regime(dataset: str, lineage: Sequence[tuple[str, str]]) -> str | None:
    """``finetuned`` / ``zeroshot`` / ``transfer:<data>`` from the nearest training ancestor."""
    for task, data in lineage:
        if task == "finetune":
            return "finetuned" if data == dataset else f"transfer:{data}"
        if task == "pretrain":
            return "zeroshot"
    return None


def now() -> str:
    """UTC time of day in ISO form, as records and manifests store it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def make_record(*, stage_id: str, grid: str | None, task: str, model: str, dataset: str,
                split: str | None, scale: str, lineage: Lineage,
                protocol: Mapping[str, Any] | None = None,
                metrics: Mapping[str, float] | None = None,
                efficiency: Mapping[str, Any] | None = None,
                train: Mapping[str, Any] | None = None, env: Mapping[str, Any] | None = None,
                chance: Mapping[str, float] | None = None,
                extra: Mapping[str, Any] | None = None) -> RunRecord:
    """A complete record; protocol fields that do not apply are present and None."""
    full: dict[str, Any] = {key: None for key in PROTOCOL_KEYS}
    full.update(protocol or {})
    extra = dict(extra or {})
    intervals = extra.pop("intervals", None)
    per_query = extra.pop("per_query", None)
    first_stage_metrics = extra.pop("first_stage_metrics", None)
    timing = extra.pop("timing", None)
    record = RunRecord(
        stage_id=stage_id, grid=grid, task=task, model=model, dataset=dataset, split=split,
        scale=scale, protocol=full, metrics=dict(metrics or {}),  # type: ignore[arg-type]
        efficiency=dict(efficiency or {}),  # type: ignore[arg-type]
        train=dict(train or {}), env=dict(env or {}), created_at=now(), lineage=lineage,
        chance=dict(chance or {}), extra=extra,
        intervals=_intervals(intervals, "make_record") if intervals is not None else None,
        per_query=per_query,
        first_stage_metrics=(None if first_stage_metrics is None else
                             _numbers(first_stage_metrics, "make_record", "first_stage_metrics")),
        timing=None if timing is None else _numbers(timing, "make_record", "timing"))
    # What is written must read back: the writer checks with the reader's rules.
    return parse_record(record.to_json(), f"record of {stage_id}")


def write_record(run_dir: Path, record: RunRecord) -> Path:
    """Check and atomically write ``run_dir/result.json``."""
    path = run_dir / RECORD_FILE
    if record.stage_id != run_dir.name:
        raise RecordError(f"{path}: field stage_id: {record.stage_id!r} is not this "
                          f"directory's stage ({run_dir.name!r})")
    data = record.to_json()
    parse_record(data, str(path))
    atomic_write_json(path, data)
    return path


# --- reading and checking --------------------------------------------------------------------

_TOP = {"stage_id": str, "task": str, "model": str, "dataset": str, "scale": str,
        "created_at": str, "protocol": dict, "metrics": dict, "efficiency": dict,
        "train": dict, "env": dict}
_OPTIONAL_TEXT = ("grid", "split")
_PROTOCOL_TYPES: dict[str, tuple[type, ...]] = {
    "dataset": (str,), "split": (str,), "n_images": (int,), "n_texts": (int,),
    "image_size": (int,), "max_text_len": (int,), "first_stage": (str,), "rerank_k": (int,),
    "k_test": (int,), "fusion": (str,), "precision": (str,), "eval_batch_size": (int,),
    "world_size": (int,)}


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail(where: str, name: str, problem: str) -> RecordError:
    return RecordError(f"{where}: field {name}: {problem}")


def _numbers(block: Any, where: str, name: str, flags: bool = False) -> dict[str, Any]:
    """``block`` checked as name -> number (or null; ``flags``: booleans allowed too)."""
    if not isinstance(block, dict):
        raise _fail(where, name, f"expected an object, got {_kind(block)}")
    for key, value in block.items():
        if value is None or _is_number(value) or (flags and isinstance(value, bool)):
            continue
        raise _fail(where, f"{name}.{key}", f"expected a number, got {_kind(value)}")
    return dict(block)


def _protocol(block: dict[str, Any], where: str) -> Protocol:
    for key, kinds in _PROTOCOL_TYPES.items():
        value = block.get(key)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise _fail(where, f"protocol.{key}",
                        f"expected {' or '.join(k.__name__ for k in kinds)} or null, "
                        f"got {_kind(value)} {value!r}")
    return {**{key: None for key in PROTOCOL_KEYS}, **block}  # type: ignore[typeddict-item]


def _efficiency(block: dict[str, Any], where: str) -> Efficiency:
    params = block.get("params", {})
    if not isinstance(params, dict):
        raise _fail(where, "efficiency.params", f"expected an object, got {_kind(params)}")
    for key, value in params.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(where, f"efficiency.params.{key}",
                        f"expected an integer count, got {_kind(value)}")
    for name in ("flops", "protocols"):
        if not isinstance(block.get(name, {}), dict):
            raise _fail(where, f"efficiency.{name}",
                        f"expected an object, got {_kind(block[name])}")
    _numbers(block.get("measured", {}), where, "efficiency.measured", flags=True)
    for name, cost in block.get("protocols", {}).items():
        if not isinstance(cost, dict):
            raise _fail(where, f"efficiency.protocols.{name}",
                        f"expected an object, got {_kind(cost)}")
        if cost.get("kind") not in COST_KINDS:
            raise _fail(where, f"efficiency.protocols.{name}.kind",
                        f"expected one of {list(COST_KINDS)}, got {cost.get('kind')!r}")
    return block  # type: ignore[return-value]


def _lineage(block: Any, where: str) -> Lineage:
    if not isinstance(block, dict):
        raise _fail(where, "lineage", f"expected an object, got {_kind(block)}")
    parents = block.get("parents")
    if not isinstance(parents, list):
        raise _fail(where, "lineage.parents", f"expected a list, got {_kind(parents)}")
    out = []
    for i, parent in enumerate(parents):
        if not isinstance(parent, dict) or not all(
                isinstance(parent.get(k), str) for k in ("stage_id", "task", "dataset")):
            raise _fail(where, f"lineage.parents[{i}]",
                        "expected {stage_id, task, dataset} as strings")
        out.append(Ancestor(parent["stage_id"], parent["task"], parent["dataset"]))
    overrides = block.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise _fail(where, "lineage.overrides", "expected a list of strings")
    for key in ("grid", "scale"):
        if block.get(key) is not None and not isinstance(block[key], str):
            raise _fail(where, f"lineage.{key}", f"expected a string or null, "
                                                 f"got {_kind(block[key])}")
    return Lineage(tuple(out), block.get("grid"), block.get("scale"), tuple(overrides))


def _intervals(block: Any, where: str) -> Intervals:
    if isinstance(block, Intervals):
        return block
    if not isinstance(block, dict):
        raise _fail(where, "intervals", f"expected an object, got {_kind(block)}")
    bounds = block.get("bounds")
    if not isinstance(bounds, dict):
        raise _fail(where, "intervals.bounds", f"expected an object, got {_kind(bounds)}")
    pairs = {}
    for name, pair in bounds.items():
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(_is_number(v) and math.isfinite(v) for v in pair)
                or pair[0] > pair[1]):
            raise _fail(where, f"intervals.bounds.{name}",
                        f"expected [low, high] with low <= high, got {pair!r}")
        pairs[name] = (float(pair[0]), float(pair[1]))
    for key, kind in (("samples", int), ("seed", int), ("level", float)):
        value = block.get(key)
        if not _is_number(value) or (kind is int and not isinstance(value, int)):
            raise _fail(where, f"intervals.{key}", f"expected {kind.__name__}, got "
                                                   f"{_kind(value)}")
    if not 0 < float(block["level"]) < 1:
        raise _fail(where, "intervals.level", f"expected a coverage in (0, 1), "
                                              f"got {block['level']!r}")
    return Intervals(pairs, int(block["samples"]), int(block["seed"]), float(block["level"]))


def _per_query(value: Any, where: str) -> str:
    path = PurePosixPath(value) if isinstance(value, str) else None
    if path is None or not value or path.is_absolute() or ".." in path.parts:
        raise _fail(where, "per_query", f"expected a path relative to the run directory, "
                                        f"got {value!r}")
    return str(value)


def parse_record(data: Any, where: str) -> RunRecord:
    """A checked :class:`RunRecord` from decoded JSON; :class:`RecordError` names the field."""
    if not isinstance(data, dict):
        raise RecordError(f"{where}: not a JSON object (got {_kind(data)})")
    if "schema_version" not in data:
        raise _fail(where, "schema_version", f"missing; this harness reads versions "
                                             f"{list(READABLE_VERSIONS)}")
    version = data["schema_version"]
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise _fail(where, "schema_version", f"{version!r} is not a version this harness "
                                             f"reads ({list(READABLE_VERSIONS)})")
    for name, kind in _TOP.items():
        if name not in data:
            raise _fail(where, name, "missing")
        if not isinstance(data[name], kind):
            raise _fail(where, name, f"expected {'an object' if kind is dict else 'a string'}, "
                                     f"got {_kind(data[name])}")
    for name in _OPTIONAL_TEXT:
        if name not in data:
            raise _fail(where, name, "missing")
        if data[name] is not None and not isinstance(data[name], str):
            raise _fail(where, name, f"expected a string or null, got {_kind(data[name])}")
    if version >= 2 and "lineage" not in data:
        raise _fail(where, "lineage", "missing (required from schema_version 2)")
    known = {*_TOP, *_OPTIONAL_TEXT, "schema_version", "lineage", "chance", "intervals",
             "per_query", "first_stage_metrics", "timing"}
    return RunRecord(
        stage_id=data["stage_id"], grid=data["grid"], task=data["task"], model=data["model"],
        dataset=data["dataset"], split=data["split"], scale=data["scale"],
        protocol=_protocol(data["protocol"], where),
        metrics=_numbers(data["metrics"], where, "metrics"),
        efficiency=_efficiency(data["efficiency"], where), train=data["train"],
        env=data["env"], created_at=data["created_at"],
        lineage=_lineage(data["lineage"], where) if "lineage" in data else None,
        chance=_numbers(data.get("chance", {}), where, "chance"),
        intervals=_intervals(data["intervals"], where) if data.get("intervals") else None,
        per_query=_per_query(data["per_query"], where) if data.get("per_query") else None,
        first_stage_metrics=(_numbers(data["first_stage_metrics"], where, "first_stage_metrics")
                             if data.get("first_stage_metrics") is not None else None),
        timing=(_numbers(data["timing"], where, "timing")
                if data.get("timing") is not None else None),
        extra={k: v for k, v in data.items() if k not in known},
        schema_version=int(version))


def record_problem(run_dir: Path) -> str | None:
    """Why ``run_dir/result.json`` is not a valid record of this stage, or None when it is."""
    try:
        read_record(run_dir)
    except RecordError as exc:
        return str(exc).removeprefix(f"{run_dir / RECORD_FILE}: ")
    return None


def read_record(run_dir: Path) -> RunRecord:
    """The checked record of the stage in ``run_dir``; :class:`RecordError` otherwise."""
    path = run_dir / RECORD_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecordError(f"{path}: result.json is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: result.json is unreadable ({exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RecordError(f"{path}: result.json is not valid JSON ({exc})") from None
    record = parse_record(data, str(path))
    if record.stage_id != run_dir.name:
        raise _fail(str(path), "stage_id", f"result.json belongs to stage {record.stage_id!r}")
    return record
