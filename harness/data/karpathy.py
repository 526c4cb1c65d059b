"""Caption datasets (COCO, Flickr30K, the embedded one) from Karpathy or ALBEF/BLIP annotations.

Both formats load into one :class:`CaptionCorpus` per split: a list of images, a list of
captions, and ``txt2img`` mapping each caption to its image. Any number of captions per image
is allowed; nothing downstream assumes five.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from harness.data.images import find_bad_images
from harness.data.report import DataError, DataReport

# Karpathy's COCO file calls the 30K extra training images "restval"; every published
# retrieval model trains on train + restval, so the train split includes them.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {"train": ("train", "restval")}
FORMATS: tuple[str, ...] = ("karpathy", "albef")
# Karpathy's Flickr30K file has no per-image ``filepath`` (COCO's says train2014/val2014): its
# images are the public archive's flickr30k-images/ folder, which ALBEF's annotation paths
# ("flickr30k-images/<name>.jpg") name too, so one image_root serves both formats. Keyed by
# the file's own top-level "dataset" value.
IMPLICIT_FILEPATH: dict[str, str] = {"flickr30k": "flickr30k-images"}


@dataclass(frozen=True)
class CaptionCorpus:
    """One split of a caption dataset: the evaluation form (all images, all captions)."""

    name: str
    split: str
    image_paths: list[Path]
    image_ids: list[int]
    captions: list[str]
    txt2img: list[int]
    scene_ids: list[int] | None = None

    @property
    def n_images(self) -> int:
        """Number of images in the split."""
        return len(self.image_paths)

    @property
    def n_texts(self) -> int:
        """Number of captions in the split."""
        return len(self.captions)

    def img2txt(self) -> list[list[int]]:
        """Caption indices of each image, in caption order."""
        groups: list[list[int]] = [[] for _ in self.image_paths]
        for text_index, image_index in enumerate(self.txt2img):
            groups[image_index].append(text_index)
        return groups


def read_json(path: Path, report: DataReport | None = None) -> Any:
    """Parse a JSON annotation file, with errors that name the file and position.

    Bytes that are not UTF-8 are an error, unless the policy is ``skip``: then they are kept
    as lone surrogates so only the captions holding them are dropped (and counted).
    """
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        if report is None or report.policy == "error":
            raise DataError(
                f"{path}: not valid UTF-8 at byte {exc.start} (line {line}): {exc.reason}"
            ) from None
        text = raw.decode("utf-8", errors="surrogateescape")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


class _BadEntry(Exception):
    """A schema violation inside one entry: raised or skipped according to the policy."""


def _require(cond: bool, path: Path, entry: str, message: str) -> None:
    """File-level schema check: always an error, no entry can be skipped."""
    if not cond:
        raise DataError(f"{path} [{entry}]: {message}")


def _check(cond: bool, message: str) -> None:
    """Entry-level schema check."""
    if not cond:
        raise _BadEntry(message)


def _clean_caption(raw: object) -> str | None:
    """The caption text, or None when it is not a non-empty string."""
    if not isinstance(raw, str):
        return None
    text = " ".join(raw.split())
    # Lone surrogates come from mis-decoded bytes; they would break tokenisers later.
    if not text or any("\ud800" <= ch <= "\udfff" for ch in text):
        return None
    return text


@dataclass
class _Entry:
    """One image and its captions, before bad-sample filtering."""

    where: str
    path: Path
    image_id: int
    captions: list[tuple[str, object]]  # (entry label, raw caption)
    scene_id: int | None = None


def _karpathy_entry(item: object, image_root: Path, seen_img: set[int],
                    seen_sent: set[int], filepath: str = "") -> tuple[str, _Entry]:
    """Validate one Karpathy ``images[]`` object; returns its split and entry.

    ``filepath`` is the folder under ``image_root`` for entries that carry none.
    """
    _check(isinstance(item, dict), "expected an object")
    assert isinstance(item, dict)
    for key, kind in (("filename", str), ("imgid", int), ("split", str), ("sentences", list)):
        _check(key in item, f"missing key {key!r}")
        _check(isinstance(item[key], kind), f"{key!r} must be {kind.__name__}")
    _check(isinstance(item.get("filepath", ""), str), "'filepath' must be str")
    imgid = item["imgid"]
    _check(imgid not in seen_img, f"duplicate imgid {imgid}")
    captions: list[tuple[str, object]] = []
    sentids = []
    for j, sentence in enumerate(item["sentences"]):
        _check(isinstance(sentence, dict) and "raw" in sentence,
               f"sentences[{j}] must be an object with 'raw'")
        sentid = sentence.get("sentid")
        _check(sentid is None or sentid not in seen_sent, f"duplicate sentid {sentid}")
        _check(sentence.get("imgid", imgid) == imgid,
               f"sentences[{j}] imgid {sentence.get('imgid')} != image imgid {imgid}")
        if sentid is not None:
            sentids.append(sentid)
        captions.append((f"sentences[{j}]", sentence["raw"]))
    seen_img.add(imgid)
    seen_sent.update(sentids)
    scene = item.get("scene_id")
    path = image_root / item.get("filepath", filepath) / item["filename"]
    return item["split"], _Entry("", path, imgid, captions,
                                 scene if isinstance(scene, int) else None)


def _karpathy_entries(path: Path, image_root: Path, splits: Iterable[str],
                      report: DataReport) -> list[_Entry]:
    data = read_json(path, report)
    _require(isinstance(data, dict), path, "top level", "expected an object with 'images'")
    images = data.get("images")
    _require(isinstance(images, list), path, "top level", "missing 'images' list")
    wanted = set(splits)
    dataset = data.get("dataset")
    filepath = IMPLICIT_FILEPATH.get(dataset, "") if isinstance(dataset, str) else ""
    entries: list[_Entry] = []
    seen_img: set[int] = set()
    seen_sent: set[int] = set()
    for i, item in enumerate(images):
        where = f"images[{i}]"
        try:
            split, entry = _karpathy_entry(item, image_root, seen_img, seen_sent, filepath)
        except _BadEntry as exc:
            report.flag(path, where, f"schema violation: {exc}")
            continue
        if split in wanted:
            entry.where = where
            entry.captions = [(f"{where}.{w}", raw) for w, raw in entry.captions]
            entries.append(entry)
    return entries


def _albef_entries(path: Path, image_root: Path, report: DataReport) -> list[_Entry]:
    data = read_json(path, report)
    _require(isinstance(data, list), path, "top level", "expected a list of {image, caption}")
    by_image: dict[str, _Entry] = {}
    for i, item in enumerate(data):
        where = f"[{i}]"
        try:
            _check(isinstance(item, dict), "expected an object")
            _check(isinstance(item.get("image"), str), "missing 'image' (str)")
            _check("caption" in item, "missing 'caption'")
        except _BadEntry as exc:
            report.flag(path, where, f"schema violation: {exc}")
            continue
        caption = item["caption"]
        # Test files list every caption of an image; train files repeat the image per caption.
        raws = caption if isinstance(caption, list) else [caption]
        entry = by_image.get(item["image"])
        if entry is None:
            entry = _Entry(where, image_root / item["image"], len(by_image), [])
            by_image[item["image"]] = entry
        entry.captions.extend((f"{where}.caption[{j}]", raw) for j, raw in enumerate(raws))
    return list(by_image.values())


def load_captions(
    annotation: Path,
    image_root: Path,
    split: str,
    *,
    name: str,
    fmt: str = "karpathy",
    report: DataReport | None = None,
    check_images: bool = True,
) -> CaptionCorpus:
    """Load one split; bad entries raise or are skipped and counted according to ``report``."""
    report = report or DataReport()
    if fmt == "karpathy":
        splits = SPLIT_ALIASES.get(split, (split,))
        entries = _karpathy_entries(annotation, image_root, splits, report)
    elif fmt == "albef":
        entries = _albef_entries(annotation, image_root, report)
    else:
        raise DataError(f"unknown annotation format {fmt!r}; valid formats: {', '.join(FORMATS)}")

    bad_images = find_bad_images([e.path for e in entries]) if check_images else {}
    corpus = CaptionCorpus(name, split, [], [], [], [], [])
    for index, entry in enumerate(entries):
        if index in bad_images:
            report.flag(entry.path, entry.where, bad_images[index])
            report.count("skipped_captions", len(entry.captions))
            continue
        texts = []
        for where, raw in entry.captions:
            text = _clean_caption(raw)
            if text is None:
                report.flag(annotation, where, f"empty or invalid caption: {raw!r:.60}")
                continue
            texts.append(text)
        if not texts:
            report.flag(annotation, entry.where, "image has no usable caption")
            continue
        image_index = len(corpus.image_paths)
        corpus.image_paths.append(entry.path)
        corpus.image_ids.append(entry.image_id)
        corpus.scene_ids.append(entry.scene_id if entry.scene_id is not None else -1)
        corpus.captions.extend(texts)
        corpus.txt2img.extend([image_index] * len(texts))
    report.count(f"{split}_images", corpus.n_images)
    report.count(f"{split}_captions", corpus.n_texts)
    if corpus.n_images == 0:
        raise DataError(f"{annotation}: split {split!r} has no usable images")
    if all(s < 0 for s in corpus.scene_ids or []):
        corpus = CaptionCorpus(corpus.name, split, corpus.image_paths, corpus.image_ids,
                               corpus.captions, corpus.txt2img, None)
    return corpus
