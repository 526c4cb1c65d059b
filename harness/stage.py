"""Run one stage (pretrain / finetune / eval) in this process, inside its run directory."""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from harness.config import to_plain
from harness.data.karpathy import CaptionCorpus, load_captions
from harness.data.loaders import CaptionPairs, make_collate
from harness.data.pretrain import ManifestPairs, load_manifest
from harness.data.report import DataError, DataReport
from harness.data.text import Tokenizer, resolve_tokenizer
from harness.data.transforms import build_transform
from harness.eval.features import feature_key
from harness.eval.results import make_result, write_result
from harness.eval.retrieval import record_per_query
from harness.eval.run_eval import evaluate_cross, evaluate_dual
from harness.interfaces import is_cross_encoder
from harness.launch.lock import acquire, owner_identity, process_age_s
from harness.launch.provenance import environment
from harness.launch.store import (
    DONE_MARKER,
    FAILED_MARKER,
    RUNNING_MARKER,
    atomic_write_json,
    atomic_write_text,
    mark,
    owner_alive,
    stage_dir,
    stage_status,
)
from harness.models.towers import text_weights_dir, without_weights
from harness.record import Ancestor, Lineage
from harness.registry import MODELS
from harness.train.checkpoint import load_checkpoint
from harness.train.loop import Preempted, train

TaskFn = Callable[[DictConfig, Path, Path], dict[str, Any]]


def _prepare_data(cfg: DictConfig) -> None:
    if cfg.data.get("generate") and cfg.task.name != "bench":
        from harness.data.synthetic import ensure_synthetic
        from harness.dist import init_distributed, main_process_first

        if cfg.task.name in ("pretrain", "finetune"):  # joins the process group under DDP
            init_distributed(torch.device(cfg.task.device).type if cfg.task.get("device")
                             else None)
        with main_process_first():  # rank 0 builds; the others then find it complete
            ensure_synthetic(Path(cfg.data.root), **to_plain(cfg.data.generate))


def _corpus(cfg: DictConfig, split: str, report: DataReport) -> CaptionCorpus:
    return load_captions(Path(cfg.data.annotation), Path(cfg.data.image_root), split,
                         name=cfg.data.name, fmt=cfg.data.format, report=report,
                         check_images=bool(cfg.data.check_images))


def _parent(cfg: DictConfig, run_root: Path, required: bool) -> Path | None:
    if not cfg.task.get("init_from"):
        if required:
            raise ValueError(f"task={cfg.task.name} needs task.init_from=<run dir of a trained "
                             f"stage under {run_root}>")
        return None
    parent = run_root / cfg.task.init_from
    if stage_status(parent) != "done":
        raise FileNotFoundError(f"task.init_from={cfg.task.init_from}: {parent} is not a "
                                f"completed stage (status: {stage_status(parent)})")
    return parent


def _build_model(cfg: DictConfig, tokenizer: Tokenizer) -> torch.nn.Module:
    factory = MODELS.get(cfg.model.name)
    return factory(to_plain(cfg.model), vocab_size=tokenizer.vocab_size,
                   special_ids=tokenizer.special_ids)


def _model_efficiency(cfg: DictConfig, model: torch.nn.Module, vocab_size: int,
                      device: torch.device, timings: dict[str, float]) -> dict[str, Any]:
    """Parameters per part, FLOPs per encode (shape-only), measured seconds."""
    from harness.eval.efficiency import efficiency_block
    from harness.eval.flops import flops_summary
    from harness.eval.param_parts import param_parts

    factory = MODELS.get(cfg.model.name)
    model_cfg = without_weights(to_plain(cfg.model))  # shapes only: no weight files are read
    flops = flops_summary(lambda: factory(model_cfg, vocab_size=vocab_size),
                          image_size=int(cfg.model.image_size),
                          text_len=int(cfg.data.max_text_len))
    block = efficiency_block(device=device, precision="bf16" if device.type == "cuda" else "fp32",
                             params=param_parts(model, image_size=int(cfg.model.image_size),
                                                text_len=int(cfg.data.max_text_len)),
                             flops=flops)
    block["measured"] = timings  # this split's real encode and rank seconds
    return block


def _transform(cfg: DictConfig, train: bool) -> Any:
    return build_transform(int(cfg.model.image_size), to_plain(cfg.data.augment), train=train,
                           mean=tuple(cfg.model.mean), std=tuple(cfg.model.std))


def train_task(cfg: DictConfig, run_dir: Path, run_root: Path) -> dict[str, Any]:
    """Pretrain on a pair corpus or fine-tune on a caption dataset's train split."""
    from harness.data.pretrain import ShardPairs, shard_captions
    from harness.dist import init_distributed, main_process_first

    env = init_distributed(torch.device(cfg.task.device).type if cfg.task.get("device") else None)
    report = DataReport(cfg.data.on_bad_sample)
    inputs = cfg.model.get("train_inputs") or {}
    views = int(inputs.get("image_views", 1))
    source = cfg.task.get("pretrain_source", "manifest")
    if cfg.task.name == "pretrain" and source == "shards":
        if not cfg.data.get("pretrain_shards"):
            raise DataError(f"data={cfg.data.name} has no pretrain_shards for "
                            f"task.pretrain_source=shards")
        dataset: Any = ShardPairs(
            str(cfg.data.pretrain_shards), _transform(cfg, train=True),
            resampled=bool(cfg.task.get("shard_resampled", True)), seed=int(cfg.seed),
            image_views=views, policy=str(cfg.data.on_bad_sample),
            shuffle_buffer=int(cfg.task.get("shuffle_buffer", 0)))
        captions: Any = shard_captions(dataset.shards)  # read only if a vocab must be built
    elif cfg.task.name == "pretrain":
        if source != "manifest":
            raise ValueError(f"task.pretrain_source={source!r}; valid: manifest, shards")
        if not cfg.data.get("pretrain_manifest"):
            raise DataError(f"data={cfg.data.name} has no pretrain_manifest for task=pretrain")
        pairs = load_manifest(Path(cfg.data.pretrain_manifest), report,
                              check_images=bool(cfg.data.check_images))
        captions = [caption for _, caption in pairs]
        dataset = ManifestPairs(pairs, _transform(cfg, train=True), image_views=views)
    else:
        corpus = _corpus(cfg, cfg.data.train_split, report)
        captions = corpus.captions
        dataset = CaptionPairs(corpus, _transform(cfg, train=True), image_views=views,
                               second_caption=bool(inputs.get("second_caption", False)),
                               seed=int(cfg.seed))
    if env.is_main:
        report.write(run_dir / "data_report.json")
    parent = _parent(cfg, run_root, required=False)
    with main_process_first():  # rank 0 builds the vocabulary cache, the others reuse it
        tokenizer = resolve_tokenizer(
            pretrained_dir=text_weights_dir(to_plain(cfg.model)), vocab_dir=cfg.data.vocab_dir,
            inherited=parent / "tokenizer" if parent else None,
            captions=captions, cache_root=Path(cfg.data.vocab_cache),
            max_len=int(cfg.data.max_text_len), vocab_size=int(cfg.data.vocab_size))
    if env.is_main:
        tokenizer.save(run_dir / "tokenizer")
    # Initial weights depend on the seed only, not on what this process ran before.
    torch.manual_seed(int(cfg.seed))
    model = _build_model(cfg, tokenizer)
    init = load_checkpoint(parent / "checkpoints" / "latest.pt")["model"] if parent else None
    summary = train(model, dataset, make_collate(tokenizer), to_plain(cfg.task), run_dir,
                    init_state=init)
    return {"split": cfg.data.train_split if cfg.task.name == "finetune" else "pretrain",
            "train": {"steps": summary.steps, "samples_seen": summary.samples_seen,
                      "wall_s": round(summary.wall_s, 3), "final_losses": summary.final_losses,
                      "batch_size": int(cfg.task.batch_size),
                      "accum_steps": int(cfg.task.get("accum_steps", 1)),
                      "world_size": summary.world_size},
            "data_report": report.summary()}


def _differences(a: Any, b: Any, prefix: str = "model") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in _differences(a.get(k), b.get(k), f"{prefix}.{k}")]
    return [] if a == b else [f"{prefix}: {b!r} there, {a!r} here"]


def _check_same_model(cfg: DictConfig, parent: Path) -> None:
    """Refuse to evaluate a checkpoint with a model config other than the one it trained with
    (a raw state_dict mismatch would be the only message otherwise)."""
    trained = OmegaConf.load(parent / "resolved.yaml").model
    diff = _differences(to_plain(cfg.model), to_plain(trained))
    if diff:
        raise ValueError(f"{parent.name} was trained with another model config; evaluate it "
                         f"with the same model overrides ({'; '.join(diff[:5])})")


def _preprocessing(cfg: DictConfig) -> dict[str, Any]:
    """What an eval stage's cached embeddings depend on besides checkpoint, dataset, split."""
    return {"image_size": int(cfg.model.image_size), "mean": list(cfg.model.mean),
            "std": list(cfg.model.std), "max_text_len": int(cfg.data.max_text_len),
            "eval_crop_pct": to_plain(cfg.data.augment).get("eval_crop_pct", 1.0)}


def _first_stage(cfg: DictConfig, run_root: Path) -> Any:
    """The checked run named by ``task.first_stage`` (None: no external first stage)."""
    from harness.config import compose
    from harness.eval.first_stage import SELF_NAMES, resolve_first_stage

    name = cfg.task.get("first_stage")
    if not name or str(name) in SELF_NAMES:
        return None
    defaults: dict[str, Any] = {}

    def training(stage_cfg: DictConfig) -> list[tuple[str, str]]:
        return [(a.task, a.dataset) for a in lineage(stage_cfg, run_root, None, ()).parents]

    def is_default(run: Path) -> bool:
        """The model's own config at this scale (no ablation), trained like this evaluation's
        model (same training tasks on the same datasets), so the pairing is like for like and
        does not depend on which other grids have run."""
        if "model" not in defaults:
            defaults["model"] = to_plain(compose([f"model={name}", f"data={cfg.data.name}",
                                                  f"scale={cfg.scale.name}"]).model)
            defaults["training"] = training(cfg)
        resolved = OmegaConf.load(run / "resolved.yaml")
        return (to_plain(resolved.model) == defaults["model"]
                and training(resolved) == defaults["training"])

    return resolve_first_stage(str(name), run_root, dataset=cfg.data.name,
                               split=str(cfg.task.split), k_test=int(cfg.task.k_test),
                               stage_status=stage_status, is_default=is_default)


def _first_stage_embeddings(first: Any, cfg: DictConfig, run_root: Path, corpus: CaptionCorpus,
                            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first stage's image and text embeddings of ``corpus``: the ones its own eval cached,
    or encoded again from its checkpoint with its own preprocessing."""
    from harness.eval.features import cached_embeddings, encode_images, encode_texts
    from harness.eval.first_stage import FirstStageError
    from harness.interfaces import DualEncoder

    fs_cfg = OmegaConf.load(first.run_dir / "resolved.yaml")
    parent = _parent(fs_cfg, run_root, required=True)
    assert parent is not None
    checkpoint = parent / "checkpoints" / "latest.pt"
    tokenizer = Tokenizer(parent / "tokenizer", int(fs_cfg.data.max_text_len))
    batch = int(cfg.task.batch_size)

    def encode() -> tuple[torch.Tensor, torch.Tensor]:
        model = _build_model(fs_cfg, tokenizer)
        if not isinstance(model, DualEncoder):
            raise FirstStageError(f"task.first_stage={cfg.task.first_stage}: run "
                                  f"{first.name} ({fs_cfg.model.name}) has no embeddings")
        model.load_state_dict(load_checkpoint(checkpoint)["model"])
        model.to(device).eval()
        img = encode_images(model, corpus, _transform(fs_cfg, train=False), batch_size=batch,
                            device=device, num_workers=int(cfg.task.num_workers))
        return img, encode_texts(model, corpus.captions, tokenizer, batch_size=batch,
                                 device=device)

    key = feature_key(checkpoint, fs_cfg.data.name, str(fs_cfg.task.split),
                      _preprocessing(fs_cfg))
    cache = run_root / ".features" if cfg.task.get("cache_features", True) else None
    img, txt, _ = cached_embeddings(cache, key, encode)
    return img, txt


def eval_task(cfg: DictConfig, run_dir: Path, run_root: Path) -> dict[str, Any]:
    """Retrieval metrics of a trained stage's checkpoint on ``task.split``."""
    parent = _parent(cfg, run_root, required=True)
    assert parent is not None
    first = _first_stage(cfg, run_root)  # every check on it before any model is built
    report = DataReport(cfg.data.on_bad_sample)
    corpus = _corpus(cfg, cfg.task.split, report)
    report.write(run_dir / "data_report.json")
    _check_same_model(cfg, parent)
    tokenizer = Tokenizer(parent / "tokenizer", int(cfg.data.max_text_len))
    model = _build_model(cfg, tokenizer)
    model.load_state_dict(load_checkpoint(parent / "checkpoints" / "latest.pt")["model"])
    device = torch.device(cfg.task.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).eval()
    transform, workers = _transform(cfg, train=False), int(cfg.task.num_workers)
    ranks: dict[str, torch.Tensor] = {}  # per-query rank of the first positive, per direction
    extra: dict[str, Any] = {}
    if is_cross_encoder(model):
        given = (None if first is None else
                 (*_first_stage_embeddings(first, cfg, run_root, corpus, device), first.name))
        metrics, protocol, timings = evaluate_cross(model, corpus, transform, tokenizer,
                                                    task=to_plain(cfg.task), device=device,
                                                    num_workers=workers, first_stage=given,
                                                    ranks_out=ranks)
        if "first_stage_metrics" in protocol:  # the first stage's recall beside the re-ranked
            extra["first_stage_metrics"] = protocol.pop("first_stage_metrics")
    elif first is not None:
        raise ValueError(f"task.first_stage={cfg.task.first_stage}: only a cross-encoder "
                         f"re-ranks a first stage; {cfg.model.name} ranks by its own embeddings")
    else:
        checkpoint = parent / "checkpoints" / "latest.pt"
        preprocessing = _preprocessing(cfg)
        metrics, protocol, timings = evaluate_dual(
            model, corpus, transform, tokenizer, batch_size=int(cfg.task.batch_size),
            device=device, num_workers=workers,
            cache_dir=run_root / ".features" if cfg.task.get("cache_features", True) else None,
            cache_key=feature_key(checkpoint, cfg.data.name, cfg.task.split, preprocessing),
            ranks_out=ranks)
    # Per-query ranks and bootstrap intervals: result.json's per_query and intervals.
    per_query = record_per_query(run_dir, ranks, to_plain(cfg.task.get("bootstrap")))
    return {"split": cfg.task.split, "metrics": metrics, **per_query,
            "protocol": {"dataset": cfg.data.name, "split": cfg.task.split,
                         "n_images": corpus.n_images, "n_texts": corpus.n_texts,
                         "image_size": int(cfg.model.image_size),
                         "max_text_len": int(cfg.data.max_text_len),
                         "precision": "bf16" if device.type == "cuda" else "fp32",
                         "eval_batch_size": int(cfg.task.batch_size), "world_size": 1,
                         **protocol},
            "efficiency": _model_efficiency(cfg, model, tokenizer.vocab_size, device, timings),
            "chance": {"i2t_R@1": 100.0 * len(corpus.captions) / corpus.n_images
                       / corpus.n_texts, "t2i_R@1": 100.0 / corpus.n_images}, **extra}


def bench_task(cfg: DictConfig, run_dir: Path, run_root: Path) -> dict[str, Any]:
    """Parameters, FLOPs and protocol times of the model at this scale (random weights)."""
    from harness.config import compose
    from harness.eval.cost import FirstStageModel, model_costs, protocol_seconds

    device = torch.device(cfg.task.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    factory = MODELS.get(cfg.model.name)
    model_cfg, vocab = without_weights(to_plain(cfg.model)), int(cfg.task.vocab_size)
    first, name = None, cfg.task.get("first_stage")
    if name and str(name) != "self":  # a model name: time its embedding protocol too
        fs_cfg = without_weights(to_plain(compose([f"model={name}", "task=bench",
                                                   f"scale={cfg.scale.name}"]).model))
        first = FirstStageModel(str(name), lambda: MODELS.get(str(name))(fs_cfg, vocab_size=vocab),
                                int(fs_cfg["image_size"]))
    block = model_costs(lambda: factory(model_cfg, vocab_size=vocab),
                        image_size=int(cfg.model.image_size), text_len=int(cfg.task.text_len),
                        vocab_size=vocab, protocols=list(cfg.task.protocols), device=device,
                        precision=cfg.task.precision or ("bf16" if device.type == "cuda"
                                                         else "fp32"),
                        budget_s=float(cfg.task.budget_s), encode_batch=int(cfg.task.encode_batch),
                        pair_batch=int(cfg.task.pair_batch), k_test=int(cfg.task.k_test),
                        first_stage=first)
    return {"split": None, "efficiency": block, "protocol_seconds": protocol_seconds(block),
            "protocol": {"dataset": None, "k_test": int(cfg.task.k_test),
                         "rerank_k": int(cfg.task.k_test) if any(
                             "topk_rerank" in c for c in block["protocols"].values()) else None,
                         "first_stage": None if first is None else first.name,
                         "precision": block["precision"],
                         "eval_batch_size": int(cfg.task.encode_batch), "world_size": 1,
                         "image_size": int(cfg.model.image_size),
                         "max_text_len": int(cfg.task.text_len)}}


TASKS: dict[str, TaskFn] = {"pretrain": train_task, "finetune": train_task, "eval": eval_task,
                            "bench": bench_task}


def run_stage(cfg: DictConfig, run_root: Path, *, grid: str | None = None,
              force: bool = False, overrides: Sequence[str] = ()) -> Path:
    """Run the stage ``cfg`` describes unless it is already done; returns its directory.

    The runner owns the stage directory for the whole run (:mod:`harness.launch.lock`); a
    stage another live runner owns raises :class:`~harness.launch.lock.StageBusy`. Under a
    multi-process launcher every rank runs this; only rank 0 takes the lock and writes the
    run directory's records (config, env, markers, result), the others only compute.
    ``overrides`` (the stage's command-line choices) go into the record's lineage.
    """
    from harness.dist import world_info_from_env

    if cfg.task.name not in TASKS:
        raise ValueError(f"unknown task {cfg.task.name!r}; valid: {', '.join(TASKS)}")
    run_dir = stage_dir(cfg, run_root)
    if stage_status(run_dir) == "done" and not force:
        print(f"[stage] {run_dir.name}: already done, skipped", flush=True)
        return run_dir
    main = world_info_from_env().is_main
    job_id = os.environ.get("SLURM_JOB_ID")
    lock = acquire(run_dir, job_id=job_id, alive=owner_alive) if main else None
    try:
        # Another runner may have finished the stage between the check above and the lock.
        if lock is not None and stage_status(run_dir) == "done" and not force:
            print(f"[stage] {run_dir.name}: already done, skipped", flush=True)
            return run_dir
        return _run_owned(cfg, run_dir, run_root, grid=grid, main=main, job_id=job_id,
                          overrides=overrides)
    finally:
        if lock is not None:
            lock.release()


def lineage(cfg: DictConfig, run_root: Path, grid: str | None,
            overrides: Sequence[str]) -> Lineage:
    """The stage's training parents (nearest first, from ``task.init_from`` and each parent's
    ``resolved.yaml``), grid, scale and overrides, as its run record stores them."""
    parents: list[Ancestor] = []
    parent = cfg.task.get("init_from")
    while parent and Path(str(parent)).name not in {a.stage_id for a in parents}:
        folder = run_root / str(parent)  # init_from may also be an absolute path
        try:
            resolved = OmegaConf.load(folder / "resolved.yaml")
        except OSError:
            break  # a parent without its config: the record keeps the ancestors known so far
        parents.append(Ancestor(folder.name, str(resolved.task.name), str(resolved.data.name)))
        parent = resolved.task.get("init_from")
    return Lineage(parents=tuple(parents), grid=grid, scale=str(cfg.scale.name),
                   overrides=tuple(str(o) for o in overrides))


def _run_owned(cfg: DictConfig, run_dir: Path, run_root: Path, *, grid: str | None,
               main: bool, job_id: str | None, overrides: Sequence[str] = ()) -> Path:
    """The body of :func:`run_stage`, run while this process owns ``run_dir``."""
    env = environment()
    if main:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
        atomic_write_text(run_dir / "resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write_json(run_dir / "env.json", env)
        mark(run_dir, RUNNING_MARKER, **owner_identity(job_id))
        print(f"[stage] {run_dir.name}: running {cfg.task.name}", flush=True)
    # Where a grid's minutes go (bench/profile_runs.py): the stage's own body, and how long
    # its process had run before it (start-up and imports when the stage has its own process,
    # as under cluster.workers>1 or SLURM; earlier stages too when one process runs several).
    started, before = time.perf_counter(), process_age_s()
    try:
        _prepare_data(cfg)
        out = TASKS[cfg.task.name](cfg, run_dir, run_root)
        out["timing"] = {"stage_s": round(time.perf_counter() - started, 3),
                         "process_age_at_start_s": None if before is None else round(before, 3)}
        if main:
            write_result(run_dir, make_result(
                stage_id=run_dir.name, grid=grid, task=cfg.task.name, model=cfg.model.name,
                dataset=cfg.data.name, split=out.pop("split", None), scale=cfg.scale.name,
                lineage=lineage(cfg, run_root, grid, overrides),
                protocol=out.pop("protocol", None), metrics=out.pop("metrics", None),
                efficiency=out.pop("efficiency", None), train=out.pop("train", None), env=env,
                chance=out.pop("chance", None), extra=out))
    except (Preempted, KeyboardInterrupt) as exc:
        # Not a failure: a preempted stage has its checkpoint and will be requeued or rerun;
        # an interrupted one (Ctrl-C, the grid stopping) is rerun next time. The marker names
        # this process, so once it has exited the stage reads `interrupted`, not `running`.
        if main:
            mark(run_dir, RUNNING_MARKER, **owner_identity(job_id),
                 **({"preempted": True} if isinstance(exc, Preempted) else
                    {"interrupted": type(exc).__name__}))
        raise
    except BaseException as exc:
        if main:
            (run_dir / "error.txt").write_text(traceback.format_exc())
            mark(run_dir, FAILED_MARKER, error=f"{type(exc).__name__}: {exc}",
                 log=str(run_dir / "error.txt"))
        raise
    if main:
        mark(run_dir, DONE_MARKER)
    return run_dir
