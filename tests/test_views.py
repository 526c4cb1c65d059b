"""COOKIE's second views come from the data layer: another caption and another augmentation
of the same image, built by the training stage from the model's ``train_inputs``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from harness import stage
from harness.config import compose
from harness.data.images import load_rgb
from harness.data.karpathy import load_captions
from harness.data.synthetic import generate
from harness.data.transforms import build_transform
from harness.train.loop import TrainSummary

pytestmark = pytest.mark.slow  # builds a dataset, a vocabulary and COOKIE: ~15-30 s on 2 cores


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, n_images=40, seed=0)
    return root


def _training_inputs(task: str, data_root: Path, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, Any]:
    """(config, dataset, collate) that the training stage hands to the loop for COOKIE."""
    cfg = compose(["model=cookie", "data=synthetic", f"task={task}", "scale=smoke",
                   f"data.root={data_root}", f"data.vocab_cache={tmp_path / 'vocab'}",
                   "data.num_workers=0"])
    seen: dict[str, Any] = {}

    def spy_train(model, dataset, collate, task_cfg, run_dir, **kwargs):
        seen["dataset"], seen["collate"] = dataset, collate
        return TrainSummary(steps=0, samples_seen=0, wall_s=0.0, final_losses={},
                            world_size=1)

    monkeypatch.setattr(stage, "train", spy_train)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stage.train_task(cfg, run_dir, tmp_path)
    return cfg, seen["dataset"], seen["collate"]


def _nearest(view: torch.Tensor, gallery: torch.Tensor) -> int:
    return int(((gallery - view) ** 2).flatten(1).mean(1).argmin())


def test_finetune_second_views_are_another_caption_and_augmentation_of_the_image(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, dataset, collate = _training_inputs("finetune", data_root, tmp_path, monkeypatch)
    corpus = load_captions(Path(cfg.data.annotation), Path(cfg.data.image_root),
                           str(cfg.data.train_split), name="synthetic")
    assert len(dataset) == corpus.n_texts
    img2txt = corpus.img2txt()
    plain = build_transform(int(cfg.model.image_size), None, train=False,
                            mean=tuple(cfg.model.mean), std=tuple(cfg.model.std))
    gallery = torch.stack([plain(load_rgb(p)) for p in corpus.image_paths])
    torch.manual_seed(0)
    items = [dataset[i] for i in range(0, len(dataset), 7)]
    for index, item in zip(range(0, len(dataset), 7), items):
        image = corpus.txt2img[index]
        assert item["image_id"] == image
        # Another caption of the same image, never the caption itself (5 per image here).
        assert len(img2txt[image]) > 1
        others = {corpus.captions[t] for t in img2txt[image] if t != index}
        assert item["caption2"] in others, (index, item["caption2"])
        # Another augmentation of the same picture: a different tensor, nearest to its image.
        assert not torch.equal(item["image"], item["image2"])
        assert _nearest(item["image2"], gallery) == image
        assert _nearest(item["image"], gallery) == image
    batch = collate(items)
    assert torch.equal(batch["images2"], torch.stack([it["image2"] for it in items]))
    second = collate([{**it, "caption": it["caption2"]} for it in items])
    assert torch.equal(batch["input_ids2"], second["input_ids"])
    assert torch.equal(batch["attention_mask2"], second["attention_mask"])
    assert not torch.equal(batch["input_ids2"], batch["input_ids"])


def test_pretrain_pairs_carry_a_second_augmentation(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, dataset, collate = _training_inputs("pretrain", data_root, tmp_path, monkeypatch)
    torch.manual_seed(0)
    items = [dataset[i] for i in range(4)]
    for item in items:
        assert item["image2"].shape == item["image"].shape
        assert not torch.equal(item["image"], item["image2"])
    batch = collate(items)
    assert batch["images2"].shape == batch["images"].shape
