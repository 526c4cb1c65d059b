"""The controlled baseline of ``grid=controls``: COOKIE with the paper's components off and
CLIP's pooling, projection head and temperature is the CLIP baseline in COOKIE's code.

So the last row of the controls table differs from the CLIP row only in what training draws
at random (the data stream, the order weights are initialised in), and the rows between
measure COOKIE's own choices one at a time (docs/ablations.md).
"""

from __future__ import annotations

import pytest
import torch

from harness.config import compose
from harness.model_check import build_model, random_tokens, random_train_batch

PAPER_OFF = ["model.wst.layers=0", "model.losses.vv.enabled=false",
             "model.losses.tt.enabled=false"]
CLIP_CHOICES = ["model.pooling.image=mean", "model.pooling.text=cls",
                "+model.projection=clip", "model.losses.itc.temperature=0.07"]
# baselines/clip.py parameter -> the same parameter of COOKIE's encoder and losses.
CLIP_TO_COOKIE = {"image_tower.": "encoder.image_tower.", "text_tower.": "encoder.text_tower.",
                  "image_proj.": "encoder.image_out.", "text_proj.": "encoder.text_out.",
                  "logit_scale": "criterion.logit_scale.itc"}


def _models(cookie_overrides: list[str]) -> tuple[torch.nn.Module, torch.nn.Module]:
    common = ["scale=smoke", "data=synthetic", "task=finetune"]
    clip_cfg = compose(["model=clip", *common])
    cookie_cfg = compose(["model=cookie", *common, *cookie_overrides])
    vocab = int(clip_cfg.data.vocab_size)
    torch.manual_seed(0)
    clip = build_model(clip_cfg, vocab_size=vocab)
    torch.manual_seed(1)
    cookie = build_model(cookie_cfg, vocab_size=vocab)
    return clip, cookie


def _copy_clip_weights(clip: torch.nn.Module, cookie: torch.nn.Module) -> None:
    target = cookie.state_dict()
    for key, value in clip.state_dict().items():
        prefix = next(p for p in CLIP_TO_COOKIE if key.startswith(p))
        mapped = CLIP_TO_COOKIE[prefix] + key[len(prefix):]
        assert target[mapped].shape == value.shape, mapped
        target[mapped] = value
    cookie.load_state_dict(target)


def test_clip_choices_in_cookies_code_are_the_clip_baseline() -> None:
    clip, cookie = _models([*PAPER_OFF, *CLIP_CHOICES])
    # Every CLIP parameter has a place in COOKIE's model and nothing else is trained there
    # but the disabled terms' temperatures.
    trained = {k for k, _ in cookie.named_parameters()
               if not k.startswith(("criterion.logit_scale.vv", "criterion.logit_scale.tt"))}
    assert len(trained) == len(list(clip.named_parameters()))
    _copy_clip_weights(clip, cookie)
    clip.eval(), cookie.eval()
    g = torch.Generator().manual_seed(2)
    images = torch.randn(6, 3, 64, 64, generator=g)
    tokens = random_tokens(6, 12, 200, g)
    with torch.no_grad():
        torch.testing.assert_close(cookie.encode_image(images), clip.encode_image(images))
        torch.testing.assert_close(cookie.encode_text(tokens), clip.encode_text(tokens))
        batch = random_train_batch(compose(["model=cookie", "scale=smoke", "data=synthetic",
                                            "task=finetune"]), 8, vocab_size=200)
        batch["image_ids"] = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5])  # captions sharing an image
        torch.testing.assert_close(cookie.losses(batch)["itc"], clip.losses(batch)["itc"])


@pytest.mark.parametrize("missing", CLIP_CHOICES)
def test_each_clip_choice_is_needed(missing: str) -> None:
    """Leave one choice at COOKIE's: the model is no longer CLIP (the test above can fail)."""
    clip, cookie = _models([*PAPER_OFF, *(c for c in CLIP_CHOICES if c != missing)])
    # The temperature is a starting value: compare it before the weights are copied over.
    same_start = torch.allclose(cookie.criterion.scale("itc"), clip.logit_scale.exp())
    g = torch.Generator().manual_seed(2)
    images, tokens = torch.randn(6, 3, 64, 64, generator=g), random_tokens(6, 12, 200, g)
    if missing == "+model.projection=clip":  # COOKIE's head: CLIP's weights do not fit it
        with pytest.raises(AssertionError, match="encoder.image_out.weight"):
            _copy_clip_weights(clip, cookie)
        return
    _copy_clip_weights(clip, cookie)
    clip.eval(), cookie.eval()
    with torch.no_grad():
        same_embeddings = (torch.allclose(cookie.encode_image(images), clip.encode_image(images))
                           and torch.allclose(cookie.encode_text(tokens),
                                              clip.encode_text(tokens)))
    assert not (same_embeddings and same_start)

def test_clip_projection_needs_the_shared_transformer_off() -> None:
    cfg = compose(["model=cookie", "scale=smoke", "data=synthetic", "task=finetune",
                   "+model.projection=clip"])
    with pytest.raises(ValueError, match=r"model.projection=clip needs model.wst.layers=0"):
        build_model(cfg, vocab_size=200)


def test_unknown_projection_is_named() -> None:
    cfg = compose(["model=cookie", "scale=smoke", "data=synthetic", "task=finetune",
                   "+model.projection=mlp"])
    with pytest.raises(ValueError, match=r"model.projection='mlp'; valid: shared_width, clip"):
        build_model(cfg, vocab_size=200)
