"""Image-text pair corpora for pretraining: TSV/CSV manifests and WebDataset tar shards."""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import random
import tarfile
from pathlib import Path
from typing import Any, Iterator

from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from harness.data.images import find_bad_images, load_rgb
from harness.data.report import DataError, DataReport
from harness.data.transforms import ImageTransform
from harness.seeding import mix_seed, seeded

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


def sample_id(key: str) -> int:
    """A dataset-global 63-bit id from a sample key (positives are samples with equal ids)."""
    # crc32 would collide about once per 77k keys: at web scale two different pairs in one
    # global batch could then count as positives of each other.
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


def _split_name(name: str) -> tuple[str, str]:
    # WebDataset convention: the key is the path up to the first dot of the file name.
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def read_shard(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` records of a WebDataset tar, in file order."""
    key, parts = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name, ext = _split_name(member.name)
                if name != key:
                    if key is not None:
                        yield key, parts
                    key, parts = name, {}
                handle = tar.extractfile(member)
                parts[ext] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable WebDataset shard ({exc})") from None
    if key is not None:
        yield key, parts


def shard_captions(shards: list[str]) -> Iterator[str]:
    """Every caption of the shards, lazily (to build a vocabulary when none is configured)."""
    for path in shards:
        for _, parts in read_shard(path):
            if "txt" in parts:
                yield " ".join(parts["txt"].decode("utf-8", errors="replace").split())


class ShardPairs(IterableDataset[Item]):
    """Pairs streamed from WebDataset shards, split across ranks and DataLoader workers.

    Each (rank, worker) reads its own *stream*: with ``resampled`` an endless sequence of
    shards drawn with replacement from a seed of its own (every rank stays busy however
    shards divide), otherwise its share ``shards[s::n_streams]`` reshuffled each epoch.
    Records pass a seeded shuffle buffer of raw bytes, then are decoded with augmentation
    seeded by (seed, stream, position). The loop calls :meth:`set_position` before building
    its DataLoader: a resumed run skips, without decoding, exactly the records the
    interrupted one consumed (same world size and worker count; with ``policy='skip'`` a
    corrupt record inside the skipped prefix shifts the stream by one sample).
    """

    IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")

    def __init__(self, pattern: str, transform: ImageTransform, *, resampled: bool = True,
                 seed: int = 0, image_views: int = 1, policy: str = "error",
                 shuffle_buffer: int = 0) -> None:
        self.shards = expand_shards(pattern)
        self.transform = transform
        self.resampled = resampled
        self.seed = seed
        self.image_views = image_views
        self.policy = policy
        self.shuffle_buffer = shuffle_buffer
        self.rank, self.world_size, self.batches_done, self.batch_size = 0, 1, 0, 1

    def set_position(self, *, rank: int, world_size: int, batches_done: int,
                     batch_size: int) -> None:
        """Which rank reads, and how many of its batches earlier runs already consumed."""
        self.rank, self.world_size = rank, world_size
        self.batches_done, self.batch_size = batches_done, batch_size

    def _shard_order(self, stream: int, n_streams: int) -> Iterator[str]:
        if self.resampled:
            rng = random.Random(mix_seed(self.seed, stream, 0x5EED))
            while True:
                yield self.shards[rng.randrange(len(self.shards))]
        mine = self.shards[stream::n_streams]
        if len(self.shards) < n_streams:  # an empty stream would starve its rank forever
            raise DataError(f"{len(self.shards)} shards cannot feed {n_streams} readers "
                            f"(ranks x workers); use resampled shards or fewer workers")
        epoch = 0
        while True:
            order = list(mine)
            random.Random(mix_seed(self.seed, stream, epoch)).shuffle(order)
            yield from order
            epoch += 1

    def _records(self, stream: int, n_streams: int) -> Iterator[tuple[str, dict[str, bytes]]]:
        records = (rec for shard in self._shard_order(stream, n_streams)
                   for rec in read_shard(shard))
        if self.shuffle_buffer <= 1:
            yield from records
            return
        rng, buffer = random.Random(mix_seed(self.seed, stream, 0xB0F)), []
        for record in records:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(record)
                continue
            pick = rng.randrange(len(buffer))
            buffer[pick], record = record, buffer[pick]
            yield record

    def _decode(self, key: str, parts: dict[str, bytes]) -> Item | None:
        try:
            raw = next((parts[e] for e in self.IMAGE_EXTS if e in parts), None)
            if raw is None or "txt" not in parts:
                raise ValueError(f"needs an image ({'/'.join(self.IMAGE_EXTS)}) and a txt, "
                                 f"has {sorted(parts)}")
            image = Image.open(io.BytesIO(raw)).convert("RGB")
            caption = " ".join(parts["txt"].decode("utf-8").split())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            if self.policy == "skip":
                return None
            raise DataError(f"WebDataset sample {key!r}: cannot decode ({exc})") from None
        item: Item = {"image": self.transform(image), "caption": caption,
                      "image_id": sample_id(key)}
        if self.image_views > 1:
            item["image2"] = self.transform(image)
        return item

    def __iter__(self) -> Iterator[Item]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The DataLoader asks workers for batches round-robin, starting from worker 0: batch j
        # of a run comes from stream j % workers. A resumed loader starts at batch
        # batches_done, so its worker w continues the stream that batch would have come from.
        logical = (worker + self.batches_done) % workers
        stream, n_streams = self.rank * workers + logical, self.world_size * workers
        skip = len(range(logical, self.batches_done, workers)) * self.batch_size
        produced = 0
        for position, (key, parts) in enumerate(self._records(stream, n_streams)):
            if produced < skip:
                produced += 1
                continue
            with seeded(self.seed, stream, position):
                item = self._decode(key, parts)
            if item is not None:
                produced += 1
                yield item
