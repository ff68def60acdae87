"""``data.extra_train``: extra labelled records (pseudo-labels) appended to a run's training records.

An extra file is an ordinary annotation file (it passes the same validation as ``labeled.json``: every record
needs a ``category_id``) whose records may carry two more keys, which the annotation reader ignores:

- ``source_split``: the split whose frames the record's id names (default ``unlabeled``, where
  ``mmcls pseudo-label`` reads from): its frames are read from ``DATA_ROOT/zip_frames/<source_split>/``.
- ``soft_label``: ``{category_id: probability}`` soft targets (the missing classes are 0; the values are
  normalised to sum to 1). Records without it are trained on their hard ``category_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcls.data.annotations import AnnotationError, Record, iter_annotation_items, load_records
from mmcls.data.categories import CategoryMap
from mmcls.data.dataset import VideoTextDataset

DEFAULT_SOURCE_SPLIT = "unlabeled"


@dataclass
class ExtraRecords:
    """The records of all ``data.extra_train`` files, in order, with each one's frame split and soft target."""

    records: list[Record] = field(default_factory=list)
    source_splits: list[str] = field(default_factory=list)
    soft_targets: list[np.ndarray | None] = field(default_factory=list)  # [num_classes] or None (hard label)

    def __len__(self) -> int:
        return len(self.records)

    def by_split(self) -> list[tuple[str, list[Record]]]:
        """``(split, records)`` runs in record order (:func:`load_extra_train` groups records by split)."""
        runs: list[tuple[str, list[Record]]] = []
        for record, split in zip(self.records, self.source_splits):
            if not runs or runs[-1][0] != split:
                runs.append((split, []))
            runs[-1][1].append(record)
        return runs


def load_extra_train(
    paths: Sequence[str | Path], categories: CategoryMap, labeled_ids: set[str] | None = None
) -> ExtraRecords:
    """Read and validate the extra training files; an id seen twice, or also in the labeled split, is an error
    (a labeled record twice would weigh double, a validation record would leak into training)."""
    extra = ExtraRecords()
    seen: dict[str, Path] = {}
    for raw_path in paths:
        path = Path(raw_path)
        records = load_records(path, require_label=True, categories=categories)  # the normal validation
        extras = list(_iter_extra_fields(path, categories))
        for index, (record, (split, soft)) in enumerate(zip(records, extras)):
            if labeled_ids is not None and record.id in labeled_ids:
                raise AnnotationError(path, f"id {record.id} is also a labeled record", index, "id")
            if record.id in seen:
                raise AnnotationError(
                    path, f"duplicate id {record.id} (also in {seen[record.id]})", index, "id"
                )
            seen[record.id] = path
            extra.records.append(record)
            extra.source_splits.append(split)
            extra.soft_targets.append(soft)
    # Grouped by frame split (stable), so that each split becomes one dataset.
    order = sorted(range(len(extra)), key=lambda i: extra.source_splits[i])
    return ExtraRecords(
        [extra.records[i] for i in order],
        [extra.source_splits[i] for i in order],
        [extra.soft_targets[i] for i in order],
    )


def _iter_extra_fields(path: Path, categories: CategoryMap):
    """``(source_split, soft target or None)`` of every record of ``path`` (already validated as records)."""
    for index, _, item in iter_annotation_items(path):  # any annotation format
        split = item.get("source_split", DEFAULT_SOURCE_SPLIT)
        if not isinstance(split, str) or not split or "/" in split or split.startswith("."):
            raise AnnotationError(path, f"expected a split name, got {split!r}", index, "source_split")
        soft = item.get("soft_label")
        yield split, None if soft is None else _soft_target(soft, categories, path, index)


def _soft_target(value: Any, categories: CategoryMap, path: Path, index: int) -> np.ndarray:
    if not isinstance(value, dict) or not value:
        raise AnnotationError(
            path, "expected a non-empty {category_id: probability} object", index, "soft_label"
        )
    target = np.zeros(categories.num_lv2, dtype=np.float32)
    for category_id, prob in value.items():
        where = f"soft_label.{category_id}"
        if category_id not in categories.category_ids:
            raise AnnotationError(path, f"unknown category id {category_id!r}", index, where)
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not np.isfinite(prob) or prob < 0:
            raise AnnotationError(path, f"expected a probability >= 0, got {prob!r}", index, where)
        target[categories.lv2_index(category_id)] = prob
    total = float(target.sum())
    if total <= 0:
        raise AnnotationError(path, "probabilities sum to 0", index, "soft_label")
    return target / total


class ConcatTrainingSets(torch.utils.data.Dataset):
    """Several training datasets as one, whose samples' ``index`` is the position in the concatenation.

    The training loss looks soft and teacher targets up by that index, and each part reads its frames from
    its own split (labeled records from ``labeled``, pseudo-labels from ``unlabeled``).
    """

    def __init__(self, parts: Sequence[VideoTextDataset]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0, *(len(p) for p in self.parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def records(self) -> list[Record]:
        return [r for part in self.parts for r in part.records]

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    @property
    def collate_fn(self):
        """The parts' collate function (they are all plain video-text datasets)."""
        return self.parts[0].collate_fn

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        which = int(np.searchsorted(self.offsets, index, side="right")) - 1
        sample = self.parts[which][index - int(self.offsets[which])]
        if sample is not None:
            sample["index"] = index
        return sample
