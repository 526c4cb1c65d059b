"""Unimodal towers every model builds from config: a timm image tower and a BERT text tower.

Pretrained weights come from local files only (``pretrained_path``), so nothing touches a
network hub unless a user sets ``hub: true`` on a machine that has one. Loading is strict:
a weight file that does not fill every parameter of the model, or brings keys or shapes the
model does not have, is an error listing them, never a silent partial load.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from harness.interfaces import TextTokens

# The sizes of a BERT encoder; with pretrained_path they come from the folder's config.json.
BERT_SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings")
BERT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                     "pytorch_model.bin.index.json")
# Keys of a BERT checkpoint the encoder does not use: the pooler (built without one) and the
# pretraining heads of a BertForPreTraining / BertForMaskedLM checkpoint.
UNUSED_BERT_PREFIXES = ("pooler.", "cls.")
_LISTED = 10  # keys named per kind in a mismatch message


class WeightsNotFoundError(FileNotFoundError):
    """A configured pretrained weight file or folder does not exist."""


class WeightsMismatchError(ValueError):
    """Pretrained weights that do not fit the configured model (keys, shapes or sizes)."""


def _existing(path: str | Path | None, what: str) -> Path | None:
    if not path:
        return None
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise WeightsNotFoundError(f"{what}: pretrained weights not found at {resolved}")
    return resolved


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def key_problems(state: Mapping[str, Tensor], model: nn.Module) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches of ``state`` against ``model``."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    shapes = sorted(f"{k} {tuple(state[k].shape)} in the file vs {tuple(v.shape)} in the model"
                    for k, v in expected.items()
                    if k in state and tuple(state[k].shape) != tuple(v.shape))
    problems = []
    for kind, keys in (("missing", missing), ("unexpected", unexpected),
                       ("shape mismatch", shapes)):
        if keys:
            problems.append(f"{kind} ({len(keys)}): {_listed(keys)}")
    return problems


# ------------------------------------------------------------------------------ image side


def read_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """The tensors of a ``.pt``/``.pth``/``.bin`` or ``.safetensors`` file, unwrapped from a
    training checkpoint (``state_dict`` / ``model``) and from DDP's ``module.`` prefix."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and safetensors all raise their own types
        raise WeightsMismatchError(f"{path}: cannot read a state dict ({what}): {exc}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsMismatchError(f"{path}: not a state dict of tensors ({what})")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_timm_weights(model: nn.Module, path: Path, what: str) -> None:
    """Load a local timm state dict into ``model`` strictly.

    timm's own checkpoint filter for the architecture runs first (for ViTs it resamples
    position embeddings to the model's grid and converts other layouts); classifier weights
    are dropped because towers are built without a classifier (``num_classes=0``).
    """
    state = read_state_dict(path, what)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as exc:  # a foreign layout trips over its own key lookups
            raise WeightsMismatchError(f"{path}: timm's checkpoint filter for "
                                       f"{type(model).__name__} failed ({what}): {exc!r}") from None
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    if getattr(model, "num_classes", None) == 0 and heads:
        state = {k: v for k, v in state.items()
                 if not any(k == h or k.startswith(f"{h}.") for h in heads)}
    problems = key_problems(state, model)
    if problems:
        raise WeightsMismatchError(f"{path}: not a state dict of {type(model).__name__} as "
                                   f"configured ({what}): {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


class ImageTower(nn.Module):
    """timm backbone returning either pooled features ``[N, C]`` or tokens ``[N, T, C]``."""

    def __init__(self, cfg: Mapping[str, Any],
                 what: str = "model.image_tower.pretrained_path") -> None:
        super().__init__()
        import timm

        weights = _existing(cfg.get("pretrained_path"), what)
        self.backbone = timm.create_model(
            cfg["name"], pretrained=bool(cfg.get("hub", False)), num_classes=0,
            **dict(cfg.get("kwargs") or {}),
        )
        if weights is not None:
            load_timm_weights(self.backbone, weights, what)
        # Channels-last convolutions run about a quarter faster on CPU (oneDNN) and on GPU
        # tensor cores; the values are the same up to summation order.
        self.backbone.to(memory_format=torch.channels_last)
        self.width: int = int(self.backbone.num_features)
        self.data_config = timm.data.resolve_data_config({}, model=self.backbone)

    def forward(self, images: Tensor) -> Tensor:
        """Pooled image features ``[N, C]``."""
        return self.backbone(images.contiguous(memory_format=torch.channels_last))

    def tokens(self, images: Tensor) -> Tensor:
        """Token features ``[N, T, C]``: ViT tokens as they are, CNN grids flattened."""
        features = self.backbone.forward_features(
            images.contiguous(memory_format=torch.channels_last))
        if features.ndim == 4:  # CNN: [N, C, H, W] grid -> H*W tokens
            features = features.flatten(2).transpose(1, 2)
        return features


# ------------------------------------------------------------------------------- text side


def text_weights_dir(model_cfg: Mapping[str, Any]) -> Path | None:
    """The model's pretrained BERT folder (``model.text_tower.pretrained_path``), if set.

    The one source of the text side: the tokenizer, the vocabulary, the special-token ids
    and the tower's sizes all come from this folder when it is set.
    """
    path = (model_cfg.get("text_tower") or {}).get("pretrained_path")
    return Path(path).expanduser() if path else None


def bert_folder_config(folder: Path, what: str = "model.text_tower.pretrained_path") -> Any:
    """The ``BertConfig`` of a local Hugging Face BERT folder; an error naming the folder when
    it is not one (no config.json, another model type, no weight file)."""
    from transformers import BertConfig

    if not folder.is_dir():
        raise WeightsMismatchError(f"{folder}: not a folder ({what} must be a Hugging Face "
                                   f"model folder with config.json and weights)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise WeightsMismatchError(f"{folder}: not a Hugging Face model folder ({what}): "
                                   f"no config.json")
    try:
        config = BertConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WeightsMismatchError(f"{config_file}: unreadable ({what}): {exc}") from None
    model_type = getattr(config, "model_type", None)
    if model_type != "bert":
        raise WeightsMismatchError(f"{config_file}: model_type {model_type!r}, not 'bert' "
                                   f"({what} must be a BERT folder)")
    if not any((folder / name).is_file() for name in BERT_WEIGHT_FILES):
        raise WeightsMismatchError(f"{folder}: no weight file ({what}): expected one of "
                                   f"{', '.join(BERT_WEIGHT_FILES)}")
    return config


def check_bert_sizes(cfg: Mapping[str, Any], config: Any, folder: Path,
                     prefix: str = "model.text_tower") -> None:
    """Every size set in ``cfg`` must equal the folder's; null means "the folder's"."""
    for key in BERT_SIZE_KEYS:
        wanted = cfg.get(key)
        if wanted is not None and int(wanted) != int(getattr(config, key)):
            raise WeightsMismatchError(
                f"{prefix}.{key}={wanted} but {folder / 'config.json'} has {key}="
                f"{getattr(config, key)}; the folder's config defines the pretrained tower: "
                f"set {prefix}.{key}=null or to {getattr(config, key)}")


def check_vocab_size(config: Any, vocab_size: int, folder: Path) -> None:
    """The tokenizer must index exactly the rows of the pretrained embedding table."""
    if int(config.vocab_size) != int(vocab_size):
        raise WeightsMismatchError(
            f"{folder / 'config.json'}: the embedding table has vocab_size={config.vocab_size} "
            f"but the tokenizer has {vocab_size} tokens; the tokenizer must be the folder's own "
            f"(unset data.vocab_dir, and do not start from a stage trained with another "
            f"vocabulary)")


def load_bert(folder: Path, what: str = "model.text_tower.pretrained_path") -> nn.Module:
    """``BertModel`` (no pooler) from a local folder; missing or reshaped weights are an error."""
    from transformers import BertModel

    bert, info = BertModel.from_pretrained(str(folder), add_pooling_layer=False,
                                           local_files_only=True, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or ())
    unexpected = sorted(k for k in info.get("unexpected_keys") or ()
                        if not k.removeprefix("bert.").startswith(UNUSED_BERT_PREFIXES))
    problems = [f"{kind} ({len(keys)}): {_listed(keys)}" for kind, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
                if keys]
    if problems:
        raise WeightsMismatchError(f"{folder}: the weights do not fill a BertModel of its own "
                                   f"config.json ({what}): {'; '.join(problems)}")
    return bert


def without_weights(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a model config that builds the same architecture without reading weights.

    Every ``pretrained_path`` becomes null and ``hub`` false; text-tower sizes left null for a
    pretrained folder are filled from its config.json. FLOP counting builds models on the meta
    device, where loading weights is impossible and pointless: shapes do not depend on them.
    """

    def strip(node: Any, key: str | None) -> Any:
        if not isinstance(node, Mapping):
            return node
        out = {k: strip(v, k) for k, v in node.items()}
        folder = out.get("pretrained_path")
        if key == "text_tower" and folder:
            config = bert_folder_config(Path(folder).expanduser())
            for size in BERT_SIZE_KEYS:
                if out.get(size) is None:
                    out[size] = int(getattr(config, size))
        if "pretrained_path" in out:
            out["pretrained_path"] = None
        if "hub" in out:
            out["hub"] = False
        return out

    return strip(model_cfg, None)


class TextTower(nn.Module):
    """BERT encoder, from a local pretrained folder or built from config sizes."""

    def __init__(self, cfg: Mapping[str, Any], vocab_size: int) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        weights = _existing(cfg.get("pretrained_path"), "model.text_tower.pretrained_path")
        if weights is not None:
            config = bert_folder_config(weights)
            check_bert_sizes(cfg, config, weights)
            check_vocab_size(config, vocab_size, weights)
            self.bert = load_bert(weights)
        else:
            sizes = {k: v for k, v in cfg.items() if k not in ("pretrained_path", "pooling")}
            unset = [k for k in BERT_SIZE_KEYS if sizes.get(k) is None]
            if unset:
                raise ValueError(f"model.text_tower: {', '.join(unset)} must be set when "
                                 f"model.text_tower.pretrained_path is null")
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
