"""The embedded synthetic dataset: determinism, Karpathy schema, truthful captions, hard
negatives, WebDataset shards, and the generate-once / atomic-replace behaviour."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from harness.data.synthetic import build as synthetic
from harness.data.synthetic import ensure_synthetic, generate
from harness.data.synthetic.captions import SHAPE_WORDS, SIZE_WORDS
from harness.data.synthetic.scenes import COLOURS

SMALL = {"n_images": 60, "pretrain_pairs": 40, "shard_size": 16}
SHAPE_OF = {word: shape for shape, words in SHAPE_WORDS.items() for w in words
            for word in w.split()}
SIZE_OF = {word: size for size, words in SIZE_WORDS.items() for word in words}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small dataset shared by the read-only tests."""
    root = tmp_path_factory.mktemp("syn") / "data"
    generate(root, **SMALL)
    return root


@pytest.fixture(scope="module")
def images(dataset: Path) -> list[dict]:
    """The ``images`` list of the annotation file."""
    return json.loads((dataset / "dataset_synthetic.json").read_text())["images"]


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# --- determinism ---------------------------------------------------------------------------

def test_same_seed_gives_identical_bytes(dataset: Path, tmp_path: Path) -> None:
    generate(tmp_path / "again", **SMALL)
    first, second = _files(dataset), _files(tmp_path / "again")
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []
    assert ".complete.json" in first and "pretrain/manifest.tsv" in first


def test_different_seed_gives_different_data(dataset: Path, tmp_path: Path) -> None:
    generate(tmp_path / "other", seed=1, **SMALL)
    first, second = _files(dataset), _files(tmp_path / "other")
    assert first["dataset_synthetic.json"] != second["dataset_synthetic.json"]
    assert first["images/000000.jpg"] != second["images/000000.jpg"]
    assert first["pretrain/manifest.tsv"] != second["pretrain/manifest.tsv"]


# --- Karpathy schema -----------------------------------------------------------------------

def test_annotation_schema(dataset: Path) -> None:
    data = json.loads((dataset / "dataset_synthetic.json").read_text())
    assert data["dataset"] == "synthetic" and len(data["images"]) == SMALL["n_images"]
    sentids, imgids = [], []
    for image in data["images"]:
        for key, kind in (("filepath", str), ("filename", str), ("imgid", int), ("split", str),
                          ("sentids", list), ("sentences", list), ("scene_id", int),
                          ("scene", str)):
            assert isinstance(image[key], kind), key
        assert image["split"] in ("train", "val", "test")
        assert len(image["sentences"]) == 5
        assert image["sentids"] == [s["sentid"] for s in image["sentences"]]
        for sentence in image["sentences"]:
            assert set(sentence) == {"raw", "tokens", "imgid", "sentid"}
            assert sentence["imgid"] == image["imgid"] and isinstance(sentence["sentid"], int)
            assert sentence["raw"].strip()
            assert sentence["tokens"] == re.findall(r"[a-z0-9]+", sentence["raw"].lower())
        imgids.append(image["imgid"])
        sentids.extend(image["sentids"])
    assert len(set(imgids)) == len(imgids) and len(set(sentids)) == len(sentids)
    assert set(Counter(image["split"] for image in data["images"])) == {"train", "val", "test"}


def test_splits_are_by_scene_and_family(images: list[dict]) -> None:
    split_of: dict[tuple[str, int], str] = {}
    for image in images:
        for key in (("scene", image["scene_id"]), ("family", image["family"])):
            assert split_of.setdefault(key, image["split"]) == image["split"]
    renders = Counter(image["scene_id"] for image in images)
    assert max(renders.values()) == 2 and len(renders) == 30
    same_scene = {}
    for image in images:
        assert same_scene.setdefault(image["scene_id"], image["scene"]) == image["scene"]


def test_images_are_jpegs_of_the_right_size(dataset: Path, images: list[dict]) -> None:
    for image in images:
        path = dataset / image["filepath"] / image["filename"]
        with Image.open(path) as decoded:
            assert decoded.format == "JPEG" and decoded.size == (64, 64)
            decoded.load()


# --- captions are true of the pixels --------------------------------------------------------

def _objects_by_word(image: dict) -> dict[str, int]:
    """Colour and shape words of this image's objects -> object index."""
    index = {}
    for k, obj in enumerate(image["objects"]):
        index[obj["colour"]] = k
        for word, shape in SHAPE_OF.items():
            if shape == obj["shape"]:
                index[word] = k
    return index


def _is_name(token: str) -> bool:
    """Whether a token names an object (a colour or a shape word)."""
    return token in COLOURS or token in SHAPE_OF


def _referent(tokens: list[str], start: int, step: int, names: dict[str, int]) -> int | None:
    """Object named by the nearest colour/shape word from ``start`` going ``step``."""
    t = start
    while 0 <= t < len(tokens):
        if _is_name(tokens[t]):
            assert tokens[t] in names, f"{tokens[t]!r} names no object of this image"
            return names[tokens[t]]
        t += step
    return None


def _cell(bbox: list[float], size: int = 64) -> tuple[int, int]:
    """Layout cell (row, col) of a box's centre."""
    return (int((bbox[1] + bbox[3]) / 2 // (size / 3)), int((bbox[0] + bbox[2]) / 2 // (size / 3)))


RELATIONS = {"left": "left", "right": "right", "above": "above", "over": "above",
             "higher": "above", "below": "below", "under": "below", "beneath": "below",
             "lower": "below", "bigger": "bigger", "larger": "bigger", "smaller": "smaller"}
PLACES = {("top", "left", "corner"): (0, 0), ("top", "right", "corner"): (0, 2),
          ("bottom", "left", "corner"): (2, 0), ("bottom", "right", "corner"): (2, 2),
          ("at", "the", "top"): (0, 1), ("near", "the", "top"): (0, 1),
          ("at", "the", "bottom"): (2, 1), ("near", "the", "bottom"): (2, 1),
          ("on", "the", "left"): (1, 0), ("on", "the", "right"): (1, 2),
          ("in", "the", "center"): (1, 1), ("in", "the", "middle"): (1, 1)}


def _holds(relation: str, a: dict, b: dict) -> bool:
    """Whether object a stands in ``relation`` to object b."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["bbox"], b["bbox"]
    return {"left": ax1 <= bx0, "right": ax0 >= bx1, "above": ay1 <= by0, "below": ay0 >= by1,
            "bigger": a["size"] == "large" and b["size"] == "small",
            "smaller": a["size"] == "small" and b["size"] == "large"}[relation]


def _check_caption(tokens: list[str], objects: list[dict], names: dict[str, int]) -> int:
    """Assert every checkable claim of one caption; returns how many claims were checked."""
    checked = 0
    for t, token in enumerate(tokens):
        nxt = tokens[t + 1] if t + 1 < len(tokens) else ""
        if token in RELATIONS and (token not in ("left", "right") or nxt == "of"):
            if token in ("higher", "lower", "bigger", "larger", "smaller"):
                assert nxt == "than"
            a, b = _referent(tokens, t, -1, names), _referent(tokens, t + 1, 1, names)
            assert a is not None and b is not None and a != b
            assert _holds(RELATIONS[token], objects[a], objects[b]), (tokens, objects)
            checked += 1
        if token in COLOURS and nxt in SHAPE_OF:  # attribute binding inside a noun phrase
            assert objects[names[token]]["shape"] == SHAPE_OF[nxt]
            checked += 1
        if token in SIZE_OF and t == len(tokens) - 1:  # "... are both small", "... are all big"
            assert all(obj["size"] == SIZE_OF[token] for obj in objects)
            checked += 1
        elif token in SIZE_OF:  # a size adjective of the noun phrase it starts
            assert objects[_referent(tokens, t, 1, names)]["size"] == SIZE_OF[token]
            checked += 1
        cell = PLACES.get(tuple(tokens[t:t + 3]))
        if cell is not None and tuple(tokens[t + 3:t + 4]) != ("of",):
            k = _referent(tokens, t - 1, -1, names)
            k = _referent(tokens, t + 3, 1, names) if k is None else k
            assert _cell(objects[k]["bbox"]) == cell, (tokens, objects)
            checked += 1
    return checked


def test_captions_are_true_of_the_objects(images: list[dict]) -> None:
    claims = 0
    for image in images:
        names = _objects_by_word(image)
        for sentence in image["sentences"]:
            claims += _check_caption(sentence["tokens"], image["objects"], names)
    assert claims > 10 * len(images)


def test_objects_are_drawn_where_the_annotation_says(dataset: Path, images: list[dict]) -> None:
    for image in images:
        with Image.open(dataset / "images" / image["filename"]) as decoded:
            pixels = decoded.convert("RGB")
        for obj in image["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            rgb = pixels.getpixel((int((x0 + x1) / 2), int((y0 + y1) / 2)))
            nearest = min(COLOURS, key=lambda c: sum((p - q) ** 2 for p, q in
                                                     zip(rgb, COLOURS[c])))
            assert nearest == obj["colour"], (image["filename"], obj, rgb)


def test_captions_are_varied(images: list[dict]) -> None:
    raws = [s["raw"] for image in images for s in image["sentences"]]
    words = Counter(token for image in images for s in image["sentences"] for token in s["tokens"])
    assert len(set(raws)) > 0.8 * len(raws)
    for synonyms in (("square", "box", "block"), ("circle", "disc", "ball"),
                     ("large", "big"), ("small", "little", "tiny"),
                     ("left", "right", "above", "below")):
        assert sum(words[w] > 0 for w in synonyms) >= 2, synonyms
    mentioned = [len({_referent(s["tokens"], t, 1, _objects_by_word(image))
                      for t in range(len(s["tokens"])) if _is_name(s["tokens"][t])})
                 for image in images for s in image["sentences"] if len(image["objects"]) == 3]
    assert min(mentioned) < 3 and max(mentioned) == 3  # some captions name only a subset


# --- compositional hard negatives -----------------------------------------------------------

def _bag(text: str) -> list[str]:
    """Sorted words of a text."""
    return sorted(re.findall(r"[a-z]+", text.lower()))


def test_hard_negative_scenes_are_attribute_or_position_swaps(images: list[dict]) -> None:
    scenes = {image["scene_id"]: image for image in images}
    swaps = [s for s in scenes.values() if s["swap"] != "base"]
    assert len(swaps) >= 0.25 * len(scenes)
    for swap in swaps:
        base = [s for s in scenes.values() if s["family"] == swap["family"] and s["swap"] == "base"]
        assert len(base) == 1 and base[0]["split"] == swap["split"]
        assert base[0]["scene"] != swap["scene"] and _bag(base[0]["scene"]) == _bag(swap["scene"])


def test_hard_negative_captions_share_every_word(images: list[dict]) -> None:
    by_bag: dict[tuple[str, tuple[str, ...]], set[tuple[int, str]]] = {}
    for image in images:
        for sentence in image["sentences"]:
            key = (image["split"], tuple(sorted(sentence["tokens"])))
            by_bag.setdefault(key, set()).add((image["scene_id"], sentence["raw"]))
    # Same split, same bag of words, different scenes, different word order or binding.
    confusable = [group for group in by_bag.values()
                  if len({scene for scene, _ in group}) > 1 and len({raw for _, raw in group}) > 1]
    relational = [group for group in confusable
                  if any(w in raw.lower() for _, raw in group for w in (" of ", "than", "above",
                                                                          "below", "over"))]
    assert len(relational) >= 5


# --- pretraining corpus ---------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_webdataset_shards_match_the_manifest(dataset: Path, images: list[dict]) -> None:
    import webdataset as wds

    shards = sorted((dataset / "pretrain" / "shards").glob("pretrain-*.tar"))
    assert [p.name for p in shards] == [f"pretrain-{k:06d}.tar" for k in range(3)]
    samples = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False))
    with open(dataset / "pretrain" / "manifest.tsv", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert rows[0] == ["image", "caption"] and len(rows) - 1 == len(samples) == 40
    karpathy_scenes = {image["scene_id"] for image in images}
    for sample, (image_path, caption) in zip(samples, rows[1:]):
        assert image_path == f"images/{sample['__key__']}.jpg"
        assert sample["txt"].decode() == caption
        assert (dataset / "pretrain" / image_path).read_bytes() == sample["jpg"]
        meta = json.loads(sample["json"])
        assert set(meta) == {"noisy", "scene_id"} and isinstance(meta["noisy"], bool)
        assert meta["scene_id"] not in karpathy_scenes
        with Image.open(io.BytesIO(sample["jpg"])) as decoded:
            assert decoded.size == (64, 64)


def test_tar_members_are_normalised(dataset: Path) -> None:
    with tarfile.open(dataset / "pretrain" / "shards" / "pretrain-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert len(members) == 3 * 16
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o644)}


def _noisy_flags(root: Path) -> list[bool]:
    """The ``noisy`` flag of every pretraining pair, in shard order."""
    flags = []
    for shard in sorted((root / "pretrain" / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    flags.append(json.loads(tar.extractfile(member).read())["noisy"])
    return flags


def test_noise_fraction_is_respected(dataset: Path, tmp_path: Path) -> None:
    assert sum(_noisy_flags(dataset)) == 8  # 20% of 40
    generate(tmp_path / "noisy", n_images=30, pretrain_pairs=50, noise_fraction=0.5)
    flags = _noisy_flags(tmp_path / "noisy")
    assert len(flags) == 50 and sum(flags) == 25
    generate(tmp_path / "clean", n_images=30, pretrain_pairs=50, noise_fraction=0.0)
    assert not any(_noisy_flags(tmp_path / "clean"))


# --- generate once, atomically --------------------------------------------------------------

def test_ensure_skips_a_complete_dataset_and_rebuilds_on_new_parameters(tmp_path: Path) -> None:
    root = tmp_path / "data"
    annotation = ensure_synthetic(root, n_images=30, pretrain_pairs=10)
    before = annotation.stat()
    assert ensure_synthetic(root, n_images=30, pretrain_pairs=10) == annotation
    after = annotation.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    old = annotation.read_bytes()
    ensure_synthetic(root, n_images=30, pretrain_pairs=10, seed=3)
    assert annotation.read_bytes() != old
    assert json.loads((root / ".complete.json").read_text())["params"]["seed"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary siblings left


def test_a_failed_build_leaves_the_old_dataset_intact(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    ensure_synthetic(root, n_images=30, pretrain_pairs=10)
    old = _files(root)

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_pretrain", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(root, n_images=30, pretrain_pairs=10, seed=5)
    assert _files(root) == old
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_stale_builds_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".data.{kind}-{synthetic._host_tag()}-{dead.pid}"
             for kind in ("tmp", "old")]
    for path in stale:
        (path / "images").mkdir(parents=True)
    ensure_synthetic(tmp_path / "data", n_images=30, pretrain_pairs=0)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    assert not list((tmp_path / "data" / "pretrain" / "shards").iterdir())


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no .complete.json"):
        ensure_synthetic(tmp_path, n_images=30)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("bad", [{"n_images": 5}, {"noise_fraction": 1.5}, {"shard_size": 0},
                                 {"seed": -1}, {"pretrain_pairs": -2}])
def test_bad_parameters_are_rejected(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError, match="synthetic"):
        generate(tmp_path / "data", **bad)
    assert not (tmp_path / "data").exists()


def test_cli_prints_one_summary_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--out", str(tmp_path / "d"), "--images", "30", "--pretrain-pairs", "10",
            "--shard-size", "4"]
    assert synthetic.main(argv) == 0
    first = capsys.readouterr().out.splitlines()
    assert len(first) == 1 and "30 images" in first[0] and "3 shards" in first[0]
    assert synthetic.main(argv) == 0
    assert "already complete" in capsys.readouterr().out
