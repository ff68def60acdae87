"""Run logging: a long-format CSV (always) and TensorBoard scalars (when enabled), rank 0 only."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path


def show_progress(requested: bool) -> bool:
    """Progress bars only when asked for and stderr is a terminal: in a log file each redraw is a line."""
    return requested and sys.stderr.isatty()


class RunLogger:
    """Appends ``time,step,epoch,tag,value`` rows to ``RUN_DIR/metrics.csv`` and mirrors them to TensorBoard."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self._writer = None
        if not enabled:
            return
        self.path = Path(run_dir) / "metrics.csv"
        # A resumed run appends to the same file; one that a killed run left empty still needs its header.
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(["time", "step", "epoch", "tag", "value"])
            self._file.flush()  # on disk now: a run killed before its first log() leaves a valid file
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, step: int, epoch: int, values: dict[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        now = time.time()
        for tag, value in values.items():
            self._csv.writerow([f"{now:.3f}", step, epoch, prefix + tag, value])
            if self._writer is not None:
                self._writer.add_scalar(prefix + tag, value, step)
        self._file.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._writer is not None:
            self._writer.close()
