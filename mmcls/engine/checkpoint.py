"""Training checkpoints: written atomically, loaded without unpickling arbitrary objects.

A checkpoint is a single ``torch.save`` file of tensors and plain Python values (model, optimizer,
scheduler, grad scaler, EMA, RNG states, data position). It is written to a temporary file in the same
directory and renamed into place, so a kill at any moment leaves either the old or the new checkpoint,
never a truncated one. It is read back with ``torch.load(weights_only=True)``, which refuses pickled code.
Released models use the safetensors model folder instead (see ``mmcls.models.model_dir``).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from mmcls.errors import MmclsError
from mmcls.files import file_mode

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})\.pt$")


class CheckpointError(MmclsError, RuntimeError):
    """A checkpoint cannot be read safely; the message names the file."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first (by global step in the file name)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: str | Path, global_step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Atomically write ``state`` as ``checkpoints/step-XXXXXXXX.pt`` and prune all but the newest ``keep_last``."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{global_step:08d}.pt"
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, file_mode())  # mkstemp's 0600 would hide checkpoints from a team's shared storage
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    for old in list_checkpoints(run_dir)[: -max(keep_last, 1)]:
        old.unlink(missing_ok=True)
    # A run killed while writing leaves its temporary file behind; only one process writes checkpoints,
    # and its own temporary file is renamed by now, so any left is such a leftover.
    for stale in folder.glob(".tmp-*.pt"):
        stale.unlink(missing_ok=True)
    return target


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: a file carrying pickled objects is refused."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError / RuntimeError with a long message
        raise CheckpointError(
            f"{path}: refused to load checkpoint (only tensors and plain values are accepted; "
            f"the file is corrupt or carries pickled objects): {str(exc).splitlines()[0]}"
        ) from exc
