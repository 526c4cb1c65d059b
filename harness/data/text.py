"""Tokenisation: BERT WordPiece from a local folder, or a vocab built from the captions.

Where the vocabulary comes from, first match wins (:func:`resolve_tokenizer`): the text
tower's pretrained Hugging Face folder (``model.text_tower.pretrained_path``: the tokenizer
that goes with those weights), else ``data.vocab_dir`` (a vocabulary without weights), else
the tokenizer a parent stage saved, else a WordPiece vocab trained on the captions.
"""

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
# Files that make a folder a tokenizer: a BERT vocab.txt, or a saved tokenizers-backed one.
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")


def is_tokenizer_dir(folder: Path) -> bool:
    """Whether ``folder`` holds a vocab.txt or a tokenizer.json."""
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


class Tokenizer:
    """Callable text -> ``{input_ids, attention_mask}`` with a fixed maximum length."""

    def __init__(self, folder: Path, max_len: int, what: str = "data.vocab_dir") -> None:
        from transformers import BertTokenizer  # heavy import, only when text is tokenised

        folder = Path(folder).expanduser()
        if not folder.exists():
            raise DataError(f"{folder}: not found ({what})")
        if not is_tokenizer_dir(folder):
            raise DataError(f"{folder}: no tokenizer there ({what}): expected "
                            f"{' or '.join(TOKENIZER_FILES)}")
        # from_pretrained(dir) and not BertTokenizer(vocab_file=...): in transformers 5 the
        # latter silently maps every word to [UNK]. A folder with its own tokenizer_config.json
        # says whether it lowercases (bert-base-cased does not); a bare vocab.txt is ours.
        kwargs = {} if (folder / "tokenizer_config.json").is_file() else {"do_lower_case": True}
        try:
            self._tok = BertTokenizer.from_pretrained(str(folder), local_files_only=True,
                                                      **kwargs)
        except (OSError, ValueError) as exc:
            raise DataError(f"{folder}: not a loadable BERT tokenizer ({what}): {exc}") from None
        self.folder = folder
        self.max_len = max_len
        _check_tokenizes(self._tok, folder, what)

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

    def vocab(self) -> dict[str, int]:
        """Token -> id, every entry."""
        return dict(self._tok.get_vocab())

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        out = self._tok(list(texts), padding=True, truncation=True, max_length=self.max_len,
                        return_tensors="pt", return_token_type_ids=False)
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    def save(self, dest: Path) -> None:
        """Write this tokenizer to ``dest`` so a later stage reads the very same one."""
        dest.mkdir(parents=True, exist_ok=True)
        self._tok.save_pretrained(str(dest))
        # transformers 5 writes tokenizer.json only; keep the plain vocab.txt readable too.
        if (self.folder / "vocab.txt").is_file():
            shutil.copyfile(self.folder / "vocab.txt", dest / "vocab.txt")


def _check_tokenizes(tok: object, folder: Path, what: str) -> None:
    """Refuse a tokenizer that maps its own words to [UNK] (a broken tokenizer.json, e.g.
    one saved from ``BertTokenizer(vocab_file=...)`` under transformers 5) or that does not
    hold every line of its vocab.txt."""
    vocab: dict[str, int] = tok.get_vocab()  # type: ignore[attr-defined]
    vocab_file = folder / "vocab.txt"
    if vocab_file.is_file():
        lines = vocab_file.read_text(encoding="utf-8").splitlines()
        if len(vocab) != len(lines):
            raise DataError(f"{folder}: the tokenizer holds {len(vocab)} tokens but vocab.txt "
                            f"has {len(lines)} lines ({what}); remove the stale tokenizer.json")
    specials = set(tok.all_special_tokens)  # type: ignore[attr-defined]
    words = [w for w in vocab if w not in specials and w.isalpha() and w.islower()]
    if not words:
        raise DataError(f"{folder}: the tokenizer has no word besides its special tokens "
                        f"({what}); it would map every word to [UNK]")
    word = min(words, key=lambda w: vocab[w])
    ids = tok(word, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    if ids != [vocab[word]]:
        raise DataError(f"{folder}: the tokenizer turns its own word {word!r} into {ids}, not "
                        f"[{vocab[word]}] ({what})")


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
    *, pretrained_dir: str | Path | None = None, vocab_dir: str | None,
    inherited: Path | None, captions: Iterable[str], cache_root: Path, max_len: int,
    vocab_size: int = 8000,
) -> Tokenizer:
    """The pretrained text folder's tokenizer, else ``data.vocab_dir``'s, else the one a parent
    stage used, else one built from captions. Two configured sources that disagree, or a
    parent that used another vocabulary, are an error."""
    chosen: Tokenizer | None = None
    if pretrained_dir:
        chosen = Tokenizer(Path(pretrained_dir), max_len, "model.text_tower.pretrained_path")
    if vocab_dir:
        from_vocab = Tokenizer(Path(vocab_dir), max_len, "data.vocab_dir")
        if chosen is not None and from_vocab.vocab() != chosen.vocab():
            raise DataError(f"data.vocab_dir={vocab_dir} and model.text_tower.pretrained_path="
                            f"{pretrained_dir} hold different vocabularies; unset "
                            f"data.vocab_dir (the weights' folder brings its tokenizer)")
        chosen = chosen or from_vocab
    if inherited is not None and is_tokenizer_dir(inherited):
        parent = Tokenizer(inherited, max_len, "the parent stage's tokenizer")
        if chosen is not None and parent.vocab() != chosen.vocab():
            raise DataError(f"{inherited}: the parent stage was trained with another "
                            f"vocabulary than {chosen.folder}; its checkpoint's embeddings "
                            f"would be read with the wrong ids")
        chosen = chosen or parent
    if chosen is not None:
        return chosen
    return Tokenizer(build_vocab(list(captions), cache_root, vocab_size), max_len)
