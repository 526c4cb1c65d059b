"""Retrieval metrics at COCO-5K size: counting in chunks vs bare matmul vs full-matrix argsort.

Run: ``python bench/bench_retrieval.py [--repeats N] [--tune] [--device cpu|cuda] [--no-argsort]``.
Candidates run side by side in one process, alternating within every repeat; medians are
reported:

(a) the bare similarity matmul ``img @ txt.T`` (a floor: no metric can be cheaper);
(b) ``retrieval_metrics_from_embeddings`` (chunked scores, ranks by counting);
(c) the usual pattern: the full matrix, then a stable argsort of every query row in both
    directions to find each positive's position (row blocks, vectorised: a fast version).

Peak extra memory is measured in a fresh subprocess per candidate (see ``memory_probe``).
Thread counts are left at the library defaults.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

from harness.eval.ranking import CPU_TILE_COLS  # noqa: E402
from harness.eval.retrieval import (  # noqa: E402
    default_chunk_size,
    metrics_from_ranks,
    retrieval_metrics_from_embeddings,
)

N_IMAGES, N_TEXTS, DIM = 5000, 25010, 256
SORT_BLOCK = 1000  # rows argsorted at once by (c); the full int64 order would need 1 GB


def make_inputs(device: str = "cpu", seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random L2-normalised embeddings; captions grouped by image, 10 images have six."""
    g = torch.Generator().manual_seed(seed)
    img = torch.empty(N_IMAGES, DIM, device=device)
    txt = torch.empty(N_TEXTS, DIM, device=device)
    # Filled in blocks so that creating the inputs leaves no high-water mark above them.
    for x in (img, txt):
        for i0 in range(0, x.shape[0], 1024):
            block = torch.randn(min(1024, x.shape[0] - i0), DIM, generator=g)
            x[i0 : i0 + block.shape[0]] = torch.nn.functional.normalize(block, dim=1)
    extra = torch.arange(0, N_IMAGES, N_IMAGES // (N_TEXTS - 5 * N_IMAGES))
    txt2img = torch.cat([torch.arange(N_IMAGES).repeat_interleave(5), extra]).sort().values
    return img, txt, txt2img


def bare_matmul(img: Tensor, txt: Tensor, txt2img: Tensor) -> None:
    """(a) The similarity matrix alone."""
    sims = img @ txt.T
    del sims


def counting(img: Tensor, txt: Tensor, txt2img: Tensor, chunk: int | None = None) -> dict:
    """(b) The harness implementation (chunk_size None: the library's default)."""
    return retrieval_metrics_from_embeddings(img, txt, txt2img, chunk_size=chunk)


def _positions(rows: Tensor) -> Tensor:
    """Position of every column in its row's stable descending order."""
    order = torch.argsort(rows, dim=1, descending=True, stable=True)
    places = torch.arange(rows.shape[1], device=rows.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, places)


def argsort_baseline(img: Tensor, txt: Tensor, txt2img: Tensor) -> dict:
    """(c) Full matrix, then argsort every image row and every caption column."""
    sims = img @ txt.T
    dev = sims.device
    txt2img = txt2img.to(dev)
    counts = torch.bincount(txt2img, minlength=N_IMAGES)
    starts = torch.cumsum(counts, 0) - counts  # captions are grouped by image here
    slot = torch.arange(int(counts.max()), device=dev)
    own = starts[:, None] + torch.minimum(slot, counts[:, None] - 1)
    i2t = torch.empty(N_IMAGES, dtype=torch.long, device=dev)
    for i0 in range(0, N_IMAGES, SORT_BLOCK):
        place = _positions(sims[i0 : i0 + SORT_BLOCK])
        i2t[i0 : i0 + SORT_BLOCK] = place.gather(1, own[i0 : i0 + SORT_BLOCK]).amin(1) + 1
    t2i = torch.empty(N_TEXTS, dtype=torch.long, device=dev)
    for j0 in range(0, N_TEXTS, SORT_BLOCK):
        place = _positions(sims[:, j0 : j0 + SORT_BLOCK].T)
        t2i[j0 : j0 + SORT_BLOCK] = place.gather(1, txt2img[j0 : j0 + SORT_BLOCK, None])[:, 0] + 1
    return metrics_from_ranks(i2t.cpu(), t2i.cpu())


CANDIDATES: dict[str, tuple[str, Callable]] = {
    "a": ("(a) img @ txt.T (bare matmul)", bare_matmul),
    "b": ("(b) retrieval_metrics_from_embeddings", counting),
    "c": ("(c) full matrix + argsort both ways", argsort_baseline),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_side_by_side(
    fns: dict[str, Callable[[], object]], repeats: int, device: str
) -> dict[str, list]:
    """Wall times per candidate; one warm-up each, then candidates alternate every repeat."""
    for fn in fns.values():
        fn()
    times: dict[str, list] = {name: [] for name in fns}
    for r in range(repeats):
        names = list(fns) if r % 2 == 0 else list(reversed(fns))  # no fixed position bias
        for name in names:
            gc.collect()
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)  # (a) returns before a GPU finishes; the others read results back
            times[name].append(time.perf_counter() - t0)
    return times


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark (VmHWM); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_probe(key: str, chunk: int | None, device: str) -> dict:
    """In this (fresh) process: peak memory during one run minus memory just before it."""
    img, txt, txt2img = make_inputs(device)
    gc.collect()
    fn = CANDIDATES[key][1]
    args = (img, txt, txt2img, chunk) if key == "b" else (img, txt, txt2img)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn(*args)
        torch.cuda.synchronize()
        extra = (torch.cuda.max_memory_allocated() - before) / 2**20
        return {"extra_mib": extra, "lower_bound_only": False, "inputs_mib": before / 2**20}
    reset = _reset_peak()
    before, peak_before = _status_kib("VmRSS"), _status_kib("VmHWM")
    fn(*args)
    peak = _status_kib("VmHWM")
    return {
        "extra_mib": (peak - before) / 1024,
        # Without a reset, a mark set while building the inputs could hide the run's peak.
        "lower_bound_only": not reset and peak == peak_before and peak_before > before,
        "inputs_mib": before / 1024,
    }


def measure_memory(key: str, chunk: int, device: str) -> dict:
    """Run memory_probe in a subprocess so earlier candidates cannot set the mark."""
    cmd = [sys.executable, __file__, "--memory-probe", key, "--chunk-size", str(chunk)]
    out = subprocess.run(cmd + ["--device", device], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_method(device: str, inputs_mib: float) -> str:
    """One paragraph saying how peak extra memory was measured."""
    head = "memory: each candidate runs once in a fresh subprocess after building the inputs"
    if device.startswith("cuda"):
        return (
            f"{head} ({inputs_mib:.0f} MiB allocated on the GPU). Peak extra = "
            "torch.cuda.max_memory_allocated() during the run (peak stats reset just "
            "before) minus memory_allocated() just before the run."
        )
    return (
        f"{head} (~{inputs_mib:.0f} MiB RSS incl. torch). Peak extra = the RSS high-water "
        "mark VmHWM (/proc/self/status, reset just before the run through "
        "/proc/self/clear_refs) minus VmRSS just before the run. getrusage's ru_maxrss is "
        "not used: Linux carries it over from the forking parent across exec."
    )


def _agree(x: dict, y: dict) -> bool:
    return x.keys() == y.keys() and all(abs(x[k] - y[k]) < 1e-9 for k in x)


def print_ratio_table(times: dict[str, list]) -> None:
    """Per repeat: (b) and (a) side by side and their ratio (each ratio from one repeat)."""
    print(f"\n{'run':>3s} {'(b) harness s':>14s} {'(a) bare matmul s':>18s} {'(b)/(a)':>8s}"
          + (f" {'(c)/(b)':>8s}" if "c" in times else ""))
    for r, (b, a) in enumerate(zip(times["b"], times["a"])):
        tail = f" {times['c'][r] / b:7.1f}x" if "c" in times else ""
        print(f"{r + 1:3d} {b:14.3f} {a:18.3f} {b / a:7.2f}x{tail}")


def run(repeats: int, tune: bool, device: str, argsort: bool = True) -> None:
    """Time (a), (b), (c), measure memory, print the table and ratios."""
    img, txt, txt2img = make_inputs(device)
    where = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(
        f"inputs: {N_IMAGES} images, {N_TEXTS} captions, dim {DIM}, fp32 on {where}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads (library default)"
    )
    keys = [k for k in CANDIDATES if argsort or k != "c"]
    if argsort:
        agree = _agree(counting(img, txt, txt2img), argsort_baseline(img, txt, txt2img))
        print(f"(b) and (c) give identical metrics: {agree}")
    fns = {k: (lambda f=CANDIDATES[k][1]: f(img, txt, txt2img)) for k in keys}
    times = time_side_by_side(fns, repeats, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    chunk = default_chunk_size(device)
    memory = {k: measure_memory(k, chunk, device) for k in keys}
    print_ratio_table(times)
    print(f"\nmedian of {repeats} alternating repeats (default chunk_size={chunk}, "
          f"CPU tile {CPU_TILE_COLS} columns)")
    print(f"{'candidate':42s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'peak extra MiB':>15s}")
    for k in keys:
        label, mem = CANDIDATES[k][0], memory[k]
        flag = " (lower bound)" if mem["lower_bound_only"] else ""
        print(
            f"{label:42s} {med[k]:9.4f} {min(times[k]):7.4f} {max(times[k]):7.4f} "
            f"{mem['extra_mib']:15.0f}{flag}"
        )
    print(f"\n(b)/(a) = {med['b'] / med['a']:.2f}x   target <= 1.5x")
    if argsort:
        print(f"(c)/(b) = {med['c'] / med['b']:.2f}x   target >= 5x")
    print(f"(b) peak extra memory = {memory['b']['extra_mib']:.0f} MiB   target <= 1024 MiB")
    print(memory_method(device, memory["b"]["inputs_mib"]))
    if tune:
        tune_chunk_size(img, txt, txt2img, repeats, device)


def tune_chunk_size(img: Tensor, txt: Tensor, txt2img: Tensor, repeats: int, device: str) -> None:
    """Side-by-side (b) for several chunk sizes against (a), with memory for each."""
    sizes = (64, 128, 256, 512, 1024, 2048)
    fns = {"a": lambda: bare_matmul(img, txt, txt2img)}
    fns.update({str(c): (lambda c=c: counting(img, txt, txt2img, c)) for c in sizes})
    times = time_side_by_side(fns, repeats, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nchunk_size sweep (median of {repeats}); bare matmul {med['a']:.4f} s")
    print(f"{'chunk_size':>10s} {'median s':>9s} {'/(a)':>6s} {'peak extra MiB':>15s}")
    for c in sizes:
        mem = measure_memory("b", c, device)["extra_mib"]
        print(f"{c:10d} {med[str(c)]:9.4f} {med[str(c)] / med['a']:6.2f} {mem:15.0f}")


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per candidate")
    parser.add_argument("--tune", action="store_true", help="also sweep chunk_size")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--no-argsort", action="store_true",
                        help="leave out (c), the slow argsort pattern (minutes on 2 cores)")
    parser.add_argument("--memory-probe", choices=list(CANDIDATES), help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.chunk_size, args.device)))
        return
    run(args.repeats, args.tune, args.device, argsort=not args.no_argsort)


if __name__ == "__main__":
    main()
