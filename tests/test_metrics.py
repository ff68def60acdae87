import csv
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from mmcls.data.categories import official_categories
from mmcls.metrics import (
    SCORE_KEYS,
    EvaluationError,
    compute_scores,
    compute_scores_from_indices,
    evaluate_files,
    read_predictions,
)


def test_hand_computed_example():
    true = ["0100", "0100", "0101", "0200"]
    pred = ["0100", "0101", "0101", "0100"]
    scores = compute_scores(true, pred)
    # lv2: 2 of 4 right; per-class F1: 0100 -> 1/2, 0101 -> 2/3, 0200 -> 0.
    # lv1: true [1, 1, 1, 2], pred [1, 1, 1, 1]; per-class F1: 1 -> 6/7, 2 -> 0.
    expected = {
        "lv1_micro_f1": 0.75,
        "lv1_macro_f1": 3 / 7,
        "lv2_micro_f1": 0.5,
        "lv2_macro_f1": (1 / 2 + 2 / 3) / 3,
    }
    expected["mean_f1"] = sum(expected.values()) / 4
    assert set(scores) == set(SCORE_KEYS)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value), key


def test_matches_sklearn_on_random_labels():
    cats = official_categories()
    rng = np.random.default_rng(0)
    true_idx = rng.integers(cats.num_lv2, size=500)
    # Half right, half random: every kind of error (same lv1, other lv1) occurs.
    pred_idx = np.where(rng.random(500) < 0.5, true_idx, rng.integers(cats.num_lv2, size=500))
    true_ids = [cats.category_id(i) for i in true_idx]
    pred_ids = [cats.category_id(i) for i in pred_idx]
    # lv1 from the shipped table's lv1 column, not from the id string as compute_scores does.
    lv1 = np.asarray(cats.lv1_of_lv2)
    expected = {
        "lv1_micro_f1": f1_score(lv1[true_idx], lv1[pred_idx], average="micro"),
        "lv1_macro_f1": f1_score(lv1[true_idx], lv1[pred_idx], average="macro"),
        "lv2_micro_f1": f1_score(true_idx, pred_idx, average="micro"),
        "lv2_macro_f1": f1_score(true_idx, pred_idx, average="macro"),
    }
    scores = compute_scores(true_ids, pred_ids)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value), key
    assert scores["mean_f1"] == pytest.approx(sum(expected.values()) / 4)
    assert 0.3 < scores["lv2_micro_f1"] < 0.7
    assert compute_scores_from_indices(true_idx, pred_idx, cats) == scores


def test_perfect_and_bad_inputs():
    assert compute_scores(["0000", "2203"], ["0000", "2203"]) == dict.fromkeys(SCORE_KEYS, 1.0)
    with pytest.raises(ValueError, match="2 true labels but 1 predictions"):
        compute_scores(["0000", "0001"], ["0000"])
    with pytest.raises(ValueError, match="empty"):
        compute_scores([], [])
    with pytest.raises(ValueError, match="index -1 out of range"):
        compute_scores_from_indices([0, -1], [0, 1], official_categories())


# ------------------------------------------------------------------------------------------ evaluate_files
IDS = ["00000000000000000001", "13477278056527828998", "99999999999999999999"]
TRUE = ["0103", "1203", "0103"]


def _write_ann(path, ids=IDS, cats=TRUE, full=True):
    records = []
    for video_id, cid in zip(ids, cats):
        extra = {"title": "标题", "asr": "", "ocr": [{"time": 0, "text": "字"}]} if full else {}
        records.append({"id": video_id, "category_id": cid, **extra})
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def _write_csv(path, rows, newline="\n"):
    path.write_text(newline.join(",".join(r) for r in rows) + newline, encoding="utf-8")
    return path


@pytest.mark.parametrize("full", [True, False], ids=["labeled_json", "test_labels_json"])
def test_evaluate_files_round_trip(tmp_path, full):
    ann = _write_ann(tmp_path / "ann.json", full=full)
    pred_ids = ["0103", "1203", "1204"]
    # Order of the lines does not matter; CRLF and a trailing newline are fine.
    rows = list(zip(IDS, pred_ids))[::-1]
    pred = _write_csv(tmp_path / "pred.csv", rows, newline="\r\n")
    assert evaluate_files(pred, ann) == compute_scores(TRUE, pred_ids)
    # Ids and category ids are kept as strings (leading zeros).
    assert read_predictions(pred)["00000000000000000001"] == "0103"


def test_evaluate_files_reads_what_csv_writer_writes(tmp_path):
    ann = _write_ann(tmp_path / "ann.json")
    with (tmp_path / "pred.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(zip(IDS, TRUE))
    assert evaluate_files(tmp_path / "pred.csv", ann)["mean_f1"] == 1.0


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        ([(IDS[0], "0103", "x"), (IDS[1], "1203"), (IDS[2], "0103")], r"line 1: expected 2 fields"),
        ([(IDS[0], "0103"), (IDS[1],), (IDS[2], "0103")], r"line 2: expected 2 fields"),
        ([(IDS[0], "0103"), (IDS[1], "103"), (IDS[2], "0103")], r"line 2: unknown category_id '103'"),
        ([("id", "category_id"), *zip(IDS, TRUE)], r"line 1: .*no header"),
        ([(IDS[0], "0103"), (IDS[1], "1203"), (IDS[0], "0103")], r"line 3: duplicate id .* line 1"),
        ([(IDS[0], "0103"), (IDS[2], "0103")], r"no prediction for 1 of the 3 ids .*13477278056527828998"),
        ([*zip(IDS, TRUE), ("12345678901234567890", "0103")], r"line 4: id 12345678901234567890 is not in"),
        ([(IDS[0], "0103"), ("", "1203"), (IDS[2], "0103")], r"line 2: empty id"),
    ],
    ids=[
        "extra_field",
        "one_field",
        "unknown_category",
        "header",
        "duplicate",
        "missing",
        "extra_id",
        "empty_id",
    ],
)
def test_evaluate_files_errors_name_file_and_line(tmp_path, rows, pattern):
    ann = _write_ann(tmp_path / "ann.json")
    pred = _write_csv(tmp_path / "pred.csv", rows)
    with pytest.raises(EvaluationError, match=pattern) as info:
        evaluate_files(pred, ann)
    assert "pred.csv" in str(info.value)


@pytest.mark.parametrize(
    ("records", "pattern"),
    [
        ({"id": IDS[0]}, r"expected a JSON list of records, got dict"),
        ([{"id": IDS[0], "category_id": "0103"}, {"id": IDS[1]}], r"record 1: field 'category_id'"),
        ([{"id": 5, "category_id": "0103"}], r"record 0: field 'id'"),
        ([{"id": IDS[0], "category_id": "9999"}], r"record 0: field 'category_id': unknown"),
        ([{"id": IDS[0], "category_id": "0103"}] * 2, r"record 1: field 'id': duplicate"),
    ],
    ids=["not_list", "no_label", "int_id", "unknown_category", "duplicate"],
)
def test_evaluate_files_annotation_errors(tmp_path, records, pattern):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(records), encoding="utf-8")
    pred = _write_csv(tmp_path / "pred.csv", zip(IDS, TRUE))
    with pytest.raises(EvaluationError, match=pattern) as info:
        evaluate_files(pred, ann)
    assert "ann.json" in str(info.value)


def test_evaluate_files_missing_files(tmp_path):
    ann = _write_ann(tmp_path / "ann.json")
    with pytest.raises(EvaluationError, match="nope.csv: cannot open"):
        evaluate_files(tmp_path / "nope.csv", ann)
    (tmp_path / "bad.json").write_text("[{", encoding="utf-8")
    with pytest.raises(EvaluationError, match="bad.json: not valid JSON"):
        evaluate_files(tmp_path / "nope.csv", tmp_path / "bad.json")
