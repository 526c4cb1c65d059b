"""Training throughput: the harness loop vs a bare loop, and data-loader images/s.

Run: ``python bench/bench_train.py [--rounds N] [--steps S] [--threads T]``.

(1) ``harness.train.loop.train`` vs a hand-written loop doing the same forward, backward,
    clipping, AdamW step, schedule step and logit-scale clamp on the same tiny CLIP
    (``configs/size/clip_smoke.yaml``), from in-memory tensors, end to end (setup and the
    final checkpoint included). Target: harness >= 0.95x bare.
(2) DataLoader images/s on the embedded synthetic dataset (real JPEGs, timm train transform,
    tokenising collate): the harness loader (position-seeded samples, resumable sampler) vs
    a plain shuffled DataLoader, with 0 and 2 workers.

Candidates alternate within every round (the machine may be shared) and medians are
reported. CPU only; thread count is fixed (``--threads``) so rounds are comparable.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

import yaml  # noqa: E402

from harness.train.loop import train  # noqa: E402
from harness.train.optim import build_optimizer, build_scheduler  # noqa: E402
from harness.train.sampling import build_loader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOCAB, TEXT_LEN, IMAGE = 1000, 24, 64


def clip_config() -> dict[str, Any]:
    """configs/model/clip.yaml patched by configs/size/clip_smoke.yaml."""
    cfg = yaml.safe_load((ROOT / "configs/model/clip.yaml").read_text())
    size = yaml.safe_load((ROOT / "configs/size/clip_smoke.yaml").read_text())
    for key, value in size.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


class TensorPairs(Dataset):
    """Pre-tokenised random pairs in memory: the loop, not decoding, is what is measured."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, IMAGE, IMAGE, generator=g)
        self.ids = torch.randint(1, VOCAB, (n, TEXT_LEN), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"images": self.images[i], "input_ids": self.ids[i],
                "attention_mask": torch.ones(TEXT_LEN, dtype=torch.long),
                "image_ids": torch.tensor(i)}


def stack(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Collate by stacking every key."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def new_model() -> torch.nn.Module:
    """The tiny CLIP with fixed initial weights."""
    from baselines.clip import build_clip

    torch.manual_seed(0)
    return build_clip(clip_config(), vocab_size=VOCAB)


def train_cfg(steps: int, batch: int) -> dict[str, Any]:
    """The loop settings both candidates follow (task=finetune defaults)."""
    return {"steps": steps, "batch_size": batch, "lr": 1e-3, "warmup_steps": 5,
            "weight_decay": 0.02, "betas": (0.9, 0.98), "grad_clip": 1.0, "log_every": 25,
            "ckpt_every": 10**9, "seed": 0, "device": "cpu", "num_workers": 0,
            "tensorboard": True, "progress": False}


def run_harness(data: Dataset, cfg: dict[str, Any], out: Path) -> float:
    """Seconds for ``train()`` end to end."""
    model = new_model()
    t0 = time.perf_counter()
    train(model, data, stack, cfg, out)
    return time.perf_counter() - t0


def run_bare(data: Dataset, cfg: dict[str, Any], out: Path) -> float:
    """Seconds for a hand-written loop with the same per-step work."""
    model = new_model()
    t0 = time.perf_counter()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    loader = DataLoader(data, batch_size=cfg["batch_size"], shuffle=True, collate_fn=stack,
                        drop_last=True)
    model.train()
    step = 0
    while step < cfg["steps"]:
        for batch in loader:
            loss = sum(model.losses(batch).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            optimizer.step()
            scheduler.step()
            model.clamp_logit_scale()
            step += 1
            if step == cfg["steps"]:
                break
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
               out / "bare.pt")
    return time.perf_counter() - t0


def synthetic_pairs(folder: Path) -> tuple[Dataset, Callable]:
    """CaptionPairs of a freshly generated synthetic train split, and its collate."""
    from harness.data.karpathy import load_captions
    from harness.data.loaders import CaptionPairs, make_collate
    from harness.data.synthetic import generate
    from harness.data.text import Tokenizer, build_vocab
    from harness.data.transforms import build_transform

    annotation = generate(folder, n_images=300, image_size=64, pretrain_pairs=0)
    corpus = load_captions(annotation, folder, "train", name="synthetic", fmt="karpathy")
    tokenizer = Tokenizer(build_vocab(corpus.captions, folder / "vocab", 2000), 40)
    transform = build_transform(64, {"scale": [0.8, 1.0], "ratio": [0.9, 1.1]}, train=True,
                                mean=(0.5,) * 3, std=(0.5,) * 3)
    return CaptionPairs(corpus, transform), make_collate(tokenizer)


def loader_rate(loader: DataLoader, batches: int) -> float:
    """Images/s over ``batches`` batches, after the first (worker start-up) is discarded."""
    it = iter(loader)
    first = next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        n += len(next(it)["images"])
    del it
    return n / (time.perf_counter() - t0) if first is not None else math.nan


def seeding_cost_us(n: int = 20000) -> float:
    """Median microseconds of one ``seeded(seed, position)`` block (5 repeats)."""
    from harness.seeding import seeded

    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for i in range(n):
            with seeded(0, i):
                pass
        times.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(times)


def main() -> None:
    """Run both benchmarks and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loader-batches", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, cfg = TensorPairs(args.batch * 8), train_cfg(args.steps, args.batch)
    samples = args.steps * args.batch
    rates: dict[str, list[float]] = {"harness train()": [], "bare loop": []}
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        # Untimed warm-up: first-use imports (TensorBoard) and allocator growth.
        run_harness(data, train_cfg(2, args.batch), Path(tmp) / "warm-harness")
        (Path(tmp) / "warm-bare").mkdir()
        run_bare(data, train_cfg(2, args.batch), Path(tmp) / "warm-bare")
        for r in range(args.rounds):
            order = ["harness train()", "bare loop"][:: 1 if r % 2 == 0 else -1]
            seconds = {}
            for name in order:
                out = Path(tmp) / f"{name.split()[0]}{r}"
                out.mkdir()
                run = run_harness if name.startswith("harness") else run_bare
                seconds[name] = run(data, cfg, out)
                rates[name].append(samples / seconds[name])
            ratios.append(seconds["bare loop"] / seconds["harness train()"])
        print(f"\nTraining throughput: tiny CLIP (clip_smoke), CPU, {args.threads} thread(s), "
              f"batch {args.batch}, {args.steps} steps end to end, {args.rounds} rounds "
              f"alternating")
        print(f"{'candidate':<18}{'median samples/s':>18}{'min':>9}{'max':>9}")
        for name, values in rates.items():
            print(f"{name:<18}{statistics.median(values):>18.1f}{min(values):>9.1f}"
                  f"{max(values):>9.1f}")
        print(f"harness / bare: {statistics.median(ratios):.3f}x (median of per-round ratios; "
              f"rounds {', '.join(f'{x:.3f}' for x in ratios)}); target >= 0.95x")

        pairs, collate = synthetic_pairs(Path(tmp) / "synthetic")
        loaders: dict[str, Callable[[int], DataLoader]] = {
            "harness loader": lambda w: build_loader(
                pairs, collate, batch_size=args.batch, seed=0, start=0, rank=0, world_size=1,
                num_workers=w, pin_memory=False),
            "plain DataLoader": lambda w: DataLoader(
                pairs, batch_size=args.batch, shuffle=True, collate_fn=collate,
                num_workers=w, drop_last=True),
        }
        image_rates: dict[tuple[str, int], list[float]] = {}
        for r in range(args.rounds):
            for workers in (0, 2):
                names = list(loaders)[:: 1 if r % 2 == 0 else -1]
                for name in names:
                    rate = loader_rate(loaders[name](workers), args.loader_batches)
                    image_rates.setdefault((name, workers), []).append(rate)
        print(f"\nData loader: synthetic CaptionPairs (64 px JPEG decode + timm train transform"
              f" + tokenising collate), batch {args.batch}, {args.loader_batches} batches after "
              f"the first, {args.rounds} rounds alternating")
        print(f"{'candidate':<18}{'workers':>8}{'median images/s':>17}{'min':>9}{'max':>9}")
        for (name, workers), values in sorted(image_rates.items(), key=lambda kv: kv[0][1]):
            print(f"{name:<18}{workers:>8}{statistics.median(values):>17.1f}"
                  f"{min(values):>9.1f}{max(values):>9.1f}")
        per_image_us = 1e6 / statistics.median(image_rates[("plain DataLoader", 0)])
        seed_us = seeding_cost_us()
        print(f"per-sample seeding (main process, incl. torch RNG save/restore): {seed_us:.1f} us"
              f" = {100 * seed_us / per_image_us:.1f}% of one image's load time "
              f"({per_image_us:.0f} us)")


if __name__ == "__main__":
    main()
