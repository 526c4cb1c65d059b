"""COOKIE: unimodal encoders, a weight-sharing transformer on top of both, three contrastive losses.

Image path: timm backbone tokens (CNN grid or ViT tokens) -> linear + LayerNorm to the shared
width -> weight-sharing transformer -> pooling -> linear to the joint space -> L2 norm.
Text path: BERT tokens -> the same steps with its own projections and pooler, and the *same*
shared transformer. The shared module never sees both modalities at once, so retrieval stays
embedding based. ``wst.layers=0`` builds no shared module at all (the ablation). See
docs/fidelity.md for which choices come from the paper and which are assumptions.

Training batches may carry ``images2`` (a second augmented view, for the ``vv`` term) and
``input_ids2``/``attention_mask2`` (another caption of the image, for the ``tt`` term); the
config's ``train_inputs`` asks the data layer for them.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cookie.layers import Pooler, WeightSharingTransformer
from cookie.losses import CookieLosses, Views
from cookie.momentum import MomentumQueue
from harness.interfaces import Batch, TextTokens
from harness.models.contrastive import gather_features
from harness.models.towers import ImageTower, TextTower

TT_VIEWS = ("auto", "caption", "dropout", "mask")
# shared_width: linear + LayerNorm into the shared width, then linear to the joint space (the
# model); clip: one bias-free linear from the pooled tower features (a control, wst.layers=0).
PROJECTIONS = ("shared_width", "clip")
IMAGE, TEXT = 0, 1


class CookieEncoder(nn.Module):
    """Both encoding paths; the momentum encoder is a copy of this module."""

    def __init__(self, cfg: Mapping[str, Any], vocab_size: int) -> None:
        super().__init__()
        self.image_tower = ImageTower(cfg["image_tower"])
        self.text_tower = TextTower(cfg["text_tower"], vocab_size)
        wst = dict(cfg["wst"])
        width, dim = int(wst["width"]), int(cfg["embed_dim"])
        projection = str(cfg.get("projection", "shared_width"))
        if projection not in PROJECTIONS:
            raise ValueError(f"model.projection={projection!r}; valid: {', '.join(PROJECTIONS)}")
        if projection == "clip":
            if int(wst["layers"]) > 0:
                raise ValueError("model.projection=clip needs model.wst.layers=0: the shared "
                                 "transformer works at the shared width")
            # The controlled baseline (docs/ablations.md): CLIP's head, one bias-free linear
            # map from the pooled tower features; nothing maps into a shared width.
            self.image_in, self.text_in = nn.Identity(), nn.Identity()
        else:
            # LayerNorm after the projection puts CNN grid features and BERT's (already
            # normalised) outputs on one scale before the shared weights see them.
            self.image_in = nn.Sequential(nn.Linear(self.image_tower.width, width),
                                          nn.LayerNorm(width))
            self.text_in = nn.Sequential(nn.Linear(self.text_tower.width, width),
                                         nn.LayerNorm(width))
        # The ablation removes the module, not just its call: no parameters, no graph nodes.
        self.wst = WeightSharingTransformer(wst) if int(wst["layers"]) > 0 else None
        pooling = dict(cfg["pooling"])
        self.image_pool, self.text_pool = Pooler(pooling["image"]), Pooler(pooling["text"])
        prefix = int(getattr(self.image_tower.backbone, "num_prefix_tokens", 0))
        if pooling["image"] == "cls" and prefix == 0:
            raise ValueError(f"model.pooling.image=cls needs a class token, but "
                             f"{cfg['image_tower']['name']} has none (a CNN grid): use mean or gpo")
        if projection == "clip":
            self.image_out = nn.Linear(self.image_tower.width, dim, bias=False)
            self.text_out = nn.Linear(self.text_tower.width, dim, bias=False)
        else:
            self.image_out = nn.Linear(width, dim)
            self.text_out = nn.Linear(width, dim)

    def _shared(self, tokens: Tensor, mask: Tensor, modality: int) -> Tensor:
        return tokens if self.wst is None else self.wst(tokens, mask, modality)

    def image(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings ``[N, D]``."""
        tokens = self.image_in(self.image_tower.tokens(images))
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        tokens = self._shared(tokens, mask, IMAGE)
        return F.normalize(self.image_out(self.image_pool(tokens, mask)), dim=-1)

    def text(self, tokens: TextTokens) -> Tensor:
        """L2-normalised text embeddings ``[M, D]``."""
        mask = tokens["attention_mask"].bool()
        feats = self._shared(self.text_in(self.text_tower.tokens(tokens)), mask, TEXT)
        return F.normalize(self.text_out(self.text_pool(feats, mask)), dim=-1)


def _pad_cat(a: TextTokens, b: TextTokens) -> dict[str, Tensor]:
    """Two token batches stacked into one, right-padded to the longer length."""
    length = max(a["input_ids"].shape[1], b["input_ids"].shape[1])

    def pad(x: Tensor) -> Tensor:
        return F.pad(x, (0, length - x.shape[1]))  # pad id and mask 0: ignored by attention

    return {key: torch.cat([pad(a[key]), pad(b[key])])
            for key in ("input_ids", "attention_mask")}


def mask_tokens(tokens: TextTokens, prob: float, mask_token_id: int | None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A token-masked copy: real tokens other than the first and last are hit with ``prob``.

    A hit token becomes ``mask_token_id`` or, when that is None (the model does not know the
    tokenizer), is hidden from attention and pooling — i.e. deleted.
    """
    ids, attn = tokens["input_ids"].clone(), tokens["attention_mask"].clone()
    lengths = attn.sum(1, keepdim=True)
    pos = torch.arange(ids.shape[1], device=ids.device)[None, :]
    # Keep [CLS] (first) and [SEP] (last real token) so the sequence stays well-formed.
    eligible = (pos > 0) & (pos < lengths - 1)
    hit = (torch.rand(ids.shape, device=ids.device, generator=generator) < prob) & eligible
    if mask_token_id is None:
        attn = attn.masked_fill(hit, 0)
    else:
        ids = ids.masked_fill(hit, int(mask_token_id))
    return {"input_ids": ids, "attention_mask": attn}


class CookieModel(nn.Module):
    """The registered ``cookie`` DualEncoder."""

    def __init__(self, cfg: Mapping[str, Any], vocab_size: int) -> None:
        super().__init__()
        self.encoder = CookieEncoder(cfg, vocab_size)
        self.criterion = CookieLosses(cfg["losses"])
        tt = self.criterion.cfg["tt"]
        self.tt_view = str(tt.get("view", "auto"))
        self.tt_fallback = str(tt.get("fallback", "dropout"))
        if self.tt_view not in TT_VIEWS or self.tt_fallback not in ("dropout", "mask"):
            raise ValueError(f"model.losses.tt: view={self.tt_view!r} (valid {TT_VIEWS}), "
                             f"fallback={self.tt_fallback!r} (valid dropout, mask)")
        self.mask_prob = float(tt.get("mask_prob", 0.15))
        self.mask_token_id = tt.get("mask_token_id")
        mom = dict(cfg.get("momentum") or {})
        self.momentum = (MomentumQueue(self.encoder, int(cfg["embed_dim"]),
                                       int(mom.get("queue_size", 4096)), float(mom.get("m", 0.995)))
                         if mom.get("enabled", False) else None)

    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings ``[N, D]``."""
        return self.encoder.image(images)

    def encode_text(self, tokens: TextTokens) -> Tensor:
        """L2-normalised text embeddings ``[M, D]``."""
        return self.encoder.text(tokens)

    def clamp_logit_scale(self) -> None:
        """Keep the learnable temperatures in range; the loop calls this after each step."""
        self.criterion.clamp_()

    def text_view_kind(self, batch: Batch) -> str:
        """Where the second text view comes from for this batch: caption, dropout or mask."""
        if self.tt_view == "auto":
            return "caption" if "input_ids2" in batch else self.tt_fallback
        if self.tt_view == "caption" and "input_ids2" not in batch:
            raise ValueError("model.losses.tt.view=caption needs input_ids2 in the batch; set "
                             "model.train_inputs.second_caption=true (caption datasets only)")
        return self.tt_view

    def _inputs(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor], int, int]:
        """Stacked images and texts for one pass each, and how many rows are view 1."""
        active = self.criterion.active
        images, tokens = batch["images"], {k: batch[k] for k in ("input_ids", "attention_mask")}
        n_img, n_txt = images.shape[0], tokens["input_ids"].shape[0]
        if "vv" in active:
            if "images2" not in batch:
                raise ValueError("loss term vv is on but the batch has no images2; set "
                                 "model.train_inputs.image_views=2")
            images = torch.cat([images, batch["images2"]])
        if "tt" in active:
            kind = self.text_view_kind(batch)
            if kind == "caption":
                second = {"input_ids": batch["input_ids2"],
                          "attention_mask": batch["attention_mask2"]}
            elif kind == "mask":
                second = mask_tokens(tokens, self.mask_prob, self.mask_token_id)
            else:  # dropout: the same tokens; one pass over both copies draws two masks
                second = tokens
            tokens = _pad_cat(tokens, second)
        return images, tokens, n_img, n_txt

    @staticmethod
    def _views(encoder: CookieEncoder, images: Tensor, tokens: TextTokens, n_img: int,
               n_txt: int) -> Views:
        img, txt = encoder.image(images), encoder.text(tokens)
        return Views(img=img[:n_img], txt=txt[:n_txt],
                     img2=img[n_img:] if img.shape[0] > n_img else None,
                     txt2=txt[n_txt:] if txt.shape[0] > n_txt else None)

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """Weighted ``itc`` / ``vv`` / ``tt`` terms (active ones) from one pass per modality."""
        images, tokens, n_img, n_txt = self._inputs(batch)
        ids = batch["image_ids"]
        q = self._views(self.encoder, images, tokens, n_img, n_txt)
        if self.momentum is None:
            # Local rows are the queries; every rank's rows (gathered once, with gradients,
            # and shared by all three terms) are the keys.
            keys, ids_k = _gathered(q, ids)
            return self.criterion(q, keys, ids, ids_k)
        with torch.no_grad():
            self.momentum.update(self.encoder)
            k, ids_all = _gathered(self._views(self.momentum.encoder, images, tokens, n_img,
                                               n_txt), ids)
        keys, ids_k = self.momentum.with_queue(k, ids_all)
        out = self.criterion(q, keys, ids, ids_k)
        self.momentum.enqueue(k.img, k.txt, ids_all)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        """Also loads checkpoints trained with the momentum encoder switched the other way."""
        state = dict(state_dict)
        has_momentum = any(key.startswith("momentum.") for key in state)
        if self.momentum is None and has_momentum:
            state = {k: v for k, v in state.items() if not k.startswith("momentum.")}
        elif self.momentum is not None and not has_momentum:
            # Start the momentum encoder from the loaded online weights, with empty queues.
            for key, value in list(state.items()):
                if key.startswith("encoder."):
                    state[f"momentum.{key}"] = value
            for key, value in self.momentum.state_dict().items():
                if not key.startswith("encoder."):
                    state[f"momentum.{key}"] = torch.zeros_like(value) if key != "queue_ids" \
                        else torch.full_like(value, -1)
        return super().load_state_dict(state, strict=strict, assign=assign)


def _gathered(views: Views, ids: Tensor) -> tuple[Views, Tensor]:
    """All ranks' views and ids (identity on one process); absent second views stay absent."""
    present = [t for t in (views.img, views.txt, views.img2, views.txt2) if t is not None]
    *gathered, all_ids = gather_features(*present, ids)
    it = iter(gathered)
    return Views(*(next(it) if t is not None else None
                   for t in (views.img, views.txt, views.img2, views.txt2))), all_ids


def build_cookie(cfg: Mapping[str, Any], *, vocab_size: int,
                 special_ids: Mapping[str, int] | None = None) -> CookieModel:
    """Registry factory for ``model=cookie`` (``special_ids`` is accepted and unused)."""
    return CookieModel(cfg, vocab_size)
