"""Multilabel decisions: per-class thresholds chosen on validation, and the tags a probability row gives.

Method (deterministic, no randomness, so no seed): for every class the validation videos are ranked by
probability and F1 is computed at every cut of the ranking (exact search, not a grid); the threshold is the
midpoint between the last probability kept and the next one, so it separates the two. A class with fewer than
``min_positives`` validation positives gets the *global* threshold instead: the same search over all
(video, class) pairs at once, which maximises micro F1. No threshold is below ``floor`` (a rare class must not
tag every video). Written to the model folder as ``thresholds.json`` by training; read by ``mmcls predict``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmcls.errors import MmclsError
from mmcls.files import atomic_write_text
from mmcls.names import THRESHOLDS_FILE

METHOD = "exact F1-maximising cut per class on the validation split; global micro-F1 cut as fallback"


class ThresholdError(MmclsError, ValueError):
    """A thresholds file or a ``--threshold`` value is unusable; the message names it."""


@dataclass
class Thresholds:
    """Per-class thresholds in class order, the global one, and which classes have their own."""

    category_ids: list[str]
    per_class: np.ndarray  # [C] float
    global_threshold: float
    own: np.ndarray  # [C] bool: chosen for the class itself (else the global fallback)
    positives: np.ndarray  # [C] int: validation positives per class
    floor: float
    min_positives: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "floor": self.floor,
            "min_positives": self.min_positives,
            "global": self.global_threshold,
            "category_ids": self.category_ids,
            "per_class": [round(float(t), 6) for t in self.per_class],
            "own": [bool(o) for o in self.own],
            "val_positives": [int(n) for n in self.positives],
        }

    def save(self, folder: str | Path) -> None:
        atomic_write_text(Path(folder) / THRESHOLDS_FILE, json.dumps(self.to_dict(), indent=1) + "\n")


def best_cut(probs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """``(threshold, F1)`` of the F1-maximising rule ``prob >= threshold`` over 1-D ``probs``/0-1 ``targets``.

    Ties in probability are one cut (a rule cannot split them). Without a positive the F1 is 0 and the
    threshold is just above the highest probability (nothing is tagged).
    """
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets) > 0
    positives = int(targets.sum())
    if positives == 0 or probs.size == 0:
        return float(np.nextafter(probs.max(), np.inf)) if probs.size else 0.5, 0.0
    order = np.argsort(-probs, kind="stable")
    ranked, hits = probs[order], np.cumsum(targets[order])
    # Cut after position i only where the next probability is lower (or at the end).
    ends = np.flatnonzero(np.append(ranked[1:] < ranked[:-1], True))
    f1 = 2 * hits[ends] / (ends + 1 + positives)
    best = ends[int(np.argmax(f1))]
    below = ranked[best + 1] if best + 1 < len(ranked) else 0.0
    return float((ranked[best] + below) / 2), float(f1.max())


def choose_thresholds(
    probs: np.ndarray,
    targets: np.ndarray,
    category_ids: list[str],
    floor: float = 0.05,
    min_positives: int = 5,
) -> Thresholds:
    """Thresholds from validation ``probs``/0-1 ``targets`` ``[N, C]`` (see the module docstring)."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets) > 0
    global_threshold = max(best_cut(probs.ravel(), targets.ravel())[0], floor)
    positives = targets.sum(axis=0)
    own = positives >= min_positives
    per_class = np.full(probs.shape[1], global_threshold)
    for c in np.flatnonzero(own):
        per_class[c] = max(best_cut(probs[:, c], targets[:, c])[0], floor)
    return Thresholds(
        list(category_ids), per_class, float(global_threshold), own, positives, floor, min_positives
    )


def load_thresholds(folder: str | Path, category_ids: list[str]) -> Thresholds | None:
    """The thresholds saved in a model folder (None if it has none); their classes must be the model's."""
    path = Path(folder) / THRESHOLDS_FILE
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        if values["category_ids"] != list(category_ids):
            raise ThresholdError(
                f"{path}: its classes are not the model's ({len(values['category_ids'])} ids)"
            )
        return Thresholds(
            list(values["category_ids"]),
            np.asarray(values["per_class"], dtype=np.float64),
            float(values["global"]),
            np.asarray(values["own"], dtype=bool),
            np.asarray(values["val_positives"], dtype=np.int64),
            float(values["floor"]),
            int(values["min_positives"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, ThresholdError):
            raise
        raise ThresholdError(f"{path}: not a thresholds file ({exc})") from None


def threshold_vector(
    spec: str, saved: Thresholds | None, num_classes: int, where: str = "--threshold"
) -> np.ndarray:
    """``[C]`` thresholds for ``spec``: ``per-class`` or ``global`` (from ``saved``), or a number P in (0, 1)."""
    if spec in ("per-class", "global"):
        if saved is None:
            raise ThresholdError(
                f"{where} {spec}: the model folder has no {THRESHOLDS_FILE} (chosen on the validation split: "
                "train with data.val_fraction > 0), or give a number such as 0.5"
            )
        return saved.per_class.copy() if spec == "per-class" else np.full(num_classes, saved.global_threshold)
    try:
        value = float(spec)
    except ValueError:
        raise ThresholdError(
            f"{where}: expected global, per-class or a number in (0, 1), got {spec!r}"
        ) from None
    if not 0 < value < 1:
        raise ThresholdError(f"{where}: a probability threshold must be in (0, 1), got {value}")
    return np.full(num_classes, value)


def decide_tags(
    probs: np.ndarray, thresholds: np.ndarray, top_k: int | None = None, min_tags: int = 0
) -> np.ndarray:
    """0/1 tags ``[N, C]``: the classes at or above their threshold, at most the ``top_k`` most probable of
    them, and at least the ``min_tags`` most probable classes of every video."""
    probs = np.asarray(probs, dtype=np.float64)
    tags = probs >= np.asarray(thresholds)[None, :]
    rank = np.argsort(np.argsort(-probs, axis=1, kind="stable"), axis=1, kind="stable")  # 0 = most probable
    if top_k is not None:
        tags &= rank < top_k
    if min_tags:
        tags |= rank < min_tags
    return tags


def tag_lists(tags: np.ndarray, category_ids: list[str], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The served ``tags`` and ``tag_names`` of 0/1 ``tags`` ``[B, C]``: UTF-8 BYTES arrays ``[B, W]``, each row
    the video's class ids (names) in class order, padded with empty strings to the longest row (W >= 1)."""
    rows = [np.flatnonzero(row) for row in np.asarray(tags, dtype=bool)]
    width = max([len(r) for r in rows] + [1])
    ids = np.full((len(rows), width), b"", dtype=object)
    labels = np.full((len(rows), width), b"", dtype=object)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = [category_ids[c].encode() for c in row]
        labels[i, : len(row)] = [names[c].encode() for c in row]
    return ids, labels


def model_tags(
    folder: str | Path,
    config: Any,
    category_ids: list[str],
    probs: np.ndarray,
    threshold: str = "per-class",
    top_k: int | None = None,
    min_tags: int | None = None,
) -> np.ndarray:
    """The tags of ``probs`` as a tagging model folder or artifact (``folder``, its ``config``) decides them:
    its ``thresholds.json`` (or ``threshold`` a number), ``top_k``, and ``min_tags`` (default the model's
    ``train.thresholds.min_tags``)."""
    thresholds = model_thresholds(folder, category_ids, threshold)
    floor = config.train.thresholds.min_tags if min_tags is None else min_tags
    return decide_tags(probs, thresholds, top_k, floor)


def model_thresholds(folder: str | Path, category_ids: list[str], threshold: str = "per-class") -> np.ndarray:
    """``[C]`` thresholds of ``threshold`` (``per-class``, ``global``: a model folder's or artifact's saved ones;
    or a number) for the model in ``folder``."""
    return threshold_vector(threshold, load_thresholds(folder, category_ids), len(category_ids))
