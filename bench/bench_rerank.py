"""Top-k re-ranking throughput: the batched re-ranker vs one query per forward (ALBEF/BLIP).

Run: ``python bench/bench_rerank.py [--size tiny|smoke] [--images 150] [--captions 2]
[--k-test K] [--batch-pairs P] [--repeats R] [--device cpu|cuda]``.

A random single-stream cross-encoder and a random gallery (N images, C captions each, caption
lengths 6-30 tokens padded to 40) with a random first stage. Unimodal features are computed
once and shared by every candidate, so only the re-ranking itself is timed:

(a) loop: for each image, then each text, one forward of its k_test candidates (ALBEF's
    ``evaluation``: k pairs per forward, each pair of both directions scored separately);
(b) batched: the same (N + N*C) * k pairs, ``batch_pairs`` per forward (queries mixed);
(c) rerank: what ``harness.eval.rerank`` does: candidates of both directions merged so each
    pair is scored once, sorted by caption length so each batch trims its padding, batched.

Throughput is *re-ranked pairs per second*: (N + N*C) * k query-candidate pairs over the time
to score them, so work a candidate avoids counts as speed. Candidates alternate within each
repeat; medians are reported. The scores of (a) and (c) are checked to agree.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

from baselines.single_stream import build_single_stream  # noqa: E402
from harness.eval.pair_scoring import default_batch_pairs, score_pair_list, sync  # noqa: E402
from harness.eval.rerank import stable_topk  # noqa: E402
from harness.interfaces import TokenFeatures  # noqa: E402

SIZES = {  # joint ViT kwargs and image size
    "tiny": ({"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2}, 32),
    "smoke": ({"img_size": 64, "patch_size": 16, "embed_dim": 96, "depth": 2, "num_heads": 3}, 64),
}
VOCAB, MAX_LEN = 500, 40


def make_gallery(n_img: int, caps: int, image_size: int, seed: int = 0
                 ) -> tuple[Tensor, dict[str, Tensor]]:
    """Random images and ``[CLS] words [SEP]`` captions of 6-30 tokens padded to 40."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_img, 3, image_size, image_size, generator=g)
    n_txt = n_img * caps
    lengths = torch.randint(6, 31, (n_txt,), generator=g)
    ids = torch.randint(5, VOCAB, (n_txt, MAX_LEN), generator=g)
    pos = torch.arange(MAX_LEN)[None, :]
    mask = (pos < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    ids[:, 0] = 2
    ids[torch.arange(n_txt), lengths - 1] = 3
    return images, {"input_ids": ids, "attention_mask": mask}


def loop_rerank(model, img: TokenFeatures, txt: TokenFeatures, cand_i2t: Tensor,
                cand_t2i: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """(a) One forward per query, as ALBEF/BLIP evaluate."""
    s_i2t = torch.stack([model.score_pairs(img.select(torch.full_like(c, q)).to(device),
                                           txt.select(c).to(device))
                         for q, c in enumerate(cand_i2t)])
    s_t2i = torch.stack([model.score_pairs(img.select(c).to(device),
                                           txt.select(torch.full_like(c, q)).to(device))
                         for q, c in enumerate(cand_t2i)])
    return s_i2t, s_t2i


def batched_rerank(model, img: TokenFeatures, txt: TokenFeatures, cand_i2t: Tensor,
                   cand_t2i: Tensor, device: torch.device, batch_pairs: int) -> None:
    """(b) Every query-candidate pair, ``batch_pairs`` per forward, in query order."""
    q_i = torch.arange(len(cand_i2t)).repeat_interleave(cand_i2t.shape[1])
    q_t = torch.arange(len(cand_t2i)).repeat_interleave(cand_t2i.shape[1])
    img_idx = torch.cat([q_i, cand_t2i.flatten()])
    txt_idx = torch.cat([cand_i2t.flatten(), q_t])
    for s in range(0, img_idx.numel(), batch_pairs):
        model.score_pairs(img.select(img_idx[s : s + batch_pairs]).to(device),
                          txt.select(txt_idx[s : s + batch_pairs]).to(device))


def pair_ids(cand_i2t: Tensor, cand_t2i: Tensor, n_txt: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pair ids (image * n_txt + text) wanted by each direction, and their sorted union."""
    pair_i2t = (torch.arange(len(cand_i2t))[:, None] * n_txt + cand_i2t).flatten()
    pair_t2i = (cand_t2i * n_txt + torch.arange(n_txt)[:, None]).flatten()
    return pair_i2t, pair_t2i, torch.unique(torch.cat([pair_i2t, pair_t2i]))


def harness_rerank(model, img: TokenFeatures, txt: TokenFeatures, cand_i2t: Tensor,
                   cand_t2i: Tensor, device: torch.device, batch_pairs: int
                   ) -> tuple[Tensor, Tensor]:
    """(c) The scoring part of ``cross_encoder_retrieval(mode="topk")``."""
    n_txt = len(txt)
    pair_i2t, pair_t2i, union = pair_ids(cand_i2t, cand_t2i, n_txt)
    scores = score_pair_list(model, img, txt, union // n_txt, union % n_txt,
                             batch_pairs=batch_pairs, device=device).cpu()
    return (scores[torch.searchsorted(union, pair_i2t)].view(cand_i2t.shape),
            scores[torch.searchsorted(union, pair_t2i)].view(cand_t2i.shape))


def main(argv: list[str] | None = None) -> None:
    """Time the three re-rankers side by side and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--images", type=int, default=150)
    p.add_argument("--captions", type=int, default=2)
    p.add_argument("--k-test", type=int, default=128)
    p.add_argument("--batch-pairs", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.batch_pairs is None:
        args.batch_pairs = default_batch_pairs(device)
    kwargs, image_size = SIZES[args.size]
    torch.manual_seed(0)
    model = build_single_stream({"image_size": image_size, "text_max_len": MAX_LEN,
                                 "joint": {"name": "vit_tiny_patch16_224", "kwargs": kwargs}},
                                vocab_size=VOCAB).to(device).eval()
    images, tokens = make_gallery(args.images, args.captions, image_size)
    with torch.inference_mode():
        img = model.image_features(images.to(device))
        txt = model.text_features({k: v.to(device) for k, v in tokens.items()})
    n_img, n_txt = len(img), len(txt)
    sims = torch.randn(n_img, n_txt, generator=torch.Generator().manual_seed(1))
    cand_i2t = stable_topk(sims, min(args.k_test, n_txt))
    cand_t2i = stable_topk(sims.T, min(args.k_test, n_img))
    work = cand_i2t.numel() + cand_t2i.numel()
    runs = {
        "(a) loop, 1 query/forward": lambda: loop_rerank(model, img, txt, cand_i2t, cand_t2i,
                                                          device),
        f"(b) batched, {args.batch_pairs} pairs/forward": lambda: batched_rerank(
            model, img, txt, cand_i2t, cand_t2i, device, args.batch_pairs),
        "(c) rerank.py (dedup+length+batch)": lambda: harness_rerank(
            model, img, txt, cand_i2t, cand_t2i, device, args.batch_pairs),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {}
    with torch.inference_mode():
        for name, fn in runs.items():  # warm-up
            outputs[name] = fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
    a, c = outputs["(a) loop, 1 query/forward"], outputs["(c) rerank.py (dedup+length+batch)"]
    diff = max(float((x.cpu() - y).abs().max()) for x, y in zip(a, c))
    threads = torch.get_num_threads()
    print(f"# {args.size} cross-encoder, {n_img} images x {n_txt} texts, k_test={args.k_test}, "
          f"{work:,} query-candidate pairs, device={device}, threads={threads}, "
          f"medians of {args.repeats}")
    unique = pair_ids(cand_i2t, cand_t2i, n_txt)[2].numel()
    print(f"# {unique:,} unique pairs once both directions are merged; batch_pairs="
          f"{args.batch_pairs}; max |score (a) - score (c)| = {diff:.2e}")
    base = statistics.median(times["(a) loop, 1 query/forward"])
    print(f"{'re-ranker':40s} {'median s':>10s} {'pairs/s':>12s} {'vs loop':>8s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:40s} {med:10.3f} {work / med:12,.0f} {base / med:7.2f}x")


if __name__ == "__main__":
    main()
