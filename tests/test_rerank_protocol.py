"""Retrieve-then-rerank as a protocol: what re-ranking may change, what it reports, and the
first-stage run (``task.first_stage``) checked before any pair is scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from harness.eval.first_stage import FirstStageError, resolve_first_stage
from harness.eval.rerank import cross_encoder_retrieval
from harness.eval.results import make_result, write_result
from harness.eval.retrieval import metrics_from_ranks, retrieval_metrics
from harness.interfaces import TokenFeatures
from harness.launch.store import DONE_MARKER, FAILED_MARKER, mark, stage_status
from harness.record import Lineage

N_IMG, CAPS = 9, 3
TXT2IMG = torch.arange(N_IMG).repeat_interleave(CAPS)


class TableCrossEncoder(nn.Module):
    """A cross-encoder whose score of (image i, text t) is ``table[i, t]``, whatever it is."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)

    def image_features(self, images: Tensor) -> TokenFeatures:
        return TokenFeatures(images[:, None, None].float(), torch.ones(len(images), 1).bool())

    def text_features(self, tokens) -> TokenFeatures:
        ids = tokens["input_ids"][:, :1].float()
        return TokenFeatures(ids[:, :, None], tokens["attention_mask"].bool())

    def score_pairs(self, image_features: TokenFeatures, text_features: TokenFeatures) -> Tensor:
        i = image_features.tokens[:, 0, 0].long()
        t = text_features.tokens[:, 0, 0].long()
        return self.table[i, t]

    def losses(self, batch):  # pragma: no cover - protocol completeness
        raise NotImplementedError


def _inputs() -> tuple[Tensor, dict[str, Tensor]]:
    images = torch.arange(N_IMG)  # an image "is" its index; the table holds the scores
    tokens = {"input_ids": torch.arange(N_IMG * CAPS)[:, None],
              "attention_mask": torch.ones(N_IMG * CAPS, 1, dtype=torch.long)}
    return images, tokens


def _rerank(first: Tensor, table: Tensor, k: int, ks=(1, 3, 5)):
    images, tokens = _inputs()
    return cross_encoder_retrieval(TableCrossEncoder(table), images, tokens, TXT2IMG,
                                   mode="topk", k_test=k, first_stage=first, ks=ks,
                                   device="cpu", first_stage_name="eval-clip-x-1")


def test_a_positive_inside_the_top_k_stays_inside_whatever_the_cross_encoder_says():
    # Constructed: every query's positive is the first stage's k-th (last) candidate, and the
    # cross-encoder scores it lowest of all while loving a gallery item just outside the top k.
    k = 3
    first = torch.zeros(N_IMG, N_IMG * CAPS)
    table = torch.zeros(N_IMG, N_IMG * CAPS)
    for i in range(N_IMG):
        pos = i * CAPS  # the image's first caption
        others = [t for t in range(N_IMG * CAPS) if TXT2IMG[t] != i]
        for rank, t in enumerate(others[: k - 1]):
            first[i, t] = 10.0 - rank
        first[i, pos] = 5.0  # rank k for i2t
        first[i, others[k - 1]] = 4.0  # rank k + 1: just outside
        table[i, pos] = -100.0
        table[i, others[k - 1]] = 100.0
    metrics, protocol, _ = _rerank(first, table, k)
    assert metrics["i2t_R@3"] == 100.0  # at rank k, not pushed out
    assert metrics["i2t_R@1"] == 0.0  # ... and the cross-encoder did move it down
    assert protocol["first_stage_metrics"]["i2t_R@1"] == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_reranking_keeps_recall_at_k_of_any_first_stage_with_any_scores(seed):
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(-5, 6, (N_IMG, N_IMG * CAPS), generator=g).float()
    table = torch.randint(-5, 6, (N_IMG, N_IMG * CAPS), generator=g).float()
    for k in (1, 3, 5):
        metrics, protocol, _ = _rerank(first, table, k, ks=tuple(sorted({1, k})))
        fs = protocol["first_stage_metrics"]
        # The candidate set is the first stage's top k: a positive inside stays inside,
        # one outside stays outside, so R@k is exactly the first stage's.
        assert metrics[f"i2t_R@{k}"] == fs[f"i2t_R@{k}"]
        assert metrics[f"t2i_R@{k}"] == fs[f"t2i_R@{k}"]


def test_first_stage_recall_is_reported_beside_the_reranked_one():
    g = torch.Generator().manual_seed(11)
    first = torch.randn(N_IMG, N_IMG * CAPS, generator=g)
    table = torch.randn(N_IMG, N_IMG * CAPS, generator=g)
    metrics, protocol, _ = _rerank(first, table, 4, ks=(1,))
    expected = retrieval_metrics(first, TXT2IMG, ks=(1,))
    assert protocol["first_stage_metrics"] == {"i2t_R@1": expected["i2t_R@1"],
                                               "t2i_R@1": expected["t2i_R@1"]}
    assert protocol["rerank_k"] == 4 and protocol["first_stage"] == "eval-clip-x-1"
    full = cross_encoder_retrieval(TableCrossEncoder(table), *_inputs(), TXT2IMG, mode="full",
                                   device="cpu")[1]
    assert full["rerank_k"] is None and full["first_stage"] is None


# ------------------------------------------------------------- task.first_stage run checks


def _eval_run(root: Path, name: str, *, model: str = "clip", dataset: str = "synthetic",
              split: str = "test", task: str = "eval", status: str = "done",
              n_images: int = 150, first_stage: str | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"model": {"name": model}}), run / "resolved.yaml")
    if status == "failed":
        mark(run, FAILED_MARKER, error="boom")
        return run
    write_result(run, make_result(stage_id=name, grid=None, task=task, model=model,
                                  dataset=dataset, split=split, scale="smoke", lineage=Lineage(),
                                  protocol={"n_images": n_images, "n_texts": 5 * n_images,
                                            "first_stage": first_stage}))
    mark(run, DONE_MARKER)
    return run


def _resolve(root: Path, name: str, k: int = 16, **kw):
    return resolve_first_stage(name, root, dataset="synthetic", split="test", k_test=k,
                               stage_status=stage_status, **kw)


def test_a_completed_eval_run_is_accepted_by_id_or_by_model(tmp_path):
    run = _eval_run(tmp_path, "eval-clip-synthetic-aaaa1111")
    _eval_run(tmp_path, "eval-clip-coco-bbbb2222", dataset="coco")  # another dataset: ignored
    assert _resolve(tmp_path, run.name).run_dir == run
    assert _resolve(tmp_path, "clip").run_dir == run


@pytest.mark.parametrize("case, run_kw, k, needle", [
    ("missing", None, 16, "eval-clip-synthetic-00000000 is missing"),
    ("failed", {"status": "failed"}, 16, "is failed"),
    ("other split", {"split": "val"}, 16, "synthetic/val, this evaluation is synthetic/test"),
    ("other dataset", {"dataset": "coco"}, 16, "coco/test"),
    ("not an eval", {"task": "finetune"}, 16, "is a finetune stage"),
    ("a re-ranking", {"first_stage": "eval-x"}, 16, "itself a re-ranking"),
    ("k over gallery", {"n_images": 10}, 11, "task.k_test=11 exceeds the gallery"),
])
def test_a_bad_first_stage_is_refused_with_one_line_naming_the_run(tmp_path, case, run_kw, k,
                                                                    needle):
    name = "eval-clip-synthetic-00000000"
    if run_kw is not None:
        _eval_run(tmp_path, name, **run_kw)
    with pytest.raises(FirstStageError) as info:
        _resolve(tmp_path, name, k)
    message = str(info.value)
    assert needle in message and name in message and "\n" not in message, case


def test_a_model_name_needs_exactly_one_completed_default_eval(tmp_path):
    with pytest.raises(FirstStageError, match="no eval stage of model clip on synthetic"):
        _resolve(tmp_path, "clip")
    _eval_run(tmp_path, "eval-clip-synthetic-cccc3333", status="failed")
    with pytest.raises(FirstStageError, match="eval-clip-synthetic-cccc3333 is failed"):
        _resolve(tmp_path, "clip")
    a = _eval_run(tmp_path, "eval-clip-synthetic-aaaa1111")
    b = _eval_run(tmp_path, "eval-clip-synthetic-bbbb2222")
    with pytest.raises(FirstStageError, match="2 completed eval stages match"):
        _resolve(tmp_path, "clip")
    # An ablation (model config other than the default) is not what a bare model name means.
    only_a = _resolve(tmp_path, "clip", is_default=lambda run: run == a)
    assert only_a.run_dir == a and b.is_dir()


# ------------------------------------------------------------------- through the stage runner


@pytest.mark.slow
def test_table2_reranks_cookies_eval_run_and_records_both_recalls(tmp_path):
    from harness.run import main

    args = ["grid=table2", "grid.experiments.0.models=[cookie,single_stream]",
            f"run_root={tmp_path / 'runs'}", f"results_dir={tmp_path / 'results'}",
            f"data.root={tmp_path / 'data'}", "data.generate.n_images=200", "data.num_workers=0",
            "scale.pretrain.steps=2", "scale.train.steps=2",
            "+grid.experiments.1.overrides=['task.k_test=8']",
            "scale.pretrain.batch_size=16", "scale.train.batch_size=16"]
    assert main(args) == 0
    runs = tmp_path / "runs"
    results = [json.loads(p.read_text()) for p in runs.glob("eval-*/result.json")]
    rerank = [r for r in results if r["protocol"]["first_stage"] is not None]
    assert len(results) == 3 and len(rerank) == 1
    cookie = next(r for r in results if r["model"] == "cookie")
    got = rerank[0]
    assert got["protocol"]["first_stage"] == cookie["stage_id"]
    assert got["protocol"]["rerank_k"] == 8 and got["protocol"]["scoring"] == "topk"
    # The first stage's recall, beside the re-ranked one, is COOKIE's own eval recall.
    assert got["first_stage_metrics"]["i2t_R@1"] == pytest.approx(cookie["metrics"]["i2t_R@1"])
    assert got["first_stage_metrics"]["t2i_R@5"] == pytest.approx(cookie["metrics"]["t2i_R@5"])
    # Nothing inside COOKIE's top 8 is lost: R@5 and R@1 can move, R@8 cannot (not reported
    # here), and R@K above k is not reported at all.
    assert "i2t_R@10" not in got["metrics"] and "i2t_R@5" in got["metrics"]


def test_a_bad_first_stage_fails_the_eval_before_the_model_is_built(tmp_path, monkeypatch):
    import harness.stage as stage
    from harness.config import compose

    parent = _eval_run(tmp_path, "finetune-single_stream-synthetic-11112222", task="finetune")
    cfg = compose(["task=eval", "model=single_stream", f"task.init_from={parent.name}",
                   "+task.first_stage=eval-cookie-synthetic-deadbeef"])

    def never(*_a, **_k):
        raise AssertionError("the model was built before the first stage was checked")

    monkeypatch.setattr(stage, "_build_model", never)
    monkeypatch.setattr(stage, "_corpus", never)
    with pytest.raises(FirstStageError, match="eval-cookie-synthetic-deadbeef is missing"):
        stage.eval_task(cfg, tmp_path / "eval-x", tmp_path)


@pytest.mark.parametrize("mode", ["full", "topk"])
def test_per_query_ranks_recompute_the_reported_recall(mode):
    # The eval stage writes these ranks to ranks.npz (bootstrap intervals, paired comparisons):
    # they must be the ranks the reported metrics came from, in both protocols.
    g = torch.Generator().manual_seed(5)
    first = torch.randn(N_IMG, N_IMG * CAPS, generator=g)
    table = torch.randn(N_IMG, N_IMG * CAPS, generator=g)
    ranks: dict[str, Tensor] = {}
    kw = {"first_stage": first, "k_test": 4} if mode == "topk" else {}
    metrics, _, _ = cross_encoder_retrieval(TableCrossEncoder(table), *_inputs(), TXT2IMG,
                                            mode=mode, ks=(1, 3), device="cpu",
                                            ranks_out=ranks, **kw)
    assert ranks["i2t"].shape == (N_IMG,) and ranks["t2i"].shape == (N_IMG * CAPS,)
    for direction in ("i2t", "t2i"):
        for k in (1, 3):
            recall = 100.0 * (ranks[direction] <= k).float().mean().item()
            assert metrics[f"{direction}_R@{k}"] == pytest.approx(recall)
    if mode == "full":
        assert metrics == pytest.approx(metrics_from_ranks(ranks["i2t"], ranks["t2i"], (1, 3)))


def test_a_model_name_means_its_default_eval_trained_like_the_reranker(tmp_path):
    # table2 re-ranks COOKIE's candidates; the ablations grid also leaves a default-config
    # COOKIE eval, fine-tuned without pretraining. The name must pick the one trained like the
    # re-ranker (pretrain -> finetune), whichever grid ran first, not refuse as ambiguous.
    from harness.config import compose
    from harness.stage import _first_stage

    def stage(name: str, overrides: list[str], init_from: str | None = None) -> None:
        cfg = compose([*overrides, f"task.init_from={init_from}" if init_from else
                       "task.init_from=null"])
        (tmp_path / name).mkdir()
        OmegaConf.save(cfg, tmp_path / name / "resolved.yaml", resolve=True)

    stage("pretrain-cookie-synthetic-p0", ["task=pretrain", "model=cookie"])
    stage("finetune-cookie-synthetic-f0", ["task=finetune", "model=cookie"],
          "pretrain-cookie-synthetic-p0")
    stage("finetune-cookie-synthetic-f1", ["task=finetune", "model=cookie"])  # no pretraining
    for name, parent in (("eval-cookie-synthetic-aaaa1111", "finetune-cookie-synthetic-f0"),
                         ("eval-cookie-synthetic-bbbb2222", "finetune-cookie-synthetic-f1")):
        run = _eval_run(tmp_path, name, model="cookie")
        cfg = compose(["task=eval", "model=cookie", f"task.init_from={parent}"])
        OmegaConf.save(cfg, run / "resolved.yaml", resolve=True)
    stage("pretrain-single_stream-synthetic-p0", ["task=pretrain", "model=single_stream"])
    stage("finetune-single_stream-synthetic-f0", ["task=finetune", "model=single_stream"],
          "pretrain-single_stream-synthetic-p0")
    reranker = compose(["task=eval", "model=single_stream", "+task.first_stage=cookie",
                        "task.init_from=finetune-single_stream-synthetic-f0"])
    assert _first_stage(reranker, tmp_path).name == "eval-cookie-synthetic-aaaa1111"
    without_pretraining = compose(["task=eval", "model=single_stream", "+task.first_stage=cookie",
                                   "task.init_from=finetune-cookie-synthetic-f1"])
    assert _first_stage(without_pretraining, tmp_path).name == "eval-cookie-synthetic-bbbb2222"
