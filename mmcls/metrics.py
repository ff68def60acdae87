"""The WBDC2022 score: F1 on level-1 and level-2 categories, micro and macro, averaged.

``mean_f1 = (lv1_micro_f1 + lv1_macro_f1 + lv2_micro_f1 + lv2_macro_f1) / 4``, where the level-1 label of a
class is its parent in the taxonomy (the packaged WBDC2022 list by default, where it equals the official
scorer's ``int(category_id[:2])``) and F1 is scikit-learn's ``f1_score`` (macro F1 averages over every label
present in either the truth or the predictions, as sklearn does by default). Category ids are strings
throughout: ``"0103"`` keeps its leading zero.

A flat taxonomy (no parents) has level 1 = level 2, so the level-1 scores equal the level-2 ones and
``mean_f1 = (lv2_micro_f1 + lv2_macro_f1) / 2``: the mean of accuracy (micro F1 of single-label
predictions) and macro F1. A mixed file (some top-level classes without children) scores such a class as
its own level-1 group.

Multilabel tagging (``data.task: multilabel``; :func:`multilabel_scores`) is scored as YouTube-8M and TAAC
are: ``gap_at_K`` (global average precision over each video's top K predictions), ``map`` (macro average
precision over the classes with a positive), ``micro_f1``/``macro_f1`` of the predicted tag sets, and the same
per label dimension (a taxonomy's parent: ``{parent_id}/map``, ...).
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, f1_score

from mmcls.data.categories import CategoryMap, official_categories
from mmcls.errors import MmclsError
from mmcls.files import check_regular_file

SCORE_KEYS = ("lv1_micro_f1", "lv1_macro_f1", "lv2_micro_f1", "lv2_macro_f1", "mean_f1")


class EvaluationError(MmclsError, ValueError):
    """A prediction or annotation file is unusable; the message names the file and the line or record."""


def compute_scores(
    true_category_ids: Sequence[str], pred_category_ids: Sequence[str], categories: CategoryMap | None = None
) -> dict[str, float]:
    """Challenge score of predicted category ids (strings like ``"0103"``) against the true ones; level 1
    comes from ``categories`` (default: the packaged WBDC2022 list)."""
    categories = categories or official_categories()
    true_lv2 = [str(c) for c in true_category_ids]
    pred_lv2 = [str(c) for c in pred_category_ids]
    if len(true_lv2) != len(pred_lv2):
        raise ValueError(f"{len(true_lv2)} true labels but {len(pred_lv2)} predictions")
    if not true_lv2:
        raise ValueError("cannot score an empty set of predictions")
    lv1_of = categories.lv1_of_ids()
    unknown = next((c for c in (*true_lv2, *pred_lv2) if c not in lv1_of), None)
    if unknown is not None:
        raise ValueError(f"category id {unknown!r} is not a class of {categories.source}")
    true_lv1 = [lv1_of[c] for c in true_lv2]
    pred_lv1 = [lv1_of[c] for c in pred_lv2]
    scores = {
        # zero_division=0 gives the values of sklearn's default ("warn") without the warning spam that
        # classes predicted but absent from the truth (or the reverse) would cause.
        "lv1_micro_f1": f1_score(true_lv1, pred_lv1, average="micro", zero_division=0),
        "lv1_macro_f1": f1_score(true_lv1, pred_lv1, average="macro", zero_division=0),
        "lv2_micro_f1": f1_score(true_lv2, pred_lv2, average="micro", zero_division=0),
        "lv2_macro_f1": f1_score(true_lv2, pred_lv2, average="macro", zero_division=0),
    }
    scores = {k: float(v) for k, v in scores.items()}
    scores["mean_f1"] = sum(scores.values()) / 4.0
    return scores


def compute_scores_from_indices(
    true_lv2: Sequence[int] | np.ndarray, pred_lv2: Sequence[int] | np.ndarray, categories: CategoryMap
) -> dict[str, float]:
    """Same as :func:`compute_scores` for lv2 index arrays (as the model's argmax produces them)."""
    true_idx = np.asarray(true_lv2, dtype=np.int64).reshape(-1)
    pred_idx = np.asarray(pred_lv2, dtype=np.int64).reshape(-1)
    for name, idx in (("true_lv2", true_idx), ("pred_lv2", pred_idx)):
        bad = (idx < 0) | (idx >= categories.num_lv2)
        if bad.any():
            raise ValueError(
                f"{name}: index {int(idx[bad][0])} out of range [0, {categories.num_lv2}) "
                f"(unlabeled samples, label -1, cannot be scored)"
            )
    ids = np.asarray(categories.category_ids, dtype=object)
    return compute_scores(list(ids[true_idx]), list(ids[pred_idx]), categories)


def read_predictions(pred_csv: str | Path, categories: CategoryMap | None = None) -> dict[str, str]:
    """Read a submission CSV (``id,category_id`` per line, no header) into ``{id: category_id}``."""
    return {video_id: cid for video_id, (cid, _) in _read_prediction_lines(pred_csv, categories).items()}


def _read_prediction_lines(
    pred_csv: str | Path, categories: CategoryMap | None = None, allow_header: bool = False
) -> dict[str, tuple[str, int]]:
    """``{id: (category_id, line number)}``, validating every line (``allow_header``: skip ``id,category_id``)."""
    categories = categories or official_categories()
    known = set(categories.category_ids)
    path = Path(pred_csv)
    predictions: dict[str, tuple[str, int]] = {}
    try:
        check_regular_file(path, what="prediction file")  # a FIFO would hang the read, a device never end
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot open prediction file: {exc}") from exc
    with handle, _utf8_errors(path):
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue  # blank lines (e.g. a trailing one) carry nothing
            if len(row) != 2:
                raise EvaluationError(
                    f"{path}: line {line_no}: expected 2 fields 'id,category_id', got {len(row)}: {row!r}"
                )
            video_id, category_id = row[0].strip(), row[1].strip()
            if allow_header and line_no == 1 and (video_id, category_id) == ("id", "category_id"):
                continue
            if not video_id:
                raise EvaluationError(f"{path}: line {line_no}: empty id")
            if category_id not in known:
                header = line_no == 1 and category_id == "category_id"
                hint = " (a submission has no header line)" if header else ""
                raise EvaluationError(
                    f"{path}: line {line_no}: unknown category_id {category_id!r} for id {video_id} "
                    f"(not a class of {categories.source}){hint}"
                )
            if video_id in predictions:
                raise EvaluationError(
                    f"{path}: line {line_no}: duplicate id {video_id} "
                    f"(first seen on line {predictions[video_id][1]})"
                )
            predictions[video_id] = (category_id, line_no)
    return predictions


@contextlib.contextmanager
def _utf8_errors(path: Path) -> Iterator[None]:
    """Report bytes that are not UTF-8 as one line naming the file and the byte offset."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise EvaluationError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start} of a chunk)"
        ) from None


def read_labels(ann_json: str | Path, categories: CategoryMap | None = None) -> dict[str, str]:
    """Read ``{id: category_id}`` from labeled annotations: a JSON list (``labeled.json``, ``test_labels.json``)
    or the official ground-truth CSV (``id,category_id`` lines, the submission format)."""
    categories = categories or official_categories()
    known = set(categories.category_ids)
    path = Path(ann_json)
    try:
        check_regular_file(path, what="annotation file")
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot open annotation file: {exc.strerror or exc}") from exc
    labels: dict[str, str]
    if _looks_like_csv(path):
        labels = {
            video_id: cid
            for video_id, (cid, _) in _read_prediction_lines(path, categories, allow_header=True).items()
        }
        if not labels:
            raise EvaluationError(f"{path}: no records")
        return labels
    try:
        with path.open(encoding="utf-8") as handle, _utf8_errors(path):
            records = json.load(handle)
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot open annotation file: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(records, list):
        raise EvaluationError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    labels = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise EvaluationError(f"{path}: record {index}: expected an object, got {type(record).__name__}")
        for field in ("id", "category_id"):
            if not isinstance(record.get(field), str):
                raise EvaluationError(
                    f"{path}: record {index}: field '{field}': missing or not a string ({record.get(field)!r})"
                )
        if record["category_id"] not in known:
            raise EvaluationError(
                f"{path}: record {index}: field 'category_id': unknown category id {record['category_id']!r} "
                f"(not a class of {categories.source})"
            )
        if record["id"] in labels:
            raise EvaluationError(f"{path}: record {index}: field 'id': duplicate id {record['id']}")
        labels[record["id"]] = record["category_id"]
    if not labels:
        raise EvaluationError(f"{path}: no records")
    return labels


def _looks_like_csv(path: Path) -> bool:
    """A ``.csv`` name, or content that does not start like JSON (after a BOM and whitespace)."""
    if path.suffix.lower() == ".csv":
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False  # read_labels reports the file in its own words
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    return bool(head) and head[:1] not in (b"[", b"{")


def evaluate_files(
    pred_csv: str | Path, ann_json: str | Path, categories: CategoryMap | None = None
) -> dict[str, float]:
    """Score a submission CSV against an annotation JSON with labels, over ``categories`` (default: the
    packaged WBDC2022 list).

    Every annotated id needs exactly one prediction and every prediction must be for an annotated id;
    otherwise :class:`EvaluationError` names the file and the line (or the missing ids).
    """
    categories = categories or official_categories()
    labels = read_labels(ann_json, categories)
    predictions = _read_prediction_lines(pred_csv, categories)
    for video_id, (_, line_no) in predictions.items():
        if video_id not in labels:
            raise EvaluationError(f"{pred_csv}: line {line_no}: id {video_id} is not in {ann_json}")
    missing = [video_id for video_id in labels if video_id not in predictions]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise EvaluationError(
            f"{pred_csv}: no prediction for {len(missing)} of the {len(labels)} ids in {ann_json}: {shown}"
        )
    ids = list(labels)
    return compute_scores([labels[i] for i in ids], [predictions[i][0] for i in ids], categories)


# ------------------------------------------------------------------------------------------------ multilabel
#: A multilabel prediction file: a CSV with this header, class ids joined by ``|`` (see LABELS_SEPARATOR).
TAG_CSV_HEADER = ("id", "labels")


def gap_at_k(probs: np.ndarray, targets: np.ndarray, k: int = 20) -> float:
    """YouTube-8M's global average precision: the top ``k`` predictions of every video pooled and ranked by
    probability, their average precision with recall over *all* positive labels (those outside a video's top
    ``k`` count as missed). Equal probabilities are one rank (scikit-learn's step-wise AP over thresholds).

    ``probs``/``targets``: ``[N, C]``; 0 when there is no positive label at all.
    """
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets) > 0
    total = int(targets.sum())
    if total == 0 or probs.size == 0:
        return 0.0
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    flat_probs = np.take_along_axis(probs, top, axis=1).ravel()
    flat_hits = np.take_along_axis(targets, top, axis=1).ravel()
    found = int(flat_hits.sum())
    if found == 0:
        return 0.0
    # sklearn's AP divides the recall steps by the positives it sees (``found``); GAP divides by all of them.
    return float(average_precision_score(flat_hits, flat_probs) * found / total)


def multilabel_scores(
    targets: np.ndarray,
    probs: np.ndarray,
    predicted: np.ndarray,
    categories: CategoryMap,
    top_k: int = 20,
) -> dict[str, float]:
    """The multilabel scores of ``probs`` and the predicted 0/1 tags ``predicted`` against 0/1 ``targets``
    (all ``[N, C]`` in ``categories``' class order); see the module docstring for the keys.

    ``map`` averages over the classes with at least one positive (AP is undefined without one); ``macro_f1``
    over the classes present in the truth or the predictions (as the single-label score does). Per-dimension
    keys are left out for a dimension without a positive in the truth.
    """
    targets, predicted = np.asarray(targets) > 0, np.asarray(predicted) > 0
    probs = np.asarray(probs, dtype=np.float64)
    if targets.shape != probs.shape or predicted.shape != probs.shape:
        raise ValueError(
            f"shapes differ: targets {targets.shape}, probs {probs.shape}, tags {predicted.shape}"
        )
    if not len(targets):
        raise ValueError("cannot score an empty set of predictions")
    scores = _tag_scores(targets, probs, predicted, top_k)
    if not categories.is_flat:
        parent_of = np.array([categories.lv1_id(c) for c in categories.category_ids], dtype=object)
        for parent in dict.fromkeys(parent_of):
            columns = parent_of == parent
            if not targets[:, columns].any():
                continue  # a dimension without a positive in the truth has no AP to report
            for key, value in _tag_scores(
                targets[:, columns], probs[:, columns], predicted[:, columns], top_k
            ).items():
                scores[f"{parent}/{key}"] = value
    return scores


def _tag_scores(
    targets: np.ndarray, probs: np.ndarray, predicted: np.ndarray, top_k: int
) -> dict[str, float]:
    positive = targets.any(axis=0)
    present = positive | predicted.any(axis=0)
    mean_ap = (
        float(average_precision_score(targets[:, positive], probs[:, positive], average="macro"))
        if positive.any()
        else 0.0
    )
    return {
        f"gap_at_{top_k}": gap_at_k(probs, targets, top_k),
        "map": mean_ap,
        "micro_f1": float(f1_score(targets, predicted, average="micro", zero_division=0)),
        "macro_f1": float(
            f1_score(targets[:, present], predicted[:, present], average="macro", zero_division=0)
        )
        if present.any()
        else 0.0,
    }


def tag_probs_path(pred_csv: str | Path) -> Path:
    """The probabilities written beside a multilabel prediction file: ``OUT.csv`` -> ``OUT.probs.npy`` (its
    ids and class order in ``OUT.probs.json``)."""
    return Path(pred_csv).with_suffix(".probs.npy")


def is_tag_prediction_file(pred_csv: str | Path) -> bool:
    """Whether ``pred_csv`` starts with the multilabel header ``id,labels`` (the file says which task it is)."""
    import io

    from mmcls.errors import MmclsError
    from mmcls.files import open_regular

    try:  # a regular file only: a FIFO or a device given as --pred must never block or flood here
        with open_regular(pred_csv, what="prediction file") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            first = next(csv.reader(text), [])
    except (OSError, UnicodeDecodeError, MmclsError):
        return False  # the reader of the file reports it in its own words
    return tuple(cell.strip() for cell in first) == TAG_CSV_HEADER


def read_tag_predictions(pred_csv: str | Path, categories: CategoryMap) -> dict[str, tuple[str, ...]]:
    """``{id: class ids}`` of a multilabel prediction file (header ``id,labels``, ids ``|``-separated)."""
    from mmcls.data.annotations import LABELS_SEPARATOR

    path = Path(pred_csv)
    known = set(categories.category_ids)
    try:
        check_regular_file(path, what="prediction file")
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot open prediction file: {exc}") from exc
    predictions: dict[str, tuple[str, ...]] = {}
    with handle, _utf8_errors(path):
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if line_no == 1:
                if tuple(cell.strip() for cell in row) != TAG_CSV_HEADER:
                    raise EvaluationError(f"{path}: line 1: expected the header 'id,labels', got {row!r}")
                continue
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != 2:
                raise EvaluationError(
                    f"{path}: line {line_no}: expected 2 fields 'id,labels', got {len(row)}"
                )
            video_id = row[0].strip()
            tags = tuple(t.strip() for t in row[1].split(LABELS_SEPARATOR) if t.strip())
            unknown = next((t for t in tags if t not in known), None)
            if not video_id or unknown is not None:
                problem = (
                    "empty id" if not video_id else f"unknown class id {unknown!r} ({categories.source})"
                )
                raise EvaluationError(f"{path}: line {line_no}: {problem}")
            if video_id in predictions:
                raise EvaluationError(f"{path}: line {line_no}: duplicate id {video_id}")
            predictions[video_id] = tags
    return predictions


def evaluate_tag_files(
    pred_csv: str | Path, ann: str | Path, categories: CategoryMap, top_k: int = 20
) -> dict[str, float]:
    """Score a multilabel prediction file and the probabilities beside it (:func:`tag_probs_path`) against a
    multilabel annotation file (``labels`` per record, any format); every annotated id needs a prediction."""
    truth, probs, predicted, _ = read_tag_evaluation(pred_csv, ann, categories)
    return multilabel_scores(truth, probs, predicted, categories, top_k)


def read_tag_evaluation(
    pred_csv: str | Path, ann: str | Path, categories: CategoryMap
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """``(truth, probs, predicted, info)`` of :func:`evaluate_tag_files`: 0/1 truth and tags and the
    probabilities ``[N, C]`` in annotation order, and the probabilities' ``.json`` (``info``)."""
    from mmcls.data.annotations import AnnotationError, load_multilabels
    from mmcls.data.prob_files import ProbFileError, load_probs, rows_for

    try:
        truth = load_multilabels(ann, categories=categories)
    except AnnotationError as exc:
        raise EvaluationError(str(exc)) from None
    predictions = read_tag_predictions(pred_csv, categories)
    missing = [video_id for video_id in truth if video_id not in predictions]
    if missing:
        raise EvaluationError(
            f"{pred_csv}: no prediction for {len(missing)} of the {len(truth)} ids in {ann}: {missing[0]}, ..."
        )
    ids = list(truth)
    try:
        probs = rows_for(tag_probs_path(pred_csv), ids, categories)
        info = load_probs(tag_probs_path(pred_csv))[2]
    except ProbFileError as exc:
        raise EvaluationError(
            f"{exc} (GAP and mAP need the probabilities written with the predictions)"
        ) from None
    index = {cid: i for i, cid in enumerate(categories.category_ids)}

    def matrix(rows: list[tuple[str, ...]]) -> np.ndarray:
        out = np.zeros((len(rows), categories.num_lv2), dtype=bool)
        for r, tags in enumerate(rows):
            out[r, [index[t] for t in tags]] = True
        return out

    return matrix([truth[i] for i in ids]), probs, matrix([predictions[i] for i in ids]), info
