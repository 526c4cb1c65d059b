"""What per-query records and bootstrap intervals add to a retrieval eval at COCO-5K size.

Run: ``python bench/bench_bootstrap.py [--repeats N] [--samples S] [--dim D]``.

In one process, alternating within every repeat (medians reported):

(a) eval: random L2-normalised embeddings (5,000 images x 25,000 captions) through the
    harness's ranking and metrics (``retrieval_ranks_from_embeddings``, ``metrics_from_ranks``);
(b) what an eval stage adds on top: ``record_per_query`` on those ranks, i.e. writing
    ``ranks.npz`` and the bootstrap intervals of every metric (``--samples`` resamples).

Prints both times and their ratio (the target is under 5 %). Thread counts are left at the
library defaults. Encoding the images and captions, which a real eval stage also does, is
not counted: the ratio is an upper bound on the overhead of a whole stage.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

from harness.eval.retrieval import (  # noqa: E402
    metrics_from_ranks,
    record_per_query,
    retrieval_ranks_from_embeddings,
)

N_IMAGES, CAPTIONS_PER_IMAGE = 5000, 5


def _embeddings(dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(N_IMAGES, dim, generator=g), dim=1)
    txt = torch.nn.functional.normalize(
        torch.randn(N_IMAGES * CAPTIONS_PER_IMAGE, dim, generator=g), dim=1)
    return img, txt, torch.arange(N_IMAGES).repeat_interleave(CAPTIONS_PER_IMAGE)


def main() -> None:
    """Time the eval and the per-query record side by side; print the medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=256)
    args = parser.parse_args()
    img, txt, txt2img = _embeddings(args.dim)
    eval_s, record_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            i2t, t2i = retrieval_ranks_from_embeddings(img, txt, txt2img)
            metrics_from_ranks(i2t, t2i)
            t1 = time.perf_counter()
            record_per_query(Path(tmp), {"i2t": i2t, "t2i": t2i}, {"samples": args.samples})
            t2 = time.perf_counter()
            eval_s.append(t1 - t0)
            record_s.append(t2 - t1)
    e, r = statistics.median(eval_s), statistics.median(record_s)
    print(f"{N_IMAGES} images x {len(txt2img)} captions, dim {args.dim}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats (medians)")
    print(f"eval (ranking + metrics):              {e:8.3f} s")
    print(f"ranks.npz + intervals ({args.samples} resamples): {r:8.3f} s")
    print(f"ratio: {100 * r / e:.2f} % of the eval (target < 5 %)")


if __name__ == "__main__":
    main()
