"""GPU check: paper-size training throughput and MFU, COCO 5K protocol times, re-ranking speed.

Run (one command, meant to finish in under 8 minutes on one H100/H200-class GPU)::

    python bench/gpu_check.py --out results/gpu_check/<gpu>.md

For every registered model at ``scale=paper`` (random weights, random inputs):

1. **Training**: steps of the harness's own ``Stepper`` (AdamW, clipping, schedule) in bf16
   on ``--batch`` pairs. Reported: median step time, samples/s, peak GPU memory, and
   MFU = FLOPs per step / step time / the device's dense bf16 peak. FLOPs per step are counted
   by the harness's counter (``harness.eval.flops.count_flops``) over one real step: forward
   and backward matrix products, convolutions and attention (2 x MACs); the optimizer's
   elementwise work is not counted. A device missing from :data:`BF16_PEAK_TFLOPS` gets a
   blank MFU and a note.
2. **COCO 5K protocol** (5,000 images x 25,000 captions): what ``task=bench`` measures
   (``harness.eval.cost.model_costs``): embedding retrieval for dual encoders, full scoring
   and top-``k_test`` re-ranking for cross-encoders, timed within ``--budget-s`` per workload
   and extrapolated beyond it (the status column says which).
3. **Re-ranking throughput** of each cross-encoder: the harness's batched re-ranker against
   one query per forward (ALBEF/BLIP's loop), the functions of ``bench/bench_rerank.py``.

The output is Markdown tables headed by the device name, torch version and date, printed and
written to ``--out``. Without CUDA the script refuses, unless ``--device cpu``; with
``--tiny`` it runs the smoke-size models on a small gallery, which is how the test suite runs
it. Numbers for a GPU come only from a session that has one; a CPU run checks the script.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

from bench_rerank import harness_rerank, loop_rerank, make_gallery  # noqa: E402

from harness.config import compose, to_plain  # noqa: E402
from harness.eval.cost import model_costs, protocol_seconds  # noqa: E402
from harness.eval.flops import count_flops  # noqa: E402
from harness.eval.pair_scoring import default_batch_pairs, sync  # noqa: E402
from harness.eval.rerank import stable_topk  # noqa: E402
from harness.eval.timing import hardware_info  # noqa: E402
from harness.interfaces import is_cross_encoder  # noqa: E402
from harness.model_check import (  # noqa: E402
    BERT_VOCAB,
    build_model,
    count_parameters,
    make_stepper,
    random_train_batch,
    train_step,
)
from harness.registry import MODELS  # noqa: E402

#: Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, by a name fragment of the device.
#: SXM parts; PCIe/NVL variants are lower, so they are listed before the bare name matches.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
    ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0),
)

TRAIN_COLUMNS = ("model", "params (M)", "batch", "precision", "step (ms)", "samples/s",
                 "peak memory (GiB)", "TFLOP/step", "TFLOP/s", "MFU")
PROTOCOL_COLUMNS = ("model", "kind", "protocol", "embedding (s)", "full scoring (s)",
                    "top-k re-rank (s)", "status")
RERANK_COLUMNS = ("model", "gallery", "k_test", "pairs", "loop pairs/s", "harness pairs/s",
                  "speed-up", "max score diff")


def bf16_peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak (TFLOP/s) from :data:`BF16_PEAK_TFLOPS`, or None."""
    for fragment, peak in BF16_PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return peak
    return None


def _median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_row(name: str, args: argparse.Namespace, device: torch.device,
              peak_tflops: float | None) -> dict[str, str]:
    """Step time, samples/s, peak memory and MFU of one model's training step."""
    _free(device)  # the previous model's cached blocks
    cfg = compose([f"model={name}", f"scale={args.scale}", "task=finetune"])
    torch.manual_seed(0)
    model = build_model(cfg, args.vocab).to(device)
    stepper = make_stepper(model, cfg, device, args.precision)
    batch = random_train_batch(cfg, args.batch, args.vocab)
    step = iter(range(1, 10**9))
    # The counted step doubles as the first warm-up step.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncounted ops are reported in the table's notes
        counted = count_flops(lambda: train_step(stepper, batch, next(step)))
    flops = counted.total
    train_step(stepper, batch, next(step))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _median_seconds(lambda: train_step(stepper, batch, next(step)), device,
                              args.steps)
    peak_mem = (f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}"
                if device.type == "cuda" else "")
    achieved = flops / seconds / 1e12
    mfu = f"{100 * achieved / peak_tflops:.1f} %" if peak_tflops else ""
    row = {"model": name, "params (M)": f"{count_parameters(model) / 1e6:.1f}",
           "batch": str(args.batch), "precision": stepper.precision.name,
           "step (ms)": f"{1e3 * seconds:.1f}", "samples/s": f"{args.batch / seconds:,.1f}",
           "peak memory (GiB)": peak_mem, "TFLOP/step": f"{flops / 1e12:.3f}",
           "TFLOP/s": f"{achieved:.2f}", "MFU": mfu,
           "uncounted": ", ".join(counted.uncounted_ops)}
    return row


def protocol_row(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, str]:
    """Seconds of the COCO 5K protocol as ``task=bench`` measures them."""
    _free(device)  # the previous model's cached blocks
    cfg = compose([f"model={name}", f"scale={args.scale}", "task=bench"])
    factory, model_cfg = MODELS.get(name), to_plain(cfg.model)
    block = model_costs(lambda: factory(model_cfg, vocab_size=args.vocab),
                        image_size=int(cfg.model.image_size), text_len=int(cfg.task.text_len),
                        vocab_size=args.vocab, protocols=["coco_5k"], device=device,
                        precision=args.precision, budget_s=args.budget_s,
                        encode_batch=args.encode_batch, pair_batch=args.pair_batch,
                        k_test=args.k_test)
    modes = protocol_seconds(block)["coco_5k"]
    cost = block["protocols"]["coco_5k"]

    def seconds(mode: str) -> str:
        return f"{modes[mode]['seconds']:,.1f}" if mode in modes else ""

    return {"model": name, "kind": str(cost.get("kind", "")), "protocol": "coco_5k",
            "embedding (s)": seconds("embedding"), "full scoring (s)": seconds("full_scoring"),
            "top-k re-rank (s)": seconds("topk_rerank"),
            "status": ", ".join(sorted({m["status"] for m in modes.values()}))}


def rerank_row(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, str] | None:
    """Re-ranked pairs/s of the harness's re-ranker and of one query per forward, or None."""
    _free(device)  # the previous model's cached blocks
    cfg = compose([f"model={name}", f"scale={args.scale}"])
    torch.manual_seed(0)
    model = build_model(cfg, args.vocab).to(device).eval()
    if not is_cross_encoder(model):
        return None
    images, tokens = make_gallery(args.gallery_images, args.gallery_captions,
                                  int(cfg.model.image_size))
    with torch.inference_mode():
        img = model.image_features(images.to(device))
        txt = model.text_features({k: v.to(device) for k, v in tokens.items()})
        sims = torch.randn(len(img), len(txt), generator=torch.Generator().manual_seed(1))
        k = min(args.k_test, len(txt), len(img))
        cand_i2t, cand_t2i = stable_topk(sims, k), stable_topk(sims.T, k)
        work = cand_i2t.numel() + cand_t2i.numel()
        precision = torch.autocast(device.type, dtype=torch.bfloat16,
                                   enabled=args.precision == "bf16")
        with precision:
            loop_out = loop_rerank(model, img, txt, cand_i2t, cand_t2i, device)  # warm-up
            ours = harness_rerank(model, img, txt, cand_i2t, cand_t2i, device, args.pair_batch)
            loop_s = _median_seconds(
                lambda: loop_rerank(model, img, txt, cand_i2t, cand_t2i, device), device,
                args.repeats)
            ours_s = _median_seconds(
                lambda: harness_rerank(model, img, txt, cand_i2t, cand_t2i, device,
                                       args.pair_batch), device, args.repeats)
    diff = max(float((a.float().cpu() - b.float().cpu()).abs().max())
               for a, b in zip(loop_out, ours))
    return {"model": name, "gallery": f"{len(img)} img x {len(txt)} txt", "k_test": str(k),
            "pairs": f"{work:,}", "loop pairs/s": f"{work / loop_s:,.0f}",
            "harness pairs/s": f"{work / ours_s:,.0f}", "speed-up": f"{loop_s / ours_s:.2f}x",
            "max score diff": f"{diff:.1e}"}


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, str]]) -> str:
    """A Markdown table with these columns, text left and numbers right aligned."""
    align = ["---" if c in ("model", "kind", "protocol", "precision", "gallery", "status")
             else "---:" for c in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; ``--tiny`` switches to smoke sizes and a small workload."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="smoke-size models, small workload")
    p.add_argument("--models", nargs="*", default=None, help="default: every registered model")
    p.add_argument("--batch", type=int, default=None, help="training pairs per step")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (median)")
    p.add_argument("--budget-s", type=float, default=None, help="seconds per timed workload")
    p.add_argument("--k-test", type=int, default=128)
    args = p.parse_args(argv)
    args.scale = "smoke" if args.tiny else "paper"
    defaults = ({"batch": 4, "steps": 2, "budget_s": 0.5} if args.tiny
                else {"batch": 64, "steps": 10, "budget_s": 10.0})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.tiny:
        args.k_test = min(args.k_test, 4)
    args.vocab = 1000 if args.tiny else BERT_VOCAB
    args.gallery_images, args.gallery_captions = (6, 2) if args.tiny else (100, 5)
    args.repeats = 2 if args.tiny else 3
    args.encode_batch = 8 if args.tiny else 512
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the three checks and print (and write) the tables; returns the exit code."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: bench/gpu_check.py needs a CUDA device and torch.cuda.is_available() is "
              "False; for a CPU check of the script use --device cpu --tiny", file=sys.stderr)
        return 2
    names = args.models or MODELS.names()
    for name in names:
        if name not in MODELS:
            print(f"error: --models: unknown model {name!r}; valid names: "
                  f"{', '.join(MODELS.names())}", file=sys.stderr)
            return 2
    args.precision = "bf16" if device.type == "cuda" else "fp32"
    args.pair_batch = default_batch_pairs(device)
    hw = hardware_info(device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(hw["hardware"])
    peak = bf16_peak_tflops(device_name) if device.type == "cuda" else None
    started = time.perf_counter()

    train = [train_row(n, args, device, peak) for n in names]
    protocols = [protocol_row(n, args, device) for n in names]
    rerank = [r for r in (rerank_row(n, args, device) for n in names) if r is not None]

    mfu_note = (f"MFU against {peak:g} TFLOP/s dense bf16" if peak else
                "MFU blank: no bf16 peak known for this device (bench/gpu_check.py "
                "BF16_PEAK_TFLOPS)")
    notes = [f"- FLOPs of {r['model']} undercounted: no formula for {r['uncounted']}"
             for r in train if r["uncounted"]]
    text = "\n".join([
        f"# GPU check ({'smoke sizes, --tiny' if args.tiny else 'paper sizes'})", "",
        f"- device: {device_name}",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{hw['torch_threads']} CPU threads",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"command: python bench/gpu_check.py {' '.join(sys.argv[1:] if argv is None else argv)}",
        "- random weights and inputs; FLOPs = 2 x MACs of matrix products, convolutions and "
        f"attention (harness/eval/flops.py); {mfu_note}", "",
        f"## Training step (scale={args.scale}, {args.steps} timed steps, median)", "",
        markdown_table(TRAIN_COLUMNS, train), "", *notes, *([""] if notes else []),
        f"## COCO 5K protocol (5,000 images x 25,000 captions, k_test={args.k_test}, "
        f"budget {args.budget_s:g} s per workload)", "",
        markdown_table(PROTOCOL_COLUMNS, protocols), "",
        "## Re-ranking throughput (one query per forward vs harness.eval.rerank)", "",
        markdown_table(RERANK_COLUMNS, rerank) if rerank else "(no cross-encoder selected)", "",
        f"Total {time.perf_counter() - started:.0f} s.", ""])
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
