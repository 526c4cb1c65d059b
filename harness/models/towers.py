"""Unimodal towers every model builds from config: a timm image tower and a BERT text tower.

Pretrained weights come from local files only (``pretrained_path``), so nothing touches a
network hub unless a user sets ``hub: true`` on a machine that has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from harness.interfaces import TextTokens


class WeightsNotFoundError(FileNotFoundError):
    """A configured pretrained weight file or folder does not exist."""


def _existing(path: str | None, what: str) -> Path | None:
    if not path:
        return None
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise WeightsNotFoundError(f"{what}: pretrained weights not found at {resolved}")
    return resolved


class ImageTower(nn.Module):
    """timm backbone returning either pooled features ``[N, C]`` or tokens ``[N, T, C]``."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        import timm

        weights = _existing(cfg.get("pretrained_path"), "model.image_tower.pretrained_path")
        self.backbone = timm.create_model(
            cfg["name"], pretrained=bool(cfg.get("hub", False)), num_classes=0,
            **dict(cfg.get("kwargs") or {}),
        )
        if weights is not None:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            missing, unexpected = self.backbone.load_state_dict(state, strict=False)
            if unexpected or [k for k in missing if not k.startswith(("fc.", "head", "classifier"))]:
                raise ValueError(f"{weights}: weights do not match {cfg['name']} "
                                 f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        self.width: int = int(self.backbone.num_features)
        self.data_config = timm.data.resolve_data_config({}, model=self.backbone)

    def forward(self, images: Tensor) -> Tensor:
        """Pooled image features ``[N, C]``."""
        return self.backbone(images)

    def tokens(self, images: Tensor) -> Tensor:
        """Token features ``[N, T, C]``: ViT tokens as they are, CNN grids flattened."""
        features = self.backbone.forward_features(images)
        if features.ndim == 4:  # CNN: [N, C, H, W] grid -> H*W tokens
            features = features.flatten(2).transpose(1, 2)
        return features


class TextTower(nn.Module):
    """BERT encoder, from a local pretrained folder or built from config sizes."""

    def __init__(self, cfg: Mapping[str, Any], vocab_size: int) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        weights = _existing(cfg.get("pretrained_path"), "model.text_tower.pretrained_path")
        if weights is not None:
            self.bert = BertModel.from_pretrained(str(weights), add_pooling_layer=False)
            if self.bert.config.vocab_size != vocab_size:
                raise ValueError(f"{weights}: vocab size {self.bert.config.vocab_size} differs "
                                 f"from the tokenizer's {vocab_size}; set data.vocab_dir={weights}")
        else:
            sizes = {k: v for k, v in cfg.items() if k not in ("pretrained_path", "pooling")}
            self.bert = BertModel(BertConfig(vocab_size=vocab_size, **sizes),
                                  add_pooling_layer=False)
        self.width: int = int(self.bert.config.hidden_size)

    def tokens(self, tokens: TextTokens) -> Tensor:
        """Token features ``[M, L, C]``."""
        return self.bert(input_ids=tokens["input_ids"],
                         attention_mask=tokens["attention_mask"]).last_hidden_state

    def forward(self, tokens: TextTokens) -> Tensor:
        """The [CLS] feature ``[M, C]``."""
        return self.tokens(tokens)[:, 0]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory in the BERT layers."""
        if enable:
            self.bert.gradient_checkpointing_enable()
        else:
            self.bert.gradient_checkpointing_disable()
