"""``mmcls pseudo-label``: an annotation file of the confident predictions of an ensemble on a split.

The file is an ordinary annotation file (it passes the same validation as ``labeled.json``), so training
takes it with ``data.extra_train: [labels.json]``. Each record keeps its text and adds ``category_id`` (the
ensemble's argmax), ``confidence``, ``source_split`` (where its frames are) and, with ``soft``, ``soft_label``:
the ensemble's probabilities (those of at least :data:`MIN_SOFT_PROB`, renormalised when read).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmcls.data.annotations import annotation_path, load_records, write_records
from mmcls.names import BEST_DIR, CONFIG_FILE
from mmcls.workflows.ensemble import EnsembleError, blend, guard_member_outputs, refuse_existing
from mmcls.workflows.members import GROUPS_FILE, PredictOptions, fold_dir, load_member, same_categories

MIN_SOFT_PROB = 1e-4  # smaller probabilities are left out of soft_label (the file stays readable)


def pseudo_label(
    member_paths: Sequence[str | Path],
    data_root: str | Path,
    split: str,
    out: str | Path,
    min_confidence: float,
    *,
    soft: bool = False,
    options: PredictOptions | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the records whose mean member probability of the top class is ``>= min_confidence``; returns
    how many passed and the class histogram (level-2 and level-1)."""
    from mmcls.engine.distributed import world_info_from_env

    if not 0.0 <= min_confidence <= 1.0:
        raise EnsembleError(f"--min-confidence must be in [0, 1], got {min_confidence}")
    out = Path(out)
    guard_member_outputs([("--out", out)], member_paths, data_root, split)
    refuse_existing([out], overwrite)
    options = options or PredictOptions()
    members = [load_member(p) for p in member_paths]
    categories = same_categories(members)
    ids, member_probs = None, []
    for member in members:
        member_ids, probs = member.predict(data_root, split, options)
        ids = ids or member_ids
        member_probs.append(probs)
    probs = blend(member_probs, [1.0 / len(members)] * len(members))
    files = member_annotation_files(member_paths[0])
    records = load_records(annotation_path(data_root, split, files), categories=categories)
    assert [r.id for r in records] == ids
    confidence = probs.max(axis=1)
    chosen = np.flatnonzero(confidence >= min_confidence)
    labels = [categories.category_id(int(probs[i].argmax())) for i in chosen]

    def items():
        for i, category_id in zip(chosen, labels):
            item = records[i].to_dict()
            item["category_id"] = category_id
            item["confidence"] = round(float(confidence[i]), 6)
            item["source_split"] = split
            if soft:
                kept = np.flatnonzero(probs[i] >= MIN_SOFT_PROB)
                item["soft_label"] = {
                    categories.category_id(int(c)): round(float(probs[i, c]), 6) for c in kept
                }
            yield item

    if world_info_from_env().is_main:
        write_records(out, items())
    histogram = Counter(labels)
    lv1_counts = Counter(categories.lv1_id(c) for c in labels)  # level 1 from the taxonomy, in its order
    return {
        "out": str(out),
        "split": split,
        "members": [m.name for m in members],
        "min_confidence": min_confidence,
        "soft": soft,
        "records": len(records),
        "passed": len(chosen),
        "passed_fraction": round(len(chosen) / max(len(records), 1), 4),
        "lv1_histogram": {g: lv1_counts[g] for g in categories.lv1_ids if g in lv1_counts},
        "histogram": dict(histogram.most_common()),
    }


def member_annotation_files(path: str | Path) -> dict[str, str]:
    """The ``data.annotations`` a member predicted with (where it found each split's records).

    The config of a model folder, run directory or exported artifact, of a kfold directory's first fold or of
    a group fine-tune's base model; ``{}`` (the default layout) when none is found.
    """
    from mmcls.config import Config

    path = Path(path)
    folders = [path, path / BEST_DIR, fold_dir(path, 0)]
    if (path / GROUPS_FILE).is_file():
        folders.append(Path(json.loads((path / GROUPS_FILE).read_text(encoding="utf-8"))["base"]))
    for folder in folders:
        if (folder / CONFIG_FILE).is_file():
            return Config.from_yaml(folder / CONFIG_FILE).data.annotations
    return {}
