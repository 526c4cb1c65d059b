"""Single-stream cross-encoder (ViLT / UNITER style): words and image patches in ONE transformer.

Image tokens come from a ViT patch projection (ViLT's "linear embedding", the default) or from
a timm backbone's grid (``image_backbone``, Pixel-BERT-like); text tokens are word + position
embeddings. Both get a modality-type embedding and are concatenated, text first, into the
joint transformer, whose blocks are a timm ViT's: ``joint.pretrained_path`` pointing at a ViT
state dict (e.g. ViT-B/32 at 384) reproduces ViLT's initialisation. An ITM head on the pooled
first token scores a pair; an MLM head predicts masked words from the joint sequence.
``text_tower.pretrained_path`` pointing at a BERT folder gives the tokenizer and initialises
the word and position embeddings from BERT's. ``joint.kind=bert`` makes the joint transformer
that BERT's own (post-LN) layers, as UNITER and VisualBERT start from BERT; with the default
ViT blocks (pre-LN) BERT's layers are not loaded, because they would compute another function
there (docs/training.md).

Two settings, deliberately separate classes so that ``isinstance(model, DualEncoder)`` tells
the truth:

* :class:`SingleStream` (``contrastive_head: false``, the pure setting): ITM negatives are
  drawn uniformly (other images' captions), retrieval needs full scoring or an external first
  stage.
* :class:`SingleStreamITC` (``contrastive_head: true``): adds an ALBEF-style contrastive head
  (pooled unimodal features -> projections -> ITC loss) whose similarities drive hard-negative
  sampling (``itc.hard_negatives``; off, ITM keeps uniform negatives), and ``encode_image`` /
  ``encode_text`` so the model is its own first stage.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import is_fake

from baselines.single_stream_objectives import IGNORE_INDEX, mask_tokens, sample_negatives
from harness.interfaces import Batch, TextTokens, TokenFeatures
from harness.models.contrastive import symmetric_info_nce
from harness.models.towers import (
    ImageTower,
    TextTower,
    WeightsMismatchError,
    _existing,
    load_timm_weights,
)

# Special-token ids come from the tokenizer (``Tokenizer.special_ids``, passed to the factory
# by the stage). Callers without one (FLOP counting, benchmarks on random ids) get the layout
# of the harness's own WordPiece vocabulary (harness.data.text.SPECIAL_TOKENS order).
DEFAULT_SPECIAL_IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
SPECIAL_KEYS = tuple(DEFAULT_SPECIAL_IDS)
MAX_LOGIT_SCALE = math.log(100.0)  # same clamp as CLIP's learnable temperature
TEXT, IMAGE = 0, 1  # modality-type embedding rows
# vit: timm ViT blocks (ViLT); bert: the layers of the text_tower BERT (UNITER / VisualBERT).
JOINT_KINDS = ("vit", "bert")
# What the ITM head reads from the joint sequence ``[text; image]``: cls, the first (text
# [CLS]) token (ViLT, UNITER); image_cls, the image's class token; mean, a masked mean.
# product: ViLBERT's alignment head (Lu et al. 2019, sec. 3.2): each modality's pooled vector
# through its own pooler (linear + activation), then their element-wise product, a low-rank
# bilinear match term from the first step (the MLB form of Kim et al. 2017).
ITM_POOLS = ("cls", "image_cls", "mean", "product")


def _load_vit(cfg: Mapping[str, Any]) -> nn.Module:
    """A timm ViT for the joint transformer, with local weights when configured (strict; timm's
    filter resamples position embeddings of a ViT trained at another resolution)."""
    import timm

    vit = timm.create_model(cfg["name"], pretrained=bool(cfg.get("hub", False)), num_classes=0,
                            **dict(cfg.get("kwargs") or {}))
    weights = _existing(cfg.get("pretrained_path"), "model.joint.pretrained_path")
    if weights is not None:
        load_timm_weights(vit, weights, "model.joint.pretrained_path")
    if vit.cls_token is None or getattr(vit, "no_embed_class", False) or vit.num_reg_tokens:
        raise ValueError(f"model.joint.name={cfg['name']}: need a ViT with a class token, "
                         "position embeddings covering it, and no register tokens")
    return vit


def _used_text_length(mask: Tensor) -> int:
    """Columns up to the last one any row uses; all of them for shape-only tensors (FLOP
    counting on meta/fake tensors cannot read values, and counts the untrimmed cost)."""
    if mask.is_meta or is_fake(mask):
        return int(mask.shape[1])
    used = mask.any(dim=0).nonzero()
    return int(used.max()) + 1 if used.numel() else 1


class PatchEmbedding(nn.Module):
    """ViLT's image side: the ViT's own patch projection, class token and positions."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.proj, self.norm_pre = vit.patch_embed, vit.norm_pre
        self.cls_token, self.pos_embed = vit.cls_token, vit.pos_embed

    def forward(self, images: Tensor) -> Tensor:
        """Tokens ``[N, 1 + patches, D]``."""
        x = self.proj(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm_pre(x + self.pos_embed)


class GridEmbedding(nn.Module):
    """Grid tokens of a timm backbone (CNN or ViT), projected to the joint width."""

    def __init__(self, cfg: Mapping[str, Any], width: int, image_size: int) -> None:
        super().__init__()
        self.backbone = ImageTower(cfg, what="model.image_backbone.pretrained_path")
        was_training = self.backbone.training
        self.backbone.eval()  # a dry run in train mode would update BatchNorm statistics
        with torch.no_grad():
            n = self.backbone.tokens(torch.zeros(1, 3, image_size, image_size)).shape[1]
        self.backbone.train(was_training)
        self.proj = nn.Linear(self.backbone.width, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, width) * 0.02)

    def forward(self, images: Tensor) -> Tensor:
        """Tokens ``[N, 1 + grid, D]``."""
        x = self.proj(self.backbone.tokens(images))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed


class TextEmbedding(nn.Module):
    """BERT-style word + position embeddings with a LayerNorm."""

    def __init__(self, vocab_size: int, width: int, max_len: int) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(max_len, width)
        self.norm = nn.LayerNorm(width, eps=1e-12)
        for table in (self.word, self.position):
            nn.init.normal_(table.weight, std=0.02)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Tokens ``[M, L, D]``."""
        length, max_len = input_ids.shape[1], self.position.num_embeddings
        if length > max_len:
            raise ValueError(f"texts of {length} tokens exceed the model's {max_len} text "
                             "positions (model.text_max_len); lower data.max_text_len")
        pos = self.position(torch.arange(length, device=input_ids.device))
        return self.norm(self.word(input_ids) + pos)

    @torch.no_grad()
    def load_bert(self, bert: nn.Module, folder: Path) -> None:
        """Copy a ``BertModel``'s word, position and LayerNorm weights.

        BERT adds a token-type row (type 0 for a single text) before its LayerNorm; folding
        that row into the position table makes this module compute exactly BERT's embedding
        output for every input.
        """
        emb = bert.embeddings
        width, max_len = self.word.embedding_dim, self.position.num_embeddings
        if emb.word_embeddings.embedding_dim != width:
            raise WeightsMismatchError(
                f"{folder / 'config.json'}: hidden_size={emb.word_embeddings.embedding_dim} but "
                f"the joint transformer is {width} wide (model.joint); BERT embeddings can only "
                f"initialise a joint transformer of their width")
        if emb.position_embeddings.num_embeddings < max_len:
            raise WeightsMismatchError(
                f"{folder / 'config.json'}: max_position_embeddings="
                f"{emb.position_embeddings.num_embeddings} < model.text_max_len={max_len}")
        self.word.weight.copy_(emb.word_embeddings.weight)
        type0 = emb.token_type_embeddings.weight[0]
        self.position.weight.copy_(emb.position_embeddings.weight[:max_len] + type0)
        self.norm.weight.copy_(emb.LayerNorm.weight)
        self.norm.bias.copy_(emb.LayerNorm.bias)
        self.norm.eps = emb.LayerNorm.eps


class MLMHead(nn.Module):
    """Transform + LayerNorm, then a decoder tied to the word embeddings (as in BERT)."""

    def __init__(self, word: nn.Embedding) -> None:
        super().__init__()
        width = word.embedding_dim
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(),
                                       nn.LayerNorm(width, eps=1e-12))
        self.word = word
        self.bias = nn.Parameter(torch.zeros(word.num_embeddings))

    def forward(self, hidden: Tensor) -> Tensor:
        """Vocabulary logits for each hidden state."""
        return F.linear(self.transform(hidden), self.word.weight, self.bias)


class SingleStream(nn.Module):
    """The pure single-stream cross-encoder: ITM + MLM, uniform ITM negatives."""

    def __init__(self, cfg: Mapping[str, Any], vocab_size: int,
                 special_ids: Mapping[str, int] | None = None) -> None:
        super().__init__()
        if "special_ids" in cfg:
            raise ValueError("model.special_ids is no longer read: the special-token ids come "
                             "from the tokenizer (model.text_tower.pretrained_path or the "
                             "harness's vocabulary); remove it from the config")
        self.joint_kind = str(cfg["joint"].get("kind", "vit"))
        if self.joint_kind not in JOINT_KINDS:
            raise ValueError(f"model.joint.kind must be one of {JOINT_KINDS}, "
                             f"got {self.joint_kind!r}")
        text_cfg = dict(cfg.get("text_tower") or {})
        # A BERT encoder when its weights are given (embeddings, UNITER layers) or when the
        # joint transformer is BERT-shaped; TextTower applies the folder checks and sizes.
        bert = (TextTower(text_cfg, vocab_size).bert
                if text_cfg.get("pretrained_path") or self.joint_kind == "bert" else None)
        backbone = cfg.get("image_backbone")
        if bert is not None and self.joint_kind == "bert":
            if not backbone:
                raise ValueError("model.joint.kind=bert needs model.image_backbone (image "
                                 "tokens from a timm backbone's grid): a BERT has no patch "
                                 "projection")
            self.width = width = int(bert.config.hidden_size)
            # BERT's layers are post-LN: each one ends normalised, so no final norm.
            self.blocks, self.norm = bert.encoder.layer, nn.Identity()
            self.image_embed: nn.Module = GridEmbedding(backbone, width, int(cfg["image_size"]))
        else:
            vit = _load_vit(cfg["joint"])
            self.width = width = int(vit.embed_dim)
            self.blocks, self.norm = vit.blocks, vit.norm
            self.image_embed = (GridEmbedding(backbone, width, int(cfg["image_size"]))
                                if backbone else PatchEmbedding(vit))
        self.text_embed = TextEmbedding(vocab_size, width, int(cfg.get("text_max_len", 40)))
        self.type_embed = nn.Embedding(2, width)
        nn.init.normal_(self.type_embed.weight, std=0.02)
        if bert is not None:
            self.text_embed.load_bert(bert, Path(text_cfg.get("pretrained_path") or "."))
            with torch.no_grad():  # BERT's type-0 row is folded into the positions already
                self.type_embed.weight[TEXT].zero_()
        self.itm_pool = str(cfg.get("itm_pool", "cls"))
        if self.itm_pool not in ITM_POOLS:
            raise ValueError(f"model.itm_pool must be one of {ITM_POOLS}, got {self.itm_pool!r}")
        self.pooler: nn.Module = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        if self.itm_pool == "product":
            # ViLBERT pools each stream separately (text: linear + tanh, image: linear + ReLU)
            # before the product; with one shared basis the product could only match features
            # coordinate by coordinate, and the two modalities' coordinates need not agree.
            self.pooler = nn.ModuleDict({
                "text": self.pooler,
                "image": nn.Sequential(nn.Linear(width, width), nn.ReLU()),
            })
        self.itm_head = nn.Linear(width, 2)
        self.mlm_head = MLMHead(self.text_embed.word)
        self.vocab_size = vocab_size
        self.special_ids = dict(special_ids if special_ids is not None else DEFAULT_SPECIAL_IDS)
        if sorted(self.special_ids) != sorted(SPECIAL_KEYS) or not all(
                isinstance(i, int) and 0 <= i < vocab_size for i in self.special_ids.values()):
            raise ValueError(f"special-token ids {self.special_ids} do not fit a vocabulary of "
                             f"{vocab_size} (need {', '.join(SPECIAL_KEYS)}; pass "
                             f"Tokenizer.special_ids)")
        self.mlm_prob = float(cfg.get("mlm_prob", 0.15))
        self.itm_score = str(cfg.get("itm_score", "logit"))
        if self.itm_score not in ("logit", "logprob"):
            raise ValueError(f"model.itm_score must be 'logit' or 'logprob', got {self.itm_score!r}")
        self.loss_weights = {"itm": 1.0, "mlm": 1.0, "itc": 1.0,
                             **dict(cfg.get("loss_weights") or {})}
        # Align before fuse (ALBEF, Li et al. 2021, sec. 3): the first fuse_at blocks run on
        # each modality alone, only the rest on the joint sequence, so the fusion blocks start
        # from aligned features; 0 = every block reads both modalities (ViLT).
        self.fuse_at = int(cfg["joint"].get("fuse_at", 0) or 0)
        if not 0 <= self.fuse_at < len(self.blocks):
            raise ValueError(f"model.joint.fuse_at={self.fuse_at} must be in [0, "
                             f"{len(self.blocks)}): at least one block must fuse the modalities")

    # ------------------------------------------------------------- CrossEncoder contract

    def image_features(self, images: Tensor) -> TokenFeatures:
        """Patch (or grid) embeddings with position and image-type embeddings ``[N, T, D]``."""
        tokens = self.image_embed(images) + self.type_embed.weight[IMAGE]
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return TokenFeatures(self.run_blocks(tokens, mask, 0, self.fuse_at), mask)

    def text_features(self, tokens: TextTokens) -> TokenFeatures:
        """Word embeddings with position and text-type embeddings ``[M, L, D]``."""
        x = self.text_embed(tokens["input_ids"]) + self.type_embed.weight[TEXT]
        mask = tokens["attention_mask"].bool()
        return TokenFeatures(self.run_blocks(x, mask, 0, self.fuse_at), mask)

    def score_pairs(self, image_features: TokenFeatures, text_features: TokenFeatures) -> Tensor:
        """ITM score ``[P]`` of aligned pairs: the positive logit, or its log-probability."""
        logits = self.itm_logits(image_features, text_features)
        if self.itm_score == "logprob":
            return F.log_softmax(logits.float(), dim=-1)[:, 1]
        return logits[:, 1]

    # ------------------------------------------------------------------- joint encoder

    def run_blocks(self, tokens: Tensor, mask: Tensor, start: int, stop: int) -> Tensor:
        """Blocks ``start:stop`` over ``tokens [P, T, D]``, attending only where ``mask``."""
        if start >= stop:
            return tokens
        attn_mask = mask[:, None, None, :]  # broadcast over heads and queries
        if self.joint_kind == "bert":  # transformers' layers take an additive mask
            additive = torch.zeros(attn_mask.shape, dtype=tokens.dtype, device=tokens.device)
            additive = additive.masked_fill(~attn_mask, torch.finfo(tokens.dtype).min)
            for layer in self.blocks[start:stop]:
                out = layer(tokens, attention_mask=additive)
                tokens = out[0] if isinstance(out, tuple) else out
            return tokens
        for block in self.blocks[start:stop]:
            tokens = block(tokens, attn_mask=attn_mask)
        return tokens

    def encode_tokens(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """The fusion blocks (all of them when ``fuse_at`` is 0) and the final norm."""
        return self.norm(self.run_blocks(tokens, mask, self.fuse_at, len(self.blocks)))

    def joint(self, image_features: TokenFeatures, text_features: TokenFeatures
              ) -> tuple[Tensor, Tensor]:
        """Hidden states ``[P, L + T, D]`` of ``[text; image]`` and their mask; padding trimmed."""
        if len(image_features) != len(text_features):
            raise ValueError(f"score_pairs needs aligned rows: {len(image_features)} image "
                             f"features vs {len(text_features)} text features")
        # Cached texts are padded to the longest caption of the gallery; columns that no
        # pair in this batch uses cost attention and MLP time for nothing, so drop them.
        length = _used_text_length(text_features.mask)
        tokens = torch.cat([text_features.tokens[:, :length], image_features.tokens], dim=1)
        mask = torch.cat([text_features.mask[:, :length], image_features.mask], dim=1)
        return self.encode_tokens(tokens, mask), mask

    def itm_logits(self, image_features: TokenFeatures, text_features: TokenFeatures) -> Tensor:
        """Two-way (no match, match) logits ``[P, 2]`` from the pooled joint sequence."""
        hidden, mask = self.joint(image_features, text_features)
        if self.itm_pool == "cls":
            return self.itm_head(self.pooler(hidden[:, 0]))
        if self.itm_pool == "image_cls":
            # The image's class token starts near zero (ViT's), so what it holds at the end is
            # what it gathered by attention from both modalities. The text [CLS] starts as a
            # normalised embedding, the same for every pair; from scratch, in a pre-LN stack,
            # attention moves it by ~1 % at initialisation (docs/cross-encoder.md).
            first_image = hidden.shape[1] - image_features.tokens.shape[1]
            return self.itm_head(self.pooler(hidden[:, first_image]))
        weights = mask.to(hidden.dtype)[..., None]
        if self.itm_pool == "product":
            first_image = hidden.shape[1] - image_features.tokens.shape[1]
            text = (hidden[:, :first_image] * weights[:, :first_image]).sum(1)
            text = text / weights[:, :first_image].sum(1).clamp_min(1.0)
            image = hidden[:, first_image:].mean(1)
            return self.itm_head(self.pooler["text"](text) * self.pooler["image"](image))
        return self.itm_head(self.pooler((hidden * weights).sum(1) / weights.sum(1)))

    # ------------------------------------------------------------------------ training

    def negative_logits(self, image: TokenFeatures, text: TokenFeatures, ids: Tensor,
                        out: dict[str, Tensor]) -> tuple[Tensor, Tensor] | None:
        """Similarity logits ``(i2t, t2i)`` for hard negatives; None means uniform negatives."""
        return None

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """ITM with in-batch negatives and MLM on the positive pairs (plus ITC with the head)."""
        image = self.image_features(batch["images"])
        text = self.text_features(batch)
        ids = batch["image_ids"]
        out: dict[str, Tensor] = {}
        sims = self.negative_logits(image, text, ids, out)
        out["itm"] = self.loss_weights["itm"] * self.itm_loss(image, text, ids, sims)
        out["mlm"] = self.loss_weights["mlm"] * self.mlm_loss(image, batch)
        return out

    def itm_loss(self, image: TokenFeatures, text: TokenFeatures, ids: Tensor,
                 sims: tuple[Tensor, Tensor] | None) -> Tensor:
        """Cross-entropy over B positives, one negative text per image, one negative image per text."""
        same = ids[:, None] == ids[None, :]  # row: image of pair r, column: caption of pair c
        i2t, t2i = sims if sims is not None else (None, None)
        neg_text, ok_t = sample_negatives(same, i2t)
        neg_image, ok_i = sample_negatives(same.t(), t2i)
        rows = torch.arange(len(ids), device=ids.device)
        img_idx = torch.cat([rows, rows[ok_t], neg_image[ok_i]])
        txt_idx = torch.cat([rows, neg_text[ok_t], rows[ok_i]])
        labels = torch.zeros_like(img_idx)
        labels[: len(rows)] = 1
        logits = self.itm_logits(image.select(img_idx), text.select(txt_idx))
        return F.cross_entropy(logits.float(), labels)

    def mlm_loss(self, image: TokenFeatures, batch: Batch) -> Tensor:
        """Masked-word prediction from the joint sequence of each positive pair."""
        masked, labels = mask_tokens(
            batch["input_ids"], batch["attention_mask"], special_ids=self.special_ids.values(),
            mask_id=self.special_ids["mask"], vocab_size=self.vocab_size, prob=self.mlm_prob)
        text = self.text_features({"input_ids": masked, "attention_mask": batch["attention_mask"]})
        hidden = self.joint(image, text)[0]
        # joint() may drop trailing padding columns; those hold no label, so trim to match.
        length = hidden.shape[1] - image.tokens.shape[1]
        hidden, labels = hidden[:, :length], labels[:, :length]
        chosen = labels != IGNORE_INDEX
        if not bool(chosen.any()):  # a batch of very short captions can draw no token at all
            return hidden.sum() * 0.0
        logits = self.mlm_head(hidden[chosen])
        return F.cross_entropy(logits.float(), labels[chosen])


class SingleStreamITC(SingleStream):
    """Single stream plus an ALBEF-style contrastive head: hard negatives and a first stage."""

    def __init__(self, cfg: Mapping[str, Any], vocab_size: int,
                 special_ids: Mapping[str, int] | None = None) -> None:
        super().__init__(cfg, vocab_size, special_ids)
        itc = dict(cfg.get("itc") or {})
        self.itc_pool = str(itc.get("pool", "encoder"))
        if self.itc_pool not in ("encoder", "embeddings"):
            raise ValueError(f"model.itc.pool must be 'encoder' or 'embeddings', "
                             f"got {self.itc_pool!r}")
        dim = int(itc.get("embed_dim", 256))
        self.image_proj = nn.Linear(self.width, dim)
        self.text_proj = nn.Linear(self.width, dim)
        temperature = float(itc.get("init_temperature", 0.07))
        self.hard_negatives = bool(itc.get("hard_negatives", True))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def pooled(self, features: TokenFeatures) -> Tensor:
        """One vector per item: first token after a unimodal pass, or masked mean embedding."""
        tokens = features.tokens
        if self.itc_pool == "encoder" and not self.fuse_at:
            # The joint transformer run on one modality alone (as VLMo does): N + M extra
            # forwards over short sequences, much stronger than a bag of embeddings.
            tokens = self.encode_tokens(tokens, features.mask)
        # With fuse_at > 0 the features already went through the unimodal blocks.
        # A masked mean, not the first token: from scratch, a pre-LN stack leaves the [CLS]
        # output nearly the same for every caption, and ITC then collapses to uniform scores.
        weights = features.mask.to(tokens.dtype)[..., None]
        return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised contrastive image embeddings ``[N, D]``."""
        return self.embed_image(self.image_features(images))

    def encode_text(self, tokens: TextTokens) -> Tensor:
        """L2-normalised contrastive text embeddings ``[M, D]``."""
        return self.embed_text(self.text_features(tokens))

    def embed_image(self, features: TokenFeatures) -> Tensor:
        """Contrastive embedding of cached image features."""
        return F.normalize(self.image_proj(self.pooled(features)), dim=-1)

    def embed_text(self, features: TokenFeatures) -> Tensor:
        """Contrastive embedding of cached text features."""
        return F.normalize(self.text_proj(self.pooled(features)), dim=-1)

    def clamp_logit_scale(self) -> None:
        """Keep the temperature in CLIP's range; the loop calls this after each step."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def negative_logits(self, image: TokenFeatures, text: TokenFeatures, ids: Tensor,
                        out: dict[str, Tensor]) -> tuple[Tensor, Tensor] | None:
        """ITC loss into ``out``; its detached, temperature-scaled similarities as weights, or
        None (uniform ITM negatives) when ``itc.hard_negatives`` is off."""
        img, txt = self.embed_image(image), self.embed_text(text)
        scale = self.logit_scale.exp()
        out["itc"] = self.loss_weights["itc"] * symmetric_info_nce(img, txt, scale, ids, ids)
        if not self.hard_negatives:
            return None
        with torch.no_grad():
            sims = scale * img @ txt.t()
        return sims, sims.t()


def build_single_stream(cfg: Mapping[str, Any], *, vocab_size: int,
                        special_ids: Mapping[str, int] | None = None) -> SingleStream:
    """Registry factory for ``model=single_stream``; ``special_ids`` from the tokenizer."""
    cls = SingleStreamITC if cfg.get("contrastive_head", False) else SingleStream
    return cls(cfg, vocab_size, special_ids)
