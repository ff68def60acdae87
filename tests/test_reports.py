"""Reports people would rather look at than read (issue 12, class 5).

``mmcls evaluate --report DIR`` writes an offline HTML page with PNG plots, ``per_class.csv`` and
``summary.json``; a training run ends with ``curves.png`` and ``summary.md``; ``mmcls info`` describes the
installation; progress bars stay out of logs. When Debian's ``chromium`` is installed the report is rendered
headless and the screenshot must show something.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from mmcls.cli import main
from mmcls.config import Config
from mmcls.data.annotations import write_records
from mmcls.data.categories import official_categories
from mmcls.engine.logger import show_progress
from mmcls.run_report import write_run_report

REPORT_FILES = {
    ".mmcls-report",
    "index.html",
    "per_class.csv",
    "summary.json",
    "f1_vs_frequency.png",
    "confusion_lv1.png",
}


@pytest.fixture(scope="module")
def submission(tmp_path_factory) -> tuple[Path, Path]:
    """A ground truth with a long tail and titles (test.json + test_labels.json) and a 60%-right submission."""
    folder = tmp_path_factory.mktemp("report")
    rng = random.Random(0)
    ids = official_categories().category_ids
    weights = [1 / (i + 1) for i in range(len(ids))]  # long tail, like the real data
    records = [
        {
            "id": f"{10**19 + i}",
            "title": f"视频标题 {i} <b>&",
            "asr": "",
            "ocr": [],
            "category_id": rng.choices(ids, weights)[0],
        }
        for i in range(400)
    ]
    write_records(folder / "test.json", [{k: v for k, v in r.items() if k != "category_id"} for r in records])
    labels = folder / "test_labels.json"
    labels.write_text(json.dumps([{"id": r["id"], "category_id": r["category_id"]} for r in records]))
    pred = folder / "result.csv"
    pred.write_text(
        "".join(
            f"{r['id']},{r['category_id'] if rng.random() < 0.6 else rng.choice(ids[:40])}\n" for r in records
        )
    )
    return pred, labels


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def test_evaluate_report_files_numbers_and_offline_html(submission, tmp_path, capsys):
    pred, labels = submission
    report = tmp_path / "report"
    assert main(["evaluate", "--pred", str(pred), "--ann", str(labels), "--report", str(report)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert {p.name for p in report.iterdir()} == REPORT_FILES
    summary = json.loads((report / "summary.json").read_text())
    assert summary["scores"] == scores and summary["num_samples"] == 400
    pair = summary["most_confused_pairs"][0]
    assert pair["count"] >= 1 and pair["true"] != pair["predicted"]
    rows = list(csv.DictReader((report / "per_class.csv").open()))
    assert sum(int(r["support"]) for r in rows) == 400 and sum(int(r["predicted"]) for r in rows) == 400
    f1 = np.array([float(r["f1"]) for r in rows if int(r["support"]) or int(r["predicted"])])
    assert f1.mean() == pytest.approx(scores["lv2_macro_f1"], abs=1e-5)  # the table and the score agree

    page = (report / "index.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(page)
    assert "f1_vs_frequency.png" in parser.links and "confusion_lv1.png" in parser.links
    for link in parser.links:  # everything the page references is a file inside DIR
        assert "://" not in link and not link.startswith(("/", "..")), link
        assert (report / link).is_file(), link
    assert "://" not in page and "@import" not in page
    assert "视频标题" in page and "<b>&" not in page  # example titles shown, and escaped
    for png in ("f1_vs_frequency.png", "confusion_lv1.png"):
        image = np.asarray(Image.open(report / png).convert("L"))
        assert image.std() > 10, png  # a plot, not a blank canvas


def test_report_refuses_a_foreign_folder(submission, tmp_path, capsys):
    pred, labels = submission
    (tmp_path / "mine.txt").write_text("mine")
    assert main(["evaluate", "--pred", str(pred), "--ann", str(labels), "--report", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(submission, tmp_path):
    pred, labels = submission
    report = tmp_path / "report"
    assert main(["evaluate", "--pred", str(pred), "--ann", str(labels), "--report", str(report)]) == 0
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,1600",
            f"--screenshot={shot}",
            (report / "index.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    image = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert image.shape[0] >= 800 and image.shape[1] >= 800
    assert image.std() > 20  # text, tables and plots, not a blank page
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # the colour plots rendered


def test_training_report_curves_and_summary(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with (run / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", "step", "epoch", "tag", "value"])
        for step in range(1, 41):
            writer.writerow([0, step, step // 20, "train/loss", 5 / step])
            writer.writerow([0, step, step // 20, "train/lr/text", 1e-3 * min(1, step / 5)])
        for step, f1 in ((20, 0.3), (40, 0.5)):
            writer.writerow([0, step, step // 20, "val/mean_f1", f1])
    (run / "data_errors.json").write_text(json.dumps({"train": {"epoch_1": {}, "total": {"bad_image": 3}}}))
    cfg = Config.from_yaml("tiny", ["train.lr=0.002", "train.epochs=2"])
    result = SimpleNamespace(
        global_step=40,
        best_epoch=2,
        best_score=0.5,
        last_metrics={"mean_f1": 0.5},
        selection_metric="mean_f1",
    )
    write_run_report(run, cfg, result, seconds=95.0)
    summary = (run / "summary.md").read_text()
    assert "preset `tiny`" in summary and "| `train.lr` | 0.001 | 0.002 |" in summary
    assert "best epoch: 2" in summary and "bad_image: 3" in summary and "1.6 min" in summary
    image = np.asarray(Image.open(run / "curves.png").convert("L"))
    assert image.shape[1] > 1000 and image.std() > 10


def test_info_lists_versions_devices_and_offline_weights(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["torch"] and "TensorRT" in info["versions"]
    assert "status" in info["cuda"]
    assert {row["kind"] for row in info["pretrained_offline"]} >= {"text_encoder"}


def test_progress_bars_are_off_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", open(Path("/dev/null"), "w"))  # noqa: SIM115 - closed by monkeypatch's process
    assert show_progress(True) is False and show_progress(False) is False
