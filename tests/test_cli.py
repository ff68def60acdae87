"""The command line, end to end, as a user runs it: real processes, real files."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from mmcls.data.annotations import load_records
from mmcls.metrics import SCORE_KEYS

from commands import QUIET, SMALL_VOCAB_SETTING, run_mmcls

FAST_TINY = [
    SMALL_VOCAB_SETTING,
    "train.epochs=2",
    "train.batch_size=16",
    "data.num_workers=0",
    *QUIET,
    "data.frames.max_frames=4",
]


def mmcls(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m mmcls ARGS`` in a child process; exit 0 expected unless ``check`` is false."""
    return run_mmcls(*args, expect=0 if check else None)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "data"
    mmcls(
        "make-data",
        str(root),
        "--num-labeled",
        "96",
        "--num-unlabeled",
        "8",
        "--num-test",
        "40",
        "--seed",
        "3",
        "--num-frames",
        "4",
        "--image-size",
        "32",
    )
    return root


def test_help_lists_the_commands():
    out = mmcls("--help").stdout
    for command in ("make-data", "train", "evaluate", "predict", "demo", "info"):
        assert command in out


@pytest.mark.slow
def test_train_predict_evaluate_through_the_cli(data_root, tmp_path):
    run_dir = tmp_path / "run"
    train = mmcls(
        "train",
        "tiny",
        "--data-root",
        str(data_root),
        "--out",
        str(run_dir),
        *[arg for item in FAST_TINY for arg in ("--set", item)],
    )
    summary = json.loads(train.stdout[train.stdout.index("{") :])
    assert summary["best_epoch"] in (1, 2)
    for name in (
        "config.yaml",
        "metrics.csv",
        "data_errors.json",
        "best/model.safetensors",
        "last/config.yaml",
        "curves.png",
        "summary.md",
    ):
        assert (run_dir / name).exists(), name

    # predict takes the run directory (its best/ model) and writes one line per test record, in order.
    out_csv = tmp_path / "result.csv"
    mmcls(
        "predict",
        str(run_dir),
        "--data-root",
        str(data_root),
        "--split",
        "test",
        "--out",
        str(out_csv),
        "--num-workers",
        "0",
    )
    rows = list(csv.reader(out_csv.open()))
    test_ids = [r.id for r in load_records(data_root / "annotations" / "test.json")]
    assert [r[0] for r in rows] == test_ids
    assert all(len(r) == 2 and len(r[1]) == 4 for r in rows)

    scores = json.loads(
        mmcls(
            "evaluate", "--pred", str(out_csv), "--ann", str(data_root / "annotations" / "test_labels.json")
        ).stdout
    )
    assert set(SCORE_KEYS) <= set(scores)
    assert scores["mean_f1"] == pytest.approx(
        (scores["lv1_micro_f1"] + scores["lv1_macro_f1"] + scores["lv2_micro_f1"] + scores["lv2_macro_f1"])
        / 4
    )


def test_malformed_annotation_is_one_clear_line(data_root, tmp_path):
    bad_root = tmp_path / "bad"
    (bad_root / "annotations").mkdir(parents=True)
    records = json.loads((data_root / "annotations" / "labeled.json").read_text())
    records[5]["ocr"] = "not a list"
    (bad_root / "annotations" / "labeled.json").write_text(json.dumps(records, ensure_ascii=False))
    proc = mmcls("train", "tiny", "--data-root", str(bad_root), "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2
    assert "labeled.json" in proc.stderr and "record 5" in proc.stderr and "ocr" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_reports_bad_prediction_file(data_root, tmp_path):
    pred = tmp_path / "pred.csv"
    pred.write_text("123,9999\n")
    proc = mmcls(
        "evaluate",
        "--pred",
        str(pred),
        "--ann",
        str(data_root / "annotations" / "test_labels.json"),
        check=False,
    )
    assert proc.returncode == 2 and "pred.csv" in proc.stderr and "Traceback" not in proc.stderr
