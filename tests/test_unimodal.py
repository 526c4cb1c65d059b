"""Unimodal retrieval: caption->caption (same image) and image->image (same scene)."""

from __future__ import annotations

import pytest
import torch

from harness.eval.unimodal import unimodal_metrics

KS = (1, 2, 3)

# Five captions, two per image for images 0 and 1, one for image 2 (skipped as a query).
TXT = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.9, 0.4], [0.0, 1.0], [0.6, 0.8]])
TXT2IMG = torch.tensor([0, 0, 1, 1, 2])
# Hand ranks (query excluded from the gallery):
#   t0: positive t1 0.8, ahead t2 0.9                      -> 2
#   t1: positive t0 0.8, ahead t2 0.96, t4 0.96            -> 3
#   t2: positive t3 0.4, ahead t0 0.9, t1 0.96, t4 0.86    -> 4
#   t3: positive t2 0.4, ahead t1 0.6, t4 0.8              -> 3
# Five images: scene 7 twice, scene 5 once, two of unknown scene (-1).
IMG = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.5, 0.5], [0.0, 1.0], [0.6, 0.0]])
SCENES = torch.tensor([7, 7, 5, -1, -1])
#   i0: positive i1 0.5, ahead i2 0.5 (tie, lower index wins: i1), i4 0.6 -> 2
#   i1: positive i0 0.5, tie with i2 0.5 and i3 0.5 at higher indices      -> 1


def test_hand_case_both_directions():
    m = unimodal_metrics(IMG, TXT, TXT2IMG, SCENES, ks=KS)
    assert m["t2t_queries"] == 4 and m["t2t_skipped"] == 1
    assert m["t2t_R@1"] == 0.0 and m["t2t_R@2"] == 25.0 and m["t2t_R@3"] == 75.0
    assert m["t2t_medr"] == 3.0 and m["t2t_meanr"] == 3.0
    # Unknown scenes are not each other's positives: i3 and i4 are skipped, like i2.
    assert m["i2i_queries"] == 2 and m["i2i_skipped"] == 3
    assert m["i2i_R@1"] == 50.0 and m["i2i_R@2"] == 100.0
    assert m["i2i_medr"] == 1.5 and m["i2i_meanr"] == 1.5


def test_no_scene_ids_means_no_image_metrics():
    m = unimodal_metrics(IMG, TXT, TXT2IMG, None, ks=KS)
    assert not [k for k in m if k.startswith("i2i_")] and "t2t_R@1" in m


def test_every_query_skipped_gives_counts_only():
    m = unimodal_metrics(IMG[:3], TXT[:3], torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3]), ks=KS)
    assert m == {"t2t_queries": 0.0, "t2t_skipped": 3.0, "i2i_queries": 0.0, "i2i_skipped": 3.0}


def test_length_mismatches_are_clear_errors():
    with pytest.raises(ValueError, match="txt2img has 4 entries"):
        unimodal_metrics(IMG, TXT, TXT2IMG[:4], None)
    with pytest.raises(ValueError, match="scene_ids has 2 entries"):
        unimodal_metrics(IMG, TXT, TXT2IMG, SCENES[:2])
