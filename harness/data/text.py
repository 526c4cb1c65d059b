"""Tokenisation: BERT WordPiece from a local vocab folder, or a vocab built from the captions."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

from torch import Tensor

from harness.atomic import create_temp_dir
from harness.data.report import DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class Tokenizer:
    """Callable text -> ``{input_ids, attention_mask}`` with a fixed maximum length."""

    def __init__(self, vocab_dir: Path, max_len: int) -> None:
        from transformers import BertTokenizer  # heavy import, only when text is tokenised

        vocab = Path(vocab_dir) / "vocab.txt"
        if not vocab.is_file():
            raise DataError(f"{vocab}: tokenizer vocab not found (data.vocab_dir)")
        # from_pretrained(dir) and not BertTokenizer(vocab_file=...): in transformers 5 the
        # latter silently maps every word to [UNK].
        self._tok = BertTokenizer.from_pretrained(str(vocab_dir), do_lower_case=True)
        self.vocab_dir = Path(vocab_dir)
        self.max_len = max_len

    @property
    def vocab_size(self) -> int:
        """Number of entries in the vocabulary."""
        return len(self._tok)

    @property
    def special_ids(self) -> dict[str, int]:
        """Ids of the special tokens (pad, cls, sep, mask, unk)."""
        t = self._tok
        return {"pad": t.pad_token_id, "cls": t.cls_token_id, "sep": t.sep_token_id,
                "mask": t.mask_token_id, "unk": t.unk_token_id}

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        out = self._tok(list(texts), padding=True, truncation=True, max_length=self.max_len,
                        return_tensors="pt", return_token_type_ids=False)
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    def save(self, dest: Path) -> None:
        """Copy the vocab to ``dest`` so a later stage reads the very same tokenizer."""
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.vocab_dir / "vocab.txt", dest / "vocab.txt")


def _corpus_key(captions: Sequence[str], vocab_size: int) -> str:
    h = hashlib.sha256(f"{vocab_size}\n".encode())
    for caption in captions:
        h.update(caption.encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()[:12]


def build_vocab(captions: Sequence[str], cache_root: Path, vocab_size: int = 8000) -> Path:
    """Train a lowercase WordPiece vocab on ``captions``; cached by content under ``cache_root``."""
    if not captions:
        raise DataError("cannot build a tokenizer vocab from zero captions")
    target = cache_root / f"wordpiece-{_corpus_key(captions, vocab_size)}"
    if (target / "vocab.txt").is_file():
        return target
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(list(captions), vocab_size=vocab_size, min_frequency=1,
                            special_tokens=SPECIAL_TOKENS, show_progress=False)
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = create_temp_dir(cache_root, ".vocab-")  # not mkdtemp's 0700: the cache is shared
    tok.save_model(str(tmp))
    try:
        os.replace(tmp, target)  # atomic: concurrent builders agree on the same content
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_tokenizer(
    *, vocab_dir: str | None, inherited: Path | None, captions: Iterable[str],
    cache_root: Path, max_len: int, vocab_size: int = 8000,
) -> Tokenizer:
    """The configured vocab, else the one a parent stage used, else one built from captions."""
    if vocab_dir:
        return Tokenizer(Path(vocab_dir), max_len)
    if inherited is not None and (inherited / "vocab.txt").is_file():
        return Tokenizer(inherited, max_len)
    return Tokenizer(build_vocab(list(captions), cache_root, vocab_size), max_len)

