"""Image-text pair corpora for pretraining: TSV/CSV manifests and WebDataset tar shards."""

from __future__ import annotations

import csv
import glob
import io
import zlib
from pathlib import Path
from typing import Any, Iterator

from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from harness.data.images import find_bad_images, load_rgb
from harness.data.report import DataError, DataReport
from harness.data.transforms import ImageTransform

Item = dict[str, Any]
IMAGE_COLUMNS = ("image", "filepath", "image_path", "url")
CAPTION_COLUMNS = ("caption", "text", "title")


def _pick(header: list[str], choices: tuple[str, ...], path: Path, what: str) -> str:
    for name in choices:
        if name in header:
            return name
    raise DataError(f"{path}: header has no {what} column (one of {', '.join(choices)}); "
                    f"found {header}")


def load_manifest(path: Path, report: DataReport | None = None,
                  check_images: bool = True) -> list[tuple[Path, str]]:
    """(image path, caption) pairs from a TSV/CSV manifest; relative paths are from its folder."""
    report = report or DataReport()
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter=delimiter))
            header = list(rows[0].keys()) if rows else []
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 at byte {exc.start}") from None
    if not rows:
        raise DataError(f"{path}: manifest has no rows")
    image_col = _pick(header, IMAGE_COLUMNS, path, "image")
    caption_col = _pick(header, CAPTION_COLUMNS, path, "caption")
    pairs: list[tuple[Path, str]] = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        caption = " ".join((row.get(caption_col) or "").split())
        if not row.get(image_col) or not caption:
            report.flag(path, f"line {line}", "empty image path or caption")
            continue
        pairs.append((path.parent / row[image_col], caption))
    if check_images:
        bad = find_bad_images([p for p, _ in pairs])
        for index in sorted(bad, reverse=True):
            report.flag(pairs[index][0], f"{path.name} pair {index}", bad[index])
            del pairs[index]
    report.count("pretrain_pairs", len(pairs))
    if not pairs:
        raise DataError(f"{path}: no usable pairs")
    return pairs


class ManifestPairs(Dataset[Item]):
    """Pairs from a manifest, in the same item form as caption datasets (id = pair index)."""

    def __init__(self, pairs: list[tuple[Path, str]], transform: ImageTransform,
                 image_views: int = 1) -> None:
        self.pairs = pairs
        self.transform = transform
        self.image_views = image_views

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Item:
        path, caption = self.pairs[index]
        image = load_rgb(path)
        item: Item = {"image": self.transform(image), "caption": caption, "image_id": index}
        if self.image_views > 1:
            item["image2"] = self.transform(image)
        return item


def expand_shards(pattern: str) -> list[str]:
    """Shard paths from a glob or brace pattern (``shard-{000000..000009}.tar``)."""
    import braceexpand  # shipped with webdataset

    paths = sorted(p for part in braceexpand.braceexpand(pattern) for p in glob.glob(part))
    if not paths:
        raise DataError(f"no WebDataset shards match {pattern!r}")
    return paths


class ShardPairs(IterableDataset[Item]):
    """Pairs streamed from WebDataset shards, split across ranks and workers.

    With ``resampled`` shards are drawn with replacement forever (the caller bounds the number
    of steps), which keeps every rank busy however shards divide across ranks.
    """

    def __init__(self, pattern: str, transform: ImageTransform, *, resampled: bool = True,
                 seed: int = 0, image_views: int = 1, policy: str = "error") -> None:
        self.shards = expand_shards(pattern)
        self.transform = transform
        self.resampled = resampled
        self.seed = seed
        self.image_views = image_views
        self.policy = policy

    def _pipeline(self) -> Any:
        import webdataset as wds

        handler = wds.warn_and_continue if self.policy == "skip" else wds.reraise_exception
        if self.resampled:
            source = wds.WebDataset(self.shards, resampled=True, seed=self.seed,
                                    handler=handler, nodesplitter=wds.split_by_node,
                                    shardshuffle=False)
        else:
            source = wds.WebDataset(self.shards, shardshuffle=False, handler=handler,
                                    nodesplitter=wds.split_by_node,
                                    workersplitter=wds.split_by_worker)
        return source.to_tuple("__key__", "jpg;jpeg;png", "txt", handler=handler)

    def __iter__(self) -> Iterator[Item]:
        for key, raw_image, raw_text in self._pipeline():
            try:
                image = Image.open(io.BytesIO(raw_image)).convert("RGB")
                caption = " ".join(raw_text.decode("utf-8").split())
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                if self.policy == "skip":
                    continue
                raise DataError(f"WebDataset sample {key!r}: cannot decode ({exc})") from None
            item: Item = {"image": self.transform(image), "caption": caption,
                          "image_id": zlib.crc32(key.encode())}
            if self.image_views > 1:
                item["image2"] = self.transform(image)
            yield item
