"""``mmcls evaluate --report DIR``: a report of a submission that people would rather look at than read.

``DIR/index.html`` opens offline (no external URL: styles and the table-sorting script are inline, the plots are
PNG files beside it) and shows the scores, per-class F1 against class frequency (macro F1 is lost in the long
tail, and this plot shows where), the level-1 confusion matrix, the most confused level-2 pairs with example
titles, and a sortable per-class precision/recall/F1 table. The same numbers are in ``DIR/per_class.csv`` and
``DIR/summary.json`` for scripts. Classes are shown by id and name, and level 1 comes from the taxonomy (its
parent rows; the packaged WBDC2022 list by default).
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mmcls.data.categories import CategoryMap, official_categories
from mmcls.files import (
    REPORT_MARKER,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_writer,
    claim_output_dir,
)
from mmcls.metrics import compute_scores

TOP_PAIRS = 15
EXAMPLES_PER_PAIR = 3


def write_evaluation_report(
    out_dir: str | Path,
    labels: dict[str, str],
    predictions: dict[str, str],
    *,
    titles: dict[str, str] | None = None,
    sources: dict[str, str] | None = None,
    overwrite: bool = False,
    categories: CategoryMap | None = None,
) -> dict[str, Any]:
    """Write the report of ``predictions`` against ``labels`` (both ``{id: category_id}``) over the taxonomy
    ``categories`` (default: the packaged WBDC2022 list); returns the summary."""
    categories = categories or official_categories()
    out = Path(out_dir)
    claim_output_dir(out, REPORT_MARKER, overwrite=overwrite, command="evaluate --report")
    ids = list(labels)
    true = [labels[i] for i in ids]
    pred = [predictions[i] for i in ids]
    per_class = per_class_scores(true, pred, categories)
    pairs = confused_pairs(ids, true, pred, titles or {}, categories)
    lv1_labels, lv1_matrix = lv1_confusion(true, pred, categories)
    summary = {
        "scores": compute_scores(true, pred, categories),
        "num_samples": len(ids),
        "accuracy": float(np.mean([t == p for t, p in zip(true, pred)])),
        "num_classes_in_truth": len(set(true)),
        "classes_never_predicted_right": sum(1 for row in per_class if row["support"] and row["f1"] == 0),
        "most_confused_pairs": [{k: v for k, v in p.items() if k != "examples"} for p in pairs],
        "sources": sources or {},
        "files": ["index.html", "per_class.csv", "summary.json", "f1_vs_frequency.png", "confusion_lv1.png"],
    }
    _write_per_class_csv(out / "per_class.csv", per_class)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "f1_vs_frequency.png", _plot_f1_vs_frequency(per_class))
    atomic_write_bytes(out / "confusion_lv1.png", _plot_confusion(lv1_labels, lv1_matrix))
    atomic_write_text(out / "index.html", _html(summary, per_class, pairs))
    return summary


def per_class_scores(
    true: list[str], pred: list[str], categories: CategoryMap | None = None
) -> list[dict[str, Any]]:
    """One row per level-2 class present in the truth or the predictions, in taxonomy order: id, name, level-1
    id, support, precision, recall, F1."""
    categories = categories or official_categories()
    true_counts, pred_counts = Counter(true), Counter(pred)
    hits = Counter(t for t, p in zip(true, pred) if t == p)
    rows = []
    for cid in sorted(set(true) | set(pred), key=categories.lv2_index):
        precision = hits[cid] / pred_counts[cid] if pred_counts[cid] else 0.0
        recall = hits[cid] / true_counts[cid] if true_counts[cid] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "category_id": cid,
                "name": categories.name(cid),
                "lv1_id": categories.lv1_id(cid),
                "support": true_counts[cid],
                "predicted": pred_counts[cid],
                "correct": hits[cid],
                "precision": round(precision, 6),
                "recall": round(recall, 6),
                "f1": round(f1, 6),
            }
        )
    return rows


def confused_pairs(
    ids: list[str],
    true: list[str],
    pred: list[str],
    titles: dict[str, str],
    categories: CategoryMap | None = None,
) -> list[dict[str, Any]]:
    """The most frequent (true, predicted) level-2 mistakes, each with a few example ids and titles."""
    categories = categories or official_categories()
    mistakes = Counter((t, p) for t, p in zip(true, pred) if t != p)
    pairs = []
    for (t, p), count in mistakes.most_common(TOP_PAIRS):
        examples = [i for i, ti, pi in zip(ids, true, pred) if (ti, pi) == (t, p)][:EXAMPLES_PER_PAIR]
        pairs.append(
            {
                "true": t,
                "true_name": categories.name(t),
                "predicted": p,
                "predicted_name": categories.name(p),
                "count": count,
                "share_of_true_class": round(count / true.count(t), 4),
                "examples": [{"id": i, "title": titles.get(i, "")} for i in examples],
            }
        )
    return pairs


def lv1_confusion(
    true: list[str], pred: list[str], categories: CategoryMap | None = None
) -> tuple[list[str], np.ndarray]:
    """Level-1 ids present in either list (taxonomy order) and the ``[true, predicted]`` count matrix."""
    categories = categories or official_categories()
    lv1_of = categories.lv1_of_ids()
    true_lv1 = [lv1_of[c] for c in true]
    pred_lv1 = [lv1_of[c] for c in pred]
    present = sorted(set(true_lv1) | set(pred_lv1))
    index = {label: i for i, label in enumerate(present)}
    matrix = np.zeros((len(present), len(present)), dtype=np.int64)
    for t, p in zip(true_lv1, pred_lv1):
        matrix[index[t], index[p]] += 1
    return [categories.lv1_ids[i] for i in present], matrix


def load_titles(ann_path: str | Path) -> dict[str, str]:
    """``{id: title}`` from the annotation file, or from the split next to a ``*_labels.json`` (best effort).

    The titles only illustrate the confused pairs: an unreadable or absent file gives an empty map.
    """
    path = Path(ann_path)
    candidates = [path]
    if path.stem.endswith("_labels"):
        candidates.append(path.with_name(path.stem[: -len("_labels")] + path.suffix))
    for candidate in candidates:
        try:
            records = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(records, list):
            found = {
                r["id"]: r["title"]
                for r in records
                if isinstance(r, dict) and isinstance(r.get("id"), str) and isinstance(r.get("title"), str)
            }
            if found:
                return found
    return {}


# --------------------------------------------------------------------------------------------------- files
def _write_per_class_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_writer(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _figure_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _plot_f1_vs_frequency(rows: list[dict[str, Any]]) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    present = [r for r in rows if r["support"] > 0]
    support = np.array([r["support"] for r in present])
    f1 = np.array([r["f1"] for r in present])
    groups = {g: i for i, g in enumerate(dict.fromkeys(r["lv1_id"] for r in present))}
    colour = [groups[r["lv1_id"]] for r in present]
    scatter = ax.scatter(support, f1, c=colour, cmap="tab20", s=22, alpha=0.85)
    ax.set_xscale("log")
    ax.set_xlabel("class frequency in the ground truth (samples, log scale)")
    ax.set_ylabel("F1 of the class")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("Per-class F1 against class frequency (colour = level-1 category)")
    ax.grid(alpha=0.3)
    bar = fig.colorbar(scatter, ax=ax, label="level-1 id")
    if len(groups) <= 30:  # one tick per group, labelled with its id
        bar.set_ticks(range(len(groups)), labels=list(groups))
    return _figure_png(fig)


def _plot_confusion(labels: list[str], matrix: np.ndarray) -> bytes:
    plt = _pyplot()
    size = max(5.0, 0.32 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(labels))
    ax.set_xticks(ticks, [str(label) for label in labels], fontsize=7)
    ax.set_yticks(ticks, [str(label) for label in labels], fontsize=7)
    ax.set_xlabel("predicted level-1 id")
    ax.set_ylabel("true level-1 id")
    ax.set_title("Level-1 confusion (row-normalised)")
    fig.colorbar(image, ax=ax, label="share of the true class")
    return _figure_png(fig)


# ---------------------------------------------------------------------------------------------------- html
_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eef; cursor: pointer; user-select: none; }
td.text { text-align: left; }
.scores td { font-size: 1.1em; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
"""

# Click a header to sort by it (numbers numerically); a second click reverses.
_SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var asc = th.dataset.order !== "asc";
    th.dataset.order = asc ? "asc" : "desc";
    var rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent, y = b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? cmp : -cmp;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _html(summary: dict[str, Any], rows: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> str:
    e = html.escape
    scores = summary["scores"]
    score_cells = "".join(f"<th>{e(k)}</th>" for k in scores)
    score_values = "".join(f"<td>{v:.4f}</td>" for v in scores.values())
    sources = "".join(f"<li>{e(k)}: <code>{e(str(v))}</code></li>" for k, v in summary["sources"].items())
    pair_rows = "".join(
        f"<tr><td class='text'>{e(_label(p['true'], p['true_name']))}</td>"
        f"<td class='text'>{e(_label(p['predicted'], p['predicted_name']))}</td><td>{p['count']}</td>"
        f"<td>{p['share_of_true_class']:.2%}</td><td class='text'>"
        + "<br>".join(e(f"{x['id']}: {x['title'] or '(no title available)'}") for x in p["examples"])
        + "</td></tr>"
        for p in pairs
    )
    columns = list(rows[0])
    class_head = "".join(f"<th>{e(c)}</th>" for c in columns)
    class_rows = "".join(
        "<tr>" + "".join(f"<td>{e(_cell(row[c]))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mmcls evaluation report</title>
<style>{_STYLE}</style></head><body>
<h1>Evaluation report</h1>
<ul>{sources}<li>samples: {summary["num_samples"]}, classes in the ground truth: {summary["num_classes_in_truth"]},
accuracy: {summary["accuracy"]:.4f}, classes present but never predicted right:
{summary["classes_never_predicted_right"]}</li></ul>
<table class="scores"><thead><tr>{score_cells}</tr></thead><tbody><tr>{score_values}</tr></tbody></table>
<h2>Per-class F1 against class frequency</h2>
<p>Macro F1 weighs every class equally: rare classes at the left decide it as much as the frequent ones.</p>
<img src="f1_vs_frequency.png" alt="per-class F1 against class frequency">
<h2>Level-1 confusion</h2>
<img src="confusion_lv1.png" alt="level-1 confusion matrix">
<h2>Most confused level-2 pairs</h2>
<table class="sortable"><thead><tr><th>true</th><th>predicted</th><th>count</th><th>share of true class</th>
<th>examples</th></tr></thead><tbody>{pair_rows}</tbody></table>
<h2>Per-class scores</h2>
<p>Click a column header to sort. The same numbers: <a href="per_class.csv">per_class.csv</a>,
<a href="summary.json">summary.json</a>.</p>
<table class="sortable"><thead><tr>{class_head}</tr></thead><tbody>{class_rows}</tbody></table>
<script>{_SORT_SCRIPT}</script>
</body></html>
"""


def _label(category_id: str, name: str) -> str:
    """``id name``, or the id alone when the class has no name of its own."""
    return category_id if name == category_id else f"{category_id} {name}"


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
