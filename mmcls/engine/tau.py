"""Logit adjustment chosen on validation: the TAU of ``argmax(log p - TAU * log prior)`` a model folder keeps.

Every validation of a classification run scores the grid ``TAU_GRID`` (0, 0.25, ..., 1.5) on the probabilities
it already gathered, by ``mean_f1``; the model folder written after that validation (``best/`` when it
improved) records the winner in ``LOGIT_ADJUST_FILE``. Ties go to the smallest TAU (the least change).
``mmcls predict --logit-adjust auto`` (the default) reads it back; a folder without the file (older runs, runs
without validation) predicts with TAU 0, as before.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mmcls.data.categories import CategoryMap
from mmcls.engine.losses import adjust_logits, log_prior
from mmcls.errors import MmclsError
from mmcls.files import atomic_write_json
from mmcls.metrics import compute_scores_from_indices
from mmcls.names import LOGIT_ADJUST_FILE

TAU_GRID: tuple[float, ...] = tuple(i * 0.25 for i in range(7))  # 0, 0.25, ..., 1.5
METRIC = "mean_f1"


class SavedTauError(MmclsError, ValueError):
    """A model folder's ``logit_adjust.json`` cannot be read."""


def grid_scores(
    probs: np.ndarray, labels: np.ndarray, train_counts: np.ndarray, categories: CategoryMap
) -> dict[float, float]:
    """``{TAU: validation mean_f1}`` of the adjusted argmax over ``TAU_GRID`` (rows with label -1 are skipped)."""
    known = labels >= 0
    log_probs = np.log(np.maximum(probs[known].astype(np.float64), np.finfo(np.float32).tiny))
    prior = log_prior(train_counts)
    return {
        tau: float(
            compute_scores_from_indices(
                labels[known], adjust_logits(log_probs, prior, tau).argmax(1), categories
            )[METRIC]
        )
        for tau in TAU_GRID
    }


def choose_tau(scores: dict[float, float]) -> float:
    """The grid's argmax; the smallest TAU among equals."""
    best = max(scores.values())
    return min(tau for tau, score in scores.items() if score == best)


def tau_record(scores: dict[float, float]) -> dict[str, Any]:
    """What ``LOGIT_ADJUST_FILE`` holds: the chosen TAU, how it was chosen, and every grid point's score."""
    return {
        "tau": choose_tau(scores),
        "chosen_by": f"validation {METRIC}",
        "grid": [{"tau": tau, METRIC: score} for tau, score in scores.items()],
    }


def write_tau(folder: Path, record: dict[str, Any]) -> None:
    atomic_write_json(Path(folder) / LOGIT_ADJUST_FILE, record)


def read_tau_record(folder: str | Path) -> dict[str, Any] | None:
    """The folder's ``LOGIT_ADJUST_FILE`` (checked), or None where there is none."""
    path = Path(folder) / LOGIT_ADJUST_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SavedTauError(f"{path}: not readable JSON ({e})") from None
    tau = record.get("tau") if isinstance(record, dict) else None
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
        raise SavedTauError(f"{path}: field tau must be a number >= 0, got {tau!r}")
    return record


def saved_tau(folder: str | Path) -> float:
    """The TAU that ``--logit-adjust auto`` applies for the model folder: the saved one, else 0.0."""
    record = read_tau_record(folder)
    return float(record["tau"]) if record is not None else 0.0
