"""Pretrained towers from local folders: BERT (tokenizer, sizes, weights) and timm state dicts.

A tiny BERT is saved by ``save_pretrained`` into a temporary folder laid out like a
downloaded ``bert-base-uncased`` (config.json, model.safetensors with the pretraining heads,
vocab.txt, tokenizer.json, tokenizer_config.json); nothing touches a network hub.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from harness.data.report import DataError
from harness.data.text import Tokenizer, resolve_tokenizer
from harness.models.towers import (
    ImageTower,
    TextTower,
    WeightsMismatchError,
    text_weights_dir,
)

# Special tokens deliberately NOT at the harness's own ids (0..4), as in bert-base-uncased
# where [UNK]=100 and [CLS]=101: ids that came from a default instead of the tokenizer show.
WORDS = ["[PAD]", "a", "dog", "runs", "the", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "red",
         "on", "grass", "##s", "blue", "ball", "man", "with", "sits", "two"]
SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 64, "max_position_embeddings": 64}
NO_SIZES = dict.fromkeys(SIZES)


def _tokenizer_files(folder: Path, words: list[str]) -> None:
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    # from_pretrained on the vocab folder, then save: what a hub download holds.
    BertTokenizer.from_pretrained(str(folder), do_lower_case=True).save_pretrained(str(folder))


def _save_bert(folder: Path, seed: int = 0, words: list[str] = WORDS) -> torch.nn.Module:
    """A BertForPreTraining checkpoint (keys ``bert.*`` and ``cls.*``) plus its tokenizer."""
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(seed)
    model = BertForPreTraining(BertConfig(vocab_size=len(words), **SIZES)).eval()
    with torch.no_grad():  # trained LayerNorms are not the identity; a copy error must show
        for name, param in model.named_parameters():
            if "LayerNorm" in name:
                param.add_(0.3 * torch.randn_like(param))
    model.save_pretrained(str(folder))
    _tokenizer_files(folder, words)
    return model.bert


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("bert") / "bert-tiny-uncased"
    return folder, _save_bert(folder)


def _tokens(ids: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    return {"input_ids": input_ids, "attention_mask": mask}


def _resolve(tmp_path: Path, pretrained: Path | None, vocab_dir: Path | None = None,
             inherited: Path | None = None) -> Tokenizer:
    return resolve_tokenizer(pretrained_dir=pretrained, vocab_dir=str(vocab_dir or "") or None,
                             inherited=inherited, captions=["a dog runs"],
                             cache_root=tmp_path / "vocab", max_len=16)


# --------------------------------------------------------------------------------- tokenizer


def test_tokenizer_comes_from_the_text_towers_folder(bert, tmp_path):
    folder, _ = bert
    cfg = {"text_tower": {"pretrained_path": str(folder), **SIZES}}
    tok = _resolve(tmp_path, text_weights_dir(cfg))
    assert tok.folder == folder and tok.vocab_size == len(WORDS)
    out = tok(["A dog runs", "two red balls"])
    ids = {w: i for i, w in enumerate(WORDS)}
    assert out["input_ids"][0].tolist() == [ids["[CLS]"], ids["a"], ids["dog"], ids["runs"],
                                            ids["[SEP]"], ids["[PAD]"]]
    assert out["input_ids"][1].tolist() == [ids["[CLS]"], ids["two"], ids["red"], ids["ball"],
                                            ids["##s"], ids["[SEP]"]]
    assert tok.special_ids == {"pad": 0, "cls": 6, "sep": 7, "mask": 8, "unk": 5}
    # What the stage saves for later stages reads back as the very same tokenizer.
    tok.save(tmp_path / "run" / "tokenizer")
    again = Tokenizer(tmp_path / "run" / "tokenizer", 16)
    assert again.vocab() == tok.vocab() and again.special_ids == tok.special_ids
    assert again(["two red balls"])["input_ids"].tolist() == out["input_ids"][1:].tolist()


def test_a_tokenizer_that_maps_words_to_unk_is_refused(tmp_path):
    from transformers import BertTokenizer

    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    # transformers 5: the vocab_file constructor keeps only the special tokens; saving it
    # writes a tokenizer.json that would turn every caption into [UNK].
    BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    with pytest.raises(DataError, match=r"broken: the tokenizer holds \d+ tokens but vocab.txt"):
        Tokenizer(folder, 16)
    (folder / "vocab.txt").unlink()
    with pytest.raises(DataError, match="broken: the tokenizer has no word besides"):
        Tokenizer(folder, 16)


def test_vocab_dir_that_disagrees_with_the_weights_folder_is_an_error(bert, tmp_path):
    folder, _ = bert
    other = tmp_path / "other-vocab"
    _tokenizer_files(other, WORDS[:-1] + ["three"])
    with pytest.raises(DataError, match="hold different vocabularies"):
        _resolve(tmp_path, folder, vocab_dir=other)
    same = tmp_path / "same-vocab"
    _tokenizer_files(same, WORDS)
    assert _resolve(tmp_path, folder, vocab_dir=same).folder == folder
    # A parent stage trained with another vocabulary: its embeddings would be misread.
    with pytest.raises(DataError, match="parent stage was trained with another vocabulary"):
        _resolve(tmp_path, folder, inherited=other)
    # data.vocab_dir alone keeps its job: a vocabulary without weights.
    assert _resolve(tmp_path, None, vocab_dir=other).vocab()["three"] == len(WORDS) - 1


def test_folder_without_a_tokenizer_is_named(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(DataError, match=r"not-a-model: no tokenizer there "
                                         r"\(model.text_tower.pretrained_path\)"):
        _resolve(tmp_path, empty)
    with pytest.raises(DataError, match=r"no-such-bert: not found \(data.vocab_dir\)"):
        _resolve(tmp_path, None, vocab_dir=tmp_path / "no-such-bert")


# -------------------------------------------------------------------------------- text tower


def test_text_tower_equals_transformers_bert(bert):
    folder, reference = bert
    tower = TextTower({"pretrained_path": str(folder), **NO_SIZES}, vocab_size=len(WORDS)).eval()
    assert tower.width == 32 and tower.bert.config.num_hidden_layers == 2
    tokens = _tokens([[6, 1, 2, 3, 7], [6, 9, 13, 7], [6, 16, 18, 11, 4, 12, 7]])
    with torch.no_grad():
        want = reference(input_ids=tokens["input_ids"],
                         attention_mask=tokens["attention_mask"]).last_hidden_state
        got = tower.tokens(tokens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Sizes equal to the folder's are accepted as well as null.
    TextTower({"pretrained_path": str(folder), **SIZES}, vocab_size=len(WORDS))


def test_size_override_that_disagrees_names_both(bert):
    folder, _ = bert
    cfg = {"pretrained_path": str(folder), **SIZES, "hidden_size": 768}
    with pytest.raises(WeightsMismatchError,
                       match=r"model.text_tower.hidden_size=768 but .*config.json has "
                             r"hidden_size=32"):
        TextTower(cfg, vocab_size=len(WORDS))


def test_tokenizer_of_another_size_than_the_embedding_table(bert):
    folder, _ = bert
    with pytest.raises(WeightsMismatchError, match=r"config.json: the embedding table has "
                                                   r"vocab_size=20 but the tokenizer has 21"):
        TextTower({"pretrained_path": str(folder), **NO_SIZES}, vocab_size=len(WORDS) + 1)


@pytest.mark.parametrize("case, needle", [
    ("no_config", "not a Hugging Face model folder .*no config.json"),
    ("not_bert", "model_type 'roberta', not 'bert'"),
    ("no_weights", "no weight file"),
    ("a_file", "not a folder"),
])
def test_not_a_bert_folder_is_named(bert, tmp_path, case, needle):
    folder, _ = bert
    bad = tmp_path / "bad-bert"
    shutil.copytree(folder, bad)
    if case == "no_config":
        (bad / "config.json").unlink()
    elif case == "not_bert":
        config = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    elif case == "no_weights":
        (bad / "model.safetensors").unlink()
    else:
        bad = bad / "vocab.txt"
    with pytest.raises(WeightsMismatchError, match=needle) as err:
        TextTower({"pretrained_path": str(bad), **NO_SIZES}, vocab_size=len(WORDS))
    assert str(bad) in str(err.value)


def test_missing_bert_weights_are_listed_not_left_random(bert, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = bert
    partial = tmp_path / "partial-bert"
    shutil.copytree(folder, partial)
    state = load_file(str(partial / "model.safetensors"))
    del state["bert.encoder.layer.1.output.dense.weight"]
    save_file(state, str(partial / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsMismatchError,
                       match=r"partial-bert: .*missing \(1\): encoder.layer.1.output.dense.weight"):
        TextTower({"pretrained_path": str(partial), **NO_SIZES}, vocab_size=len(WORDS))


# ----------------------------------------------------------------------------- single stream


def _single_stream_cfg(folder: Path | None) -> dict:
    return {"image_size": 32, "text_max_len": 16, "itc": {"embed_dim": 16},
            "joint": {"name": "vit_tiny_patch16_224",
                      "kwargs": {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1,
                                 "num_heads": 2}},
            "text_tower": {"pretrained_path": str(folder) if folder else None}}


def test_single_stream_from_bert_folder_via_the_stage(bert, tmp_path):
    from omegaconf import OmegaConf

    from harness.stage import _build_model

    folder, reference = bert
    cfg = OmegaConf.create({"model": {"name": "single_stream", **_single_stream_cfg(folder)}})
    tok = _resolve(tmp_path, text_weights_dir(cfg.model))
    model = _build_model(cfg, tok).eval()
    # Special-token ids are the tokenizer's, not the harness defaults.
    assert model.special_ids == tok.special_ids and model.special_ids["mask"] == 8
    # The joint model's text embeddings are BERT's embedding output (token type 0).
    ids = tok(["a dog runs", "two red balls on grass"])["input_ids"]
    with torch.no_grad():
        want = reference.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
        got = model.text_embed(ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The MLM decoder is tied to those word embeddings.
    assert model.mlm_head.word.weight is model.text_embed.word.weight


def test_single_stream_wider_than_bert_is_an_error(bert):
    from baselines.single_stream import build_single_stream

    folder, _ = bert
    cfg = _single_stream_cfg(folder)
    cfg["joint"]["kwargs"].update(embed_dim=48, num_heads=3)
    with pytest.raises(WeightsMismatchError, match="hidden_size=32 but the joint transformer "
                                                   "is 48 wide"):
        build_single_stream(cfg, vocab_size=len(WORDS))


def test_hand_set_special_ids_are_refused():
    from baselines.single_stream import build_single_stream

    cfg = {**_single_stream_cfg(None), "special_ids": {"pad": 0, "unk": 100, "cls": 101,
                                                       "sep": 102, "mask": 103}}
    with pytest.raises(ValueError, match="model.special_ids is no longer read"):
        build_single_stream(cfg, vocab_size=200)


# -------------------------------------------------------------------------------- image side


def _save_timm(path: Path, name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs).eval()  # with its classifier, as published
    torch.save(model.state_dict(), path)
    return model


def test_image_tower_loads_a_timm_state_dict_exactly(tmp_path):
    source = _save_timm(tmp_path / "resnet.pth", "test_resnet", num_classes=10)
    tower = ImageTower({"name": "test_resnet", "pretrained_path": str(tmp_path / "resnet.pth")})
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(tower.eval().tokens(images),
                                   source.forward_features(images).flatten(2).transpose(1, 2))


@pytest.mark.parametrize("case, needle", [
    ("missing", r"missing \(1\): layer1.0.conv1.weight"),
    ("unexpected", r"unexpected \(1\): layer9.weight"),
    ("shape", r"shape mismatch \(1\): conv1.0.weight \(3, 3, 3, 3\) in the file vs "),
    ("other_architecture", r"missing \(\d+\): .*unexpected \(\d+\): .*blocks.0"),
    ("not_a_state_dict", "not a state dict of tensors"),
])
def test_image_weights_that_do_not_fit_are_listed(tmp_path, case, needle):
    path = tmp_path / "weights.pth"
    _save_timm(path, "test_resnet")
    state = torch.load(path, weights_only=True)
    if case == "missing":
        del state["layer1.0.conv1.weight"]
    elif case == "unexpected":
        state["layer9.weight"] = torch.zeros(1)
    elif case == "shape":
        state["conv1.0.weight"] = torch.zeros(3, 3, 3, 3)
    elif case == "other_architecture":
        _save_timm(path, "vit_tiny_patch16_224", img_size=32, depth=1)
        state = torch.load(path, weights_only=True)
    else:
        state = {"epoch": 3}
    torch.save(state, path)
    with pytest.raises(WeightsMismatchError, match=needle) as err:
        ImageTower({"name": "test_resnet", "pretrained_path": str(path)})
    assert str(path) in str(err.value) and "model.image_tower.pretrained_path" in str(err.value)


def test_joint_vit_from_another_resolution_via_timms_filter(tmp_path):
    from baselines.single_stream import build_single_stream

    # Trained at 64 px (4x4 patches), used at 32 px (2x2): positions are resampled by timm's
    # checkpoint filter; every other tensor loads as it is, none is left at random.
    source = _save_timm(tmp_path / "vit.pth", "vit_tiny_patch16_224", img_size=64,
                        patch_size=16, embed_dim=32, depth=1, num_heads=2)
    cfg = _single_stream_cfg(None)
    cfg["joint"]["pretrained_path"] = str(tmp_path / "vit.pth")
    model = build_single_stream(cfg, vocab_size=len(WORDS))
    assert model.image_embed.pos_embed.shape == (1, 5, 32)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(model.image_embed.proj.proj.weight,
                               source.patch_embed.proj.weight)
    del_state = torch.load(tmp_path / "vit.pth", weights_only=True)
    del del_state["blocks.0.norm1.weight"]
    torch.save(del_state, tmp_path / "vit.pth")
    with pytest.raises(WeightsMismatchError, match=r"model.joint.pretrained_path.*missing "
                                                   r"\(1\): blocks.0.norm1.weight"):
        build_single_stream(cfg, vocab_size=len(WORDS))


# ------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_smoke_grid_with_a_local_bert_folder(bert, tmp_path, capsys):
    from harness.run import main

    folder, _ = bert
    sizes = [f"model.text_tower.{key}=null" for key in SIZES]
    args = ["grid=smoke", f"run_root={tmp_path / 'runs'}", f"results_dir={tmp_path / 'res'}",
            f"data.root={tmp_path / 'data'}", "data.generate.n_images=60",
            "scale.train.steps=3", "data.num_workers=0",
            f"model.text_tower.pretrained_path={folder}", *sizes]
    assert main(args) == 0, capsys.readouterr().out
    train_dir = next((tmp_path / "runs").glob("finetune-*"))
    saved = Tokenizer(train_dir / "tokenizer", 16)  # what the eval stage read
    assert saved.vocab() == {w: i for i, w in enumerate(WORDS)}
    result = json.loads(next((tmp_path / "runs").glob("eval-*/result.json")).read_text())
    assert result["protocol"]["n_texts"] == 30
    # A size that disagrees with the folder stops the stage before any training step.
    assert main([*args[:-len(sizes)], f"run_root={tmp_path / 'runs2'}"]) == 1
    out = capsys.readouterr().out
    assert "model.text_tower.hidden_size=128 but" in out
    assert not list((tmp_path / "runs2").glob("finetune-*/checkpoints/latest.pt"))


def test_uniter_style_joint_is_berts_own_encoder(bert):
    from baselines.single_stream import build_single_stream

    folder, reference = bert
    cfg = _single_stream_cfg(folder)
    cfg["joint"]["kind"] = "bert"
    cfg["image_backbone"] = {"name": "test_resnet", "kwargs": {"output_stride": 16}}
    model = build_single_stream(cfg, vocab_size=len(WORDS)).eval()
    tokens = _tokens([[6, 1, 2, 3, 7], [6, 16, 18, 11, 4, 12, 7]])
    with torch.no_grad():
        want = reference(**tokens).last_hidden_state
        text = model.text_features(tokens)
        got = model.encode_tokens(text.tokens, text.mask)
        # Padding rows of a text differ (BERT attends from them too); compare real tokens.
        real = tokens["attention_mask"].bool()
        torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)
        scores = model.score_pairs(model.image_features(torch.randn(2, 3, 32, 32)), text)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert model.width == 32 and len(model.blocks) == 2
    # FLOP counting builds it shape-only: sizes from the folder's config.json, no weights read.
    from harness.eval.flops import flops_summary
    from harness.models.towers import without_weights

    shapes = without_weights(cfg)
    assert shapes["text_tower"] == {"pretrained_path": None, **SIZES}
    assert flops_summary(lambda: build_single_stream(shapes, vocab_size=len(WORDS)),
                         image_size=32, text_len=8)
    cfg.pop("image_backbone")
    with pytest.raises(ValueError, match="joint.kind=bert needs model.image_backbone"):
        build_single_stream(cfg, vocab_size=len(WORDS))
