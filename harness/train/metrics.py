"""Training logs: ``metrics.jsonl``, TensorBoard, and a progress bar or plain lines (rank 0)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


class MetricsLog:
    """``metrics.jsonl`` (one JSON object a line) plus TensorBoard and terminal progress.

    On a terminal a tqdm bar advances every step; elsewhere (SLURM logs, pipes) each record
    is one plain ``[train] k=v ...`` line, which greps better than a redrawn bar. Ranks other
    than 0 pass ``enabled=False`` and write nothing.
    """

    def __init__(self, path: Path, *, tensorboard_dir: Path | None = None, total: int = 0,
                 start: int = 0, progress: str | bool = "auto", enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = path
        self._handle = None
        self._writer: Any = None
        self._bar: Any = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a", encoding="utf-8")
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(tensorboard_dir))
        show_bar = sys.stdout.isatty() if progress == "auto" else bool(progress)
        if show_bar and total > 0:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def tick(self, steps: int = 1) -> None:
        """Advance the progress bar (no-op without one)."""
        if self._bar is not None:
            self._bar.update(steps)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record and flush, so a killed job keeps its curve."""
        if not self.enabled:
            return
        if self._handle is not None:
            try:
                self._handle.write(json.dumps(record, sort_keys=True) + "\n")
                self._handle.flush()
            except OSError as exc:
                self._stop_file(exc, record.get("step"))
        step = int(record.get("step", 0))
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(f"train/{key}", value, step)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4g}",
                                  lr=f"{record.get('lr', 0.0):.3g}", refresh=False)
            return
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in record.items())
        print(f"[train] {shown}", flush=True)

    def _stop_file(self, exc: OSError, step: Any) -> None:
        # A full disk (or a flaky network filesystem) must not end training here: the next
        # checkpoint save is where the run either keeps its progress or fails, naming the path.
        print(f"[train] WARNING: cannot write {self.path} at step {step} ({exc}); metrics are "
              f"not written to it any more, training goes on", file=sys.stderr, flush=True)
        handle, self._handle = self._handle, None
        try:
            handle.close()
        except OSError:
            pass  # the same error again, from the buffered line

    def close(self) -> None:
        """Close the file, the TensorBoard writer and the bar."""
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError as exc:
                self._stop_file(exc, "close")
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as exc:
                print(f"[train] WARNING: TensorBoard events not fully written ({exc})",
                      file=sys.stderr, flush=True)
        if self._bar is not None:
            self._bar.close()
