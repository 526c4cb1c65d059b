"""Loader start-up tax of an eval stage: image encoding in a spawned stage process, with the
loader workers forked (``worker_context``) vs started by the inherited "spawn" method.

Run: ``python bench/bench_loaders.py [--runs N] [--workers W] [--images N]``. A small
embedded dataset is generated in a temporary directory; each run starts one fresh spawned
process per candidate (as ``cluster.workers=2`` runs a stage) and times ``encode_images``
over the test split with a stub model, so the time is loading and decoding, not the model.
Candidates alternate within every run; each ratio comes from one run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout


def _encode_seconds(root: str, workers: int, fork: bool) -> float:
    """In a spawned process: seconds to encode the test split's images (stub model)."""
    import torch

    import harness.data.loaders as loaders
    import harness.eval.features as features
    from harness.data.karpathy import load_captions
    from harness.data.transforms import build_transform

    if not fork:
        features.worker_context = lambda n: None  # the inherited start method: spawn
    corpus = load_captions(Path(root) / "dataset_synthetic.json", Path(root), "test",
                           name="synthetic", check_images=False)
    transform = build_transform(64, None, train=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    class Stub(torch.nn.Module):
        def encode_image(self, images: torch.Tensor) -> torch.Tensor:
            return images.flatten(1)[:, :8]

    assert loaders.worker_context(workers) is not None or not fork
    t0 = time.perf_counter()
    features.encode_images(Stub(), corpus, transform, batch_size=64,
                           device=torch.device("cpu"), num_workers=workers)
    return time.perf_counter() - t0


def _child(queue: multiprocessing.Queue, root: str, workers: int, fork: bool) -> None:
    queue.put(_encode_seconds(root, workers, fork))


def _in_spawned_process(spawn: multiprocessing.context.BaseContext, root: str, workers: int,
                        fork: bool) -> float:
    """One fresh spawned (non-daemonic: it starts workers) process; its encode seconds."""
    queue = spawn.Queue()
    proc = spawn.Process(target=_child, args=(queue, root, workers, fork))
    proc.start()
    seconds = queue.get()
    proc.join()
    return seconds


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="loader workers (synthetic: 2)")
    parser.add_argument("--images", type=int, default=1500, help="dataset size (test: 10 %%)")
    args = parser.parse_args()
    from harness.data.synthetic import generate

    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), n_images=args.images, seed=0, image_size=64)
        print(f"encode_images over the test split of {args.images} synthetic images, "
              f"{args.workers} loader workers, inside a spawned stage process")
        print(f"{'run':>3s} {'spawned workers s':>18s} {'forked workers s':>17s} {'ratio':>6s}")
        for run in range(args.runs):
            order = (False, True) if run % 2 == 0 else (True, False)
            got = {fork: _in_spawned_process(spawn, tmp, args.workers, fork) for fork in order}
            print(f"{run + 1:3d} {got[False]:18.2f} {got[True]:17.2f} "
                  f"{got[False] / got[True]:5.1f}x", flush=True)


if __name__ == "__main__":
    main()
