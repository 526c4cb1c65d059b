"""Evaluation features: sharding covers every item once; the disk cache is keyed and reused."""

from __future__ import annotations

import torch

from harness.eval.features import cached_embeddings, feature_key, shard_bounds


def test_shards_cover_every_item_exactly_once():
    for n in (0, 1, 7, 10, 25_010):
        for world in (1, 2, 3, 8):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_cache_hit_returns_stored_embeddings_and_key_tracks_inputs(tmp_path):
    ckpt = tmp_path / "latest.pt"
    torch.save({"w": torch.ones(3)}, ckpt)
    pre = {"image_size": 64, "mean": [0.5] * 3}
    key = feature_key(ckpt, "synthetic", "test", pre)
    assert key == feature_key(ckpt, "synthetic", "test", dict(pre))
    assert key != feature_key(ckpt, "synthetic", "val", pre)
    assert key != feature_key(ckpt, "synthetic", "test", {**pre, "image_size": 96})
    calls = []

    def compute():
        calls.append(1)
        return torch.randn(4, 8), torch.randn(9, 8)

    img, txt, hit = cached_embeddings(tmp_path / "cache", key, compute)
    assert not hit and len(calls) == 1
    img2, txt2, hit2 = cached_embeddings(tmp_path / "cache", key, compute)
    assert hit2 and len(calls) == 1 and torch.equal(img, img2) and torch.equal(txt, txt2)
    torch.save({"w": torch.zeros(3)}, ckpt)  # a new checkpoint is a new key
    assert feature_key(ckpt, "synthetic", "test", pre) != key
