"""Two costs every smoke stage pays: the training step's convolutions and process start-up.

Run: ``python bench/bench_stage_overheads.py [--rounds N] [--steps S]``.

(1) One smoke-size training step (forward, backward, AdamW) of COOKIE and of CLIP at batch
    64, one thread, with the image tower's memory layout as the harness sets it
    (channels-last) against the default contiguous layout. Same model, same batch.
(2) Seconds until a new stage process is ready to run a stage (the stage runner, timm and
    transformers imported): started by ``spawn`` against forked from the harness's fork
    server, which imported them once (``harness.launch.executor.stage_process_context``).

Candidates alternate within every round (the machine may be shared); medians are printed
with each round's ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

import torch  # noqa: E402


def _step_seconds(model_name: str, channels_last: bool, steps: int) -> float:
    """Median seconds of one training step of the smoke model, tower layout as asked."""
    from harness.config import compose
    from harness.model_check import build_model, random_train_batch

    cfg = compose([f"model={model_name}", "scale=smoke", "data=synthetic", "task=finetune"])
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=int(cfg.data.vocab_size)).train()
    tower = model.encoder.image_tower if hasattr(model, "encoder") else model.image_tower
    layout = torch.channels_last if channels_last else torch.contiguous_format
    tower.backbone.to(memory_format=layout)
    batch = random_train_batch(cfg, 64, vocab_size=int(cfg.data.vocab_size))
    if not channels_last:  # the tower converts its input; hand it the layout it then keeps
        original = tower.backbone.forward_features
        tower.backbone.forward_features = lambda x: original(x.contiguous())  # type: ignore
        original_forward = tower.backbone.forward
        tower.backbone.forward = lambda x: original_forward(x.contiguous())  # type: ignore
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        loss = sum(model.losses(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 2:  # warm-up steps not counted
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ready(queue: multiprocessing.Queue[float]) -> None:
    import timm  # noqa: F401
    import transformers  # noqa: F401

    import harness.stage  # noqa: F401  what a stage process needs before its stage

    queue.put(time.perf_counter())


def _start_seconds(context: multiprocessing.context.BaseContext) -> float:
    queue = context.Queue()
    start = time.perf_counter()
    proc = context.Process(target=_ready, args=(queue,))
    proc.start()
    ready = queue.get()
    proc.join()
    return ready - start


def main(argv: list[str] | None = None) -> int:
    """Print both comparisons as tables."""
    from harness.launch.executor import stage_process_context

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| Model | Round | contiguous s/step | channels-last s/step | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name in ("cookie", "clip"):
        ratios = []
        for r in range(args.rounds):
            plain = _step_seconds(name, False, args.steps)
            last = _step_seconds(name, True, args.steps)
            ratios.append(last / plain)
            print(f"| {name} | {r + 1} | {plain:.3f} | {last:.3f} | {last / plain:.2f}× |")
        print(f"| {name} | median | | | {statistics.median(ratios):.2f}× |")
    server = stage_process_context()
    _start_seconds(server)  # the fork server starts (and imports) once per grid
    spawn = multiprocessing.get_context("spawn")
    print("\n| Round | spawn s to a ready stage process | fork server s | ratio |")
    print("|---:|---:|---:|---:|")
    for r in range(args.rounds):
        a, b = _start_seconds(spawn), _start_seconds(server)
        print(f"| {r + 1} | {a:.2f} | {b:.3f} | {a / b:.0f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
