"""``data.switch``: from a given epoch on, train on a subset of the training records (dataset switching).

Train on everything (labeled + pseudo-labeled records), then switch to the high-quality part mid-run; the
learning-rate schedule, optimizer, EMA and SWA carry on (the alternative, pretrain-then-fine-tune, restarts
them). Each entry of the list is ``{after_epoch: E, filter: {...}}``: after E epochs (from epoch E+1 on) the
training records are those that pass every key of ``filter``, until the next entry. Filter keys:

- ``source_split: NAME`` (or a list of names): the split whose frames a record comes from; labeled records
  come from ``data.train_split`` (``labeled``), pseudo-labels from their ``source_split`` (``unlabeled``).
  ``source_split: labeled`` drops the pseudo-labels.
- ``min_confidence: X``: records whose label confidence is ``>= X``. A labeled record's is 1; a
  ``data.extra_train`` record's is its ``confidence`` (``mmcls pseudo-label`` writes it), else the top of its
  ``soft_label``, else 1 (a hard label that states no confidence).
- ``ids_file: PATH``: records whose id is a line of that text file.

The epoch's records are a function of the epoch alone (the records, the filters and E), so a resumed run
trains on the same records in the same order as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcls.data.annotations import AnnotationError, Record, iter_annotation_items

FILTER_KEYS = ("source_split", "min_confidence", "ids_file")


@dataclass(frozen=True)
class Phase:
    """Epochs ``[start, ...)`` (0-based) of a run train on ``indices`` of the training set (None: all)."""

    start: int
    filter: dict[str, Any]
    indices: np.ndarray | None

    def describe(self, total: int) -> str:
        what = ", ".join(f"{k}={v}" for k, v in self.filter.items()) or "all records"
        kept = total if self.indices is None else len(self.indices)
        return f"from epoch {self.start + 1}: {kept} of {total} training records ({what})"


def check_switch(entries: Sequence[Any], epochs: int) -> str | None:
    """What is wrong with a ``data.switch`` list (None if nothing), checked when the config is loaded."""
    previous = -1
    for i, entry in enumerate(entries):
        where = f"data.switch[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"after_epoch", "filter"}:
            return f"{where}: expected {{after_epoch: E, filter: {{...}}}}, got {entry!r}"
        after, flt = entry["after_epoch"], entry["filter"]
        if isinstance(after, bool) or not isinstance(after, int) or not 0 < after < epochs:
            return f"{where}.after_epoch: expected an epoch in [1, {epochs - 1}] (train.epochs={epochs}), got {after!r}"
        if after <= previous:
            return f"{where}.after_epoch: {after} is not after the previous entry's {previous}"
        previous = after
        if not isinstance(flt, dict) or not flt:
            return f"{where}.filter: expected a mapping of {', '.join(FILTER_KEYS)}, got {flt!r}"
        problem = _filter_problem(flt)
        if problem:
            return f"{where}.filter.{problem}"
    return None


def _filter_problem(flt: dict[str, Any]) -> str | None:
    unknown = sorted(set(flt) - set(FILTER_KEYS))
    if unknown:
        return f"{unknown[0]}: unknown filter; known: {', '.join(FILTER_KEYS)}"
    splits = flt.get("source_split")
    if splits is not None:
        names = splits if isinstance(splits, list) else [splits]
        if not names or not all(isinstance(s, str) and s for s in names):
            return f"source_split: expected a split name or a list of them, got {splits!r}"
    conf = flt.get("min_confidence")
    if "min_confidence" in flt and (
        isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0 <= conf <= 1
    ):
        return f"min_confidence: expected a number in [0, 1], got {conf!r}"
    path = flt.get("ids_file")
    if "ids_file" in flt and (not isinstance(path, str) or not Path(path).is_file()):
        return f"ids_file: {path!r} is not a file"
    return None


def read_ids_file(path: str | Path) -> set[str]:
    """The ids of a text file, one a line (blank lines and surrounding spaces ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(Path(path), f"unreadable id list: {exc}") from None
    return {line.strip() for line in lines if line.strip()}


def extra_confidences(paths: Sequence[str | Path]) -> dict[str, float]:
    """``{id: confidence}`` of the ``data.extra_train`` records that state one (``confidence`` in [0, 1])."""
    found: dict[str, float] = {}
    for path in paths:
        for index, _, item in iter_annotation_items(Path(path)):
            value = item.get("confidence")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise AnnotationError(
                    Path(path), f"expected a number in [0, 1], got {value!r}", index, "confidence"
                )
            found[str(item.get("id"))] = float(value)
    return found


def build_phases(
    entries: Sequence[dict[str, Any]],
    records: Sequence[Record],
    source_splits: Sequence[str],
    confidences: Sequence[float],
) -> list[Phase]:
    """The run's phases: all records from epoch 0, then each entry's subset (positions in ``records``)."""
    phases = [Phase(0, {}, None)]
    splits, conf = np.asarray(source_splits, dtype=object), np.asarray(confidences, dtype=float)
    for i, entry in enumerate(entries):
        flt = entry["filter"]
        keep = np.ones(len(records), dtype=bool)
        if "source_split" in flt:
            names = flt["source_split"] if isinstance(flt["source_split"], list) else [flt["source_split"]]
            keep &= np.isin(splits, names)
        if "min_confidence" in flt:
            keep &= conf >= flt["min_confidence"]
        if "ids_file" in flt:
            wanted = read_ids_file(flt["ids_file"])
            keep &= np.array([r.id in wanted for r in records], dtype=bool)
        if not keep.any():
            raise AnnotationError(
                Path(str(flt.get("ids_file", "data.switch"))),
                f"data.switch[{i}] keeps none of the {len(records)} training records",
            )
        phases.append(Phase(entry["after_epoch"], dict(flt), np.flatnonzero(keep)))
    return phases


def phase_of(phases: Sequence[Phase], epoch: int) -> Phase:
    """The phase that ``epoch`` (0-based) belongs to."""
    return [p for p in phases if p.start <= epoch][-1]


class EpochSubset(torch.utils.data.Subset):
    """Some samples of a training set: samples keep their ``index`` in the full set (soft targets and frame
    sampling are looked up by it), and ``set_epoch``/``collate_fn`` are the full set's."""

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]  # the training sets all have it

    @property
    def collate_fn(self):
        return self.dataset.collate_fn
