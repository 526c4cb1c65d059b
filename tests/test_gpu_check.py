"""bench/gpu_check.py: its refusal without CUDA, its peak-FLOPs table, and a CPU run at smoke size."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


def _load():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports its neighbour bench_rerank
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def _table(text: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the Markdown table under ``## <heading>...``."""
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    assert re.fullmatch(r"-+:?", cells[1][0]), lines[1]
    assert all(len(row) == len(cells[0]) for row in cells), section
    return cells[0], cells[2:]


def test_peak_flops_by_device_name() -> None:
    gc = _load()
    assert gc.bf16_peak_tflops("NVIDIA H200") == 989.0
    assert gc.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gc.bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gc.bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gc.bf16_peak_tflops("Tesla T4") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_refuses_without_cuda() -> None:
    out = _run()
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: bench/gpu_check.py needs a CUDA device and torch.cuda.is_available() is False; "
        "for a CPU check of the script use --device cpu --tiny"]
    assert out.stdout == ""


def test_unknown_model_is_one_line() -> None:
    out = _run("--device", "cpu", "--tiny", "--models", "clipp")
    assert out.returncode == 2
    assert out.stderr.startswith("error: --models: unknown model 'clipp'; valid names: clip,")


@pytest.mark.slow
def test_tiny_cpu_run_writes_the_three_tables(tmp_path: Path) -> None:
    gc = _load()
    out_file = tmp_path / "gpu_check.md"
    out = _run("--device", "cpu", "--tiny", "--models", "cookie", "single_stream",
               "--steps", "1", "--budget-s", "0.2", "--out", str(out_file))
    assert out.returncode == 0, out.stderr
    text = out_file.read_text()
    assert text.strip() == out.stdout.strip()
    assert f"- torch {torch.__version__}," in text
    assert re.search(r"- date: \d{4}-\d\d-\d\d \d\d:\d\d UTC", text)
    assert "- device: " in text and "MFU blank: no bf16 peak known" in text

    cols, rows = _table(text, "Training step")
    assert tuple(cols) == gc.TRAIN_COLUMNS
    assert [r[0] for r in rows] == ["cookie", "single_stream"]
    for row in rows:
        cell = dict(zip(cols, row))
        assert cell["precision"] == "fp32" and cell["batch"] == "4" and cell["MFU"] == ""
        for key in ("params (M)", "step (ms)", "samples/s", "TFLOP/step"):
            assert float(cell[key].replace(",", "")) > 0, (key, cell)

    cols, rows = _table(text, "COCO 5K protocol")
    assert tuple(cols) == gc.PROTOCOL_COLUMNS
    cells = {r[0]: dict(zip(cols, r)) for r in rows}
    assert cells["cookie"]["kind"] == "dual_encoder" and cells["cookie"]["full scoring (s)"] == ""
    assert float(cells["cookie"]["embedding (s)"].replace(",", "")) > 0
    ss = cells["single_stream"]
    assert ss["kind"] == "cross_encoder" and ss["embedding (s)"] == ""
    full, topk = (float(ss[k].replace(",", "")) for k in ("full scoring (s)", "top-k re-rank (s)"))
    assert full > topk > 0  # scoring all 125 M pairs costs more than re-ranking the top k

    cols, rows = _table(text, "Re-ranking throughput")
    assert tuple(cols) == gc.RERANK_COLUMNS
    assert [r[0] for r in rows] == ["single_stream"]  # the dual encoder has no re-ranker
    cell = dict(zip(cols, rows[0]))
    assert float(cell["max score diff"]) < 1e-4  # both re-rankers score the same pairs
