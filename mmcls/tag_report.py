"""``mmcls evaluate --task multilabel --report DIR``: where a tagger is right and wrong, class by class.

``per_class.csv``: every class with its frequency in the ground truth, average precision, F1 of the predicted
tags, how often it was predicted, and the threshold used (when the prediction file recorded it), most
frequent first, so AP can be read against frequency (the long tail). ``false_positives.csv``: the classes
tagged most often where the truth does not have them. ``summary.json``: the scores and the ten most frequent
false positives.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score

from mmcls.data.categories import CategoryMap
from mmcls.files import REPORT_MARKER, atomic_write_text, claim_output_dir

TOP_FALSE_POSITIVES = 10


def class_table(
    truth: np.ndarray,
    probs: np.ndarray,
    predicted: np.ndarray,
    categories: CategoryMap,
    thresholds: Any = None,
) -> list[dict[str, Any]]:
    """One row per class (see the module docstring), most frequent in the truth first."""
    rows = []
    for c, cid in enumerate(categories.category_ids):
        true, pred = truth[:, c], predicted[:, c]
        hits, positives, tagged = int((true & pred).sum()), int(true.sum()), int(pred.sum())
        f1 = 2 * hits / (positives + tagged) if positives + tagged else 0.0
        rows.append(
            {
                "category_id": cid,
                "name": categories.name(cid),
                "dimension": categories.lv1_id(cid),
                "positives": positives,
                "frequency": round(positives / max(len(truth), 1), 6),
                "ap": round(float(average_precision_score(true, probs[:, c])), 6) if positives else math.nan,
                "f1": round(f1, 6),
                "predicted": tagged,
                "false_positives": tagged - hits,
                "threshold": None if thresholds is None else thresholds[c],
            }
        )
    return sorted(rows, key=lambda r: (-r["positives"], r["category_id"]))


def write_tag_report(
    out: str | Path,
    scores: dict[str, float],
    truth: np.ndarray,
    probs: np.ndarray,
    predicted: np.ndarray,
    categories: CategoryMap,
    thresholds: Any = None,
    *,
    overwrite: bool = False,
) -> None:
    """Write the report folder ``out`` (refused if it is someone else's non-empty folder, unless ``overwrite``)."""
    out = Path(out)
    claim_output_dir(out, REPORT_MARKER, overwrite=overwrite, command="evaluate --report")
    rows = class_table(truth, probs, predicted, categories, thresholds)
    atomic_write_text(out / "per_class.csv", _csv(rows))
    false_positives = sorted((r for r in rows if r["false_positives"]), key=lambda r: -r["false_positives"])
    fp_rows = [
        {k: r[k] for k in ("category_id", "name", "false_positives", "positives")} for r in false_positives
    ]
    atomic_write_text(
        out / "false_positives.csv", _csv(fp_rows, ["category_id", "name", "false_positives", "positives"])
    )
    summary = {"scores": scores, "most_frequent_false_positives": fp_rows[:TOP_FALSE_POSITIVES]}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


def _csv(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
