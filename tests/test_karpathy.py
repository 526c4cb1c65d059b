"""The caption data layer: public schemas load; every kind of bad input is named or counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from harness.data.karpathy import load_captions
from harness.data.report import DataError, DataReport


def _image(path: Path, colour: str = "red") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path, "JPEG")


def _sentence(raw: str, imgid: int, sentid: int) -> dict:
    """One ``sentences[]`` object, keys in the order of the public files."""
    return {"tokens": raw.lower().rstrip(".").split(), "raw": raw, "imgid": imgid,
            "sentid": sentid}


def _sentences(n: int, imgid: int, first_sentid: int) -> list[dict]:
    return [_sentence(f"A dog runs number {first_sentid + k}.", imgid, first_sentid + k)
            for k in range(n)]


def _karpathy(root: Path, n_caps=(5, 7, 1), splits=("test", "test", "test")) -> Path:
    """``dataset_flickr30k.json`` as distributed: no ``filepath``, no ``cocoid``; the images
    where the README puts them (``<root>/images/flickr30k-images/<filename>``)."""
    images, sentid = [], 0
    for imgid, (n, split) in enumerate(zip(n_caps, splits)):
        name = f"{1000 + imgid}.jpg"
        _image(root / "images" / "flickr30k-images" / name)
        sents = _sentences(n, imgid, sentid)
        sentid += n
        images.append({"sentids": [s["sentid"] for s in sents], "imgid": imgid,
                       "sentences": sents, "split": split, "filename": name})
    path = root / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path


def _coco(root: Path, splits=("train", "restval", "val", "test")) -> Path:
    """``dataset_coco.json`` as distributed: ``filepath`` (train2014/val2014) and ``cocoid``."""
    images, sentid = [], 0
    for imgid, split in enumerate(splits):
        folder = "train2014" if split == "train" else "val2014"
        cocoid = 391895 + imgid
        name = f"COCO_{folder}_{cocoid:012d}.jpg"
        _image(root / "images" / folder / name)
        n = 6 if imgid == 0 else 5  # a few COCO images have more than five captions
        sents = _sentences(n, imgid, sentid)
        sentid += n
        images.append({"filepath": folder, "sentids": [s["sentid"] for s in sents],
                       "filename": name, "imgid": imgid, "split": split, "sentences": sents,
                       "cocoid": cocoid})
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def _flickr_dir(root: Path) -> Path:
    return root / "images" / "flickr30k-images"


def _load_root(root: Path) -> Path:
    return root / "images"


def _load(path: Path, root: Path, split="test", policy="error", fmt="karpathy"):
    report = DataReport(policy)
    corpus = load_captions(path, root, split, name="flickr30k", fmt=fmt, report=report)
    return corpus, report


def test_karpathy_schema_any_caption_count(tmp_path):
    corpus, _ = _load(_karpathy(tmp_path), _load_root(tmp_path))
    assert corpus.n_images == 3 and corpus.n_texts == 13
    assert corpus.txt2img == [0] * 5 + [1] * 7 + [2]
    assert corpus.img2txt()[2] == [12]
    assert corpus.image_paths[1] == _flickr_dir(tmp_path) / "1001.jpg"


def test_flickr30k_as_distributed_loads_with_the_config_default(tmp_path, monkeypatch):
    # The README layout, configs/data/flickr30k.yaml and the loader must agree although the
    # public file has no filepath; ALBEF's file names the same images from the same root.
    from harness.config import compose

    monkeypatch.setenv("HARNESS_DATA", str(tmp_path))
    path = _karpathy(tmp_path / "flickr30k")
    data = compose(["data=flickr30k"]).data
    assert Path(data.annotation) == path
    corpus = load_captions(path, Path(data.image_root), "test", name="flickr30k")
    assert corpus.n_images == 3 and all(p.is_file() for p in corpus.image_paths)
    albef = tmp_path / "flickr30k" / "flickr30k_test.json"
    albef.write_text(json.dumps([{"image": f"flickr30k-images/{1000 + i}.jpg",
                                  "caption": ["a dog runs.", "a dog sits."]} for i in range(3)]))
    corpus = load_captions(albef, Path(data.image_root), "test", name="flickr30k", fmt="albef")
    assert corpus.n_images == 3 and corpus.n_texts == 6


def test_coco_as_distributed_loads_with_the_config_default(tmp_path, monkeypatch):
    from harness.config import compose

    monkeypatch.setenv("HARNESS_DATA", str(tmp_path))
    path = _coco(tmp_path / "coco")
    data = compose(["data=coco"]).data
    assert Path(data.annotation) == path
    train = load_captions(path, Path(data.image_root), "train", name="coco")
    assert train.n_images == 2 and train.n_texts == 11  # restval counts as train
    assert train.image_paths[0].parent.name == "train2014"
    assert train.image_paths[1].parent.name == "val2014"
    test = load_captions(path, Path(data.image_root), "test", name="coco")
    assert test.image_ids == [3] and test.n_texts == 5


def test_albef_schema_test_and_train_files(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        _image(tmp_path / "imgs" / name)
    test_file = tmp_path / "flickr30k_test.json"
    test_file.write_text(json.dumps([{"image": "imgs/a.jpg", "caption": ["one", "two", "three"]},
                                     {"image": "imgs/b.jpg", "caption": ["four"]}]))
    corpus, _ = _load(test_file, tmp_path, fmt="albef")
    assert corpus.txt2img == [0, 0, 0, 1]
    train_file = tmp_path / "flickr30k_train.json"
    train_file.write_text(json.dumps([{"image": "imgs/a.jpg", "caption": "one", "image_id": "0"},
                                      {"image": "imgs/a.jpg", "caption": "two", "image_id": "0"},
                                      {"image": "imgs/b.jpg", "caption": "six", "image_id": "1"}]))
    corpus, _ = _load(train_file, tmp_path, fmt="albef")
    assert corpus.txt2img == [0, 0, 1] and corpus.captions == ["one", "two", "six"]


def _mutate(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("case, needle", [
    ("missing_image", "missing image file"),
    ("corrupt_image", "corrupt image file"),
    ("empty_caption", "empty or invalid caption"),
    ("missing_key", "missing key 'filename'"),
    ("duplicate_imgid", "duplicate imgid"),
    ("duplicate_sentid", "duplicate sentid"),
])
def test_bad_entries_error_names_place_or_skip_counts(tmp_path, case, needle):
    path = _karpathy(tmp_path)
    if case == "missing_image":
        (_flickr_dir(tmp_path) / "1001.jpg").unlink()
    elif case == "corrupt_image":
        (_flickr_dir(tmp_path) / "1001.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    elif case == "empty_caption":
        _mutate(path, lambda d: d["images"][1]["sentences"][3].update(raw="   "))
    elif case == "missing_key":
        _mutate(path, lambda d: d["images"][1].pop("filename"))
    elif case == "duplicate_imgid":
        _mutate(path, lambda d: d["images"][1].update(imgid=0))
    elif case == "duplicate_sentid":
        _mutate(path, lambda d: d["images"][1]["sentences"][0].update(sentid=0))
    with pytest.raises(DataError) as err:
        _load(path, _load_root(tmp_path))
    assert needle in str(err.value)
    assert ("1001.jpg" in str(err.value)) or ("images[1]" in str(err.value))
    corpus, report = _load(path, _load_root(tmp_path), policy="skip")
    assert len(report.problems) == 1 and needle in str(report.problems[0])
    lost = 1 if case == "empty_caption" else 7
    assert corpus.n_texts == 13 - lost
    assert report.summary()["n_skipped"] == 1


def test_non_utf8_caption(tmp_path):
    path = _karpathy(tmp_path)
    raw = path.read_bytes().replace(b"number 6.", b"number \xff6.")
    path.write_bytes(raw)
    with pytest.raises(DataError, match=r"not valid UTF-8 at byte \d+"):
        _load(path, _load_root(tmp_path))
    corpus, report = _load(path, _load_root(tmp_path), policy="skip")
    assert corpus.n_texts == 12 and "images[1].sentences[1]" in str(report.problems[0])


def test_malformed_json_names_line(tmp_path):
    path = tmp_path / "dataset_coco.json"
    path.write_text('{"images": [\n {"filename": "a.jpg",,}]}')
    with pytest.raises(DataError, match=r"dataset_coco.json: malformed JSON at line 2"):
        _load(path, _load_root(tmp_path), policy="skip")


def test_schema_violation_at_top_level(tmp_path):
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"imgs": []}))
    with pytest.raises(DataError, match="missing 'images' list"):
        _load(path, _load_root(tmp_path))


def test_empty_split_is_an_error_even_when_skipping(tmp_path):
    path = _karpathy(tmp_path)
    with pytest.raises(DataError, match="split 'val' has no usable images"):
        _load(path, _load_root(tmp_path), split="val", policy="skip")


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        _load(tmp_path / "nope.json", tmp_path)


def test_report_written_as_json(tmp_path):
    path = _karpathy(tmp_path)
    (_flickr_dir(tmp_path) / "1000.jpg").unlink()
    _, report = _load(path, _load_root(tmp_path), policy="skip")
    report.write(tmp_path / "run" / "data_report.json")
    saved = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert saved["n_skipped"] == 1 and saved["counts"]["test_images"] == 2
    assert saved["counts"]["skipped_captions"] == 5
