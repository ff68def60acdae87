"""``data.switch``: from an epoch on, the training records are a filtered subset; the run carries on.

The filters are checked on a real classification setup (no training); the resume test trains in-process
twice (uninterrupted, and stopped by a real SIGTERM after the switch, then resumed) and compares bit for bit.
"""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmcls.config import Config, ConfigError
from mmcls.data.annotations import AnnotationError, annotation_path, load_records, write_records
from mmcls.data.categories import official_categories
from mmcls.data.synthetic import make_synthetic_dataset
from mmcls.engine.setup import ClassificationSetup
from mmcls.engine.trainer import Trainer, train

CATEGORIES = official_categories()
FAST = [
    "train.batch_size=8",
    "train.progress_bar=false",
    "train.tensorboard=false",
    "train.log_every_steps=2",
    "data.num_workers=0",
    "data.frames.max_frames=2",
    "data.limit_train=40",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("switch") / "data"
    make_synthetic_dataset(root, 60, 24, 10, seed=3, num_frames=2, image_size=32)
    return root


@pytest.fixture(scope="module")
def pseudo_labels(data_root) -> Path:
    """24 pseudo-labels: 8 with a stated confidence 0.95, 8 with 0.5, 8 with a soft label of top 0.7."""
    items = []
    for i, record in enumerate(load_records(annotation_path(data_root, "unlabeled"))):
        item = {**record.to_dict(), "category_id": CATEGORIES.category_id(i * 7 % 200)}
        if i < 8:
            item["confidence"] = 0.95
        elif i < 16:
            item["confidence"] = 0.5
        else:
            other = CATEGORIES.category_id((i * 7 + 1) % 200)
            item["soft_label"] = {item["category_id"]: 0.7, other: 0.3}
        items.append(item)
    path = data_root.parent / "pseudo.json"
    write_records(path, items)
    return path


def _config(pseudo: Path, switch: str, *settings: str) -> Config:
    return Config.from_yaml(
        "tiny", [*FAST, f"data.extra_train=[{pseudo}]", f"data.switch={switch}", *settings]
    )


def _indices_per_epoch(cfg: Config, data_root: Path) -> tuple[list, list[str], list[str]]:
    setup = ClassificationSetup(cfg, data_root)
    setup.datasets()
    ids = [r.id for r in setup._train_records]
    return [setup.train_indices(e) for e in range(cfg.train.epochs)], ids, setup._train_splits


def test_each_filter_selects_its_records_from_its_epoch_on(data_root, pseudo_labels, tmp_path):
    labeled = {r.id for r in load_records(annotation_path(data_root, "labeled"))}
    chosen = sorted(labeled)[:10]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(chosen) + "\n\n")
    switch = (
        "[{after_epoch: 1, filter: {source_split: labeled}}, {after_epoch: 2, filter: {min_confidence: 0.9}},"
        f" {{after_epoch: 3, filter: {{ids_file: {ids_file}}}}}]"
    )
    per_epoch, ids, splits = _indices_per_epoch(_config(pseudo_labels, switch, "train.epochs=4"), data_root)
    assert per_epoch[0] is None and len(ids) == 36 + 24  # 40 labeled minus 10% validation, 24 pseudo
    assert [ids[i] for i in per_epoch[1]] == [i for i, s in zip(ids, splits) if s == "labeled"]
    # Labeled records (confidence 1) and the 8 pseudo-labels that state 0.95; not 0.5, not a soft top of 0.7.
    assert len(per_epoch[2]) == 36 + 8
    assert {ids[i] for i in per_epoch[3]} == set(chosen) & set(ids)
    # Epoch E's records depend on E only: asked again (as a resumed run does), the same.
    again, _, _ = _indices_per_epoch(_config(pseudo_labels, switch, "train.epochs=4"), data_root)
    assert all(np.array_equal(a, b) for a, b in zip(per_epoch[1:], again[1:]))


@pytest.mark.parametrize(
    ("switch", "message"),
    [
        (
            "[{after_epoch: 2, filter: {source_split: labeled}}]",
            r"after_epoch: expected an epoch in \[1, 1\]",
        ),
        ("[{after_epoch: 1, filter: {confidence: 0.9}}]", "confidence: unknown filter"),
        (
            "[{after_epoch: 1, filter: {min_confidence: 1.5}}]",
            r"min_confidence: expected a number in \[0, 1\]",
        ),
        (
            "[{after_epoch: 1, filter: {ids_file: /no/such/ids.txt}}]",
            "ids_file: '/no/such/ids.txt' is not a file",
        ),
        ("[{after_epoch: 1}]", r"data.switch\[0\]: expected \{after_epoch"),
        ("[{after_epoch: 1, filter: {}}]", r"data.switch\[0\].filter: expected a mapping"),
    ],
)
def test_bad_switch_settings_are_refused_when_the_config_is_loaded(switch, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_yaml("tiny", ["train.epochs=2", f"data.switch={switch}"])


def test_a_filter_that_keeps_nothing_is_refused_before_training(data_root, pseudo_labels, tmp_path):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("not-a-record\n")
    cfg = _config(pseudo_labels, f"[{{after_epoch: 1, filter: {{ids_file: {ids_file}}}}}]", "train.epochs=2")
    with pytest.raises(AnnotationError, match=r"data.switch\[0\] keeps none of the 60 training records"):
        train(cfg, data_root, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


class StopAtStep(Trainer):
    """Sends itself a real SIGTERM after optimizer step ``stop_step`` (the loop then saves and returns)."""

    stop_step = 0

    def train_step(self, micro_batches):
        losses = super().train_step(micro_batches)
        if self.state.global_step + 1 == self.stop_step:  # the loop counts the step after train_step
            os.kill(os.getpid(), signal.SIGTERM)
        return losses


def _metrics(run_dir: Path) -> dict[tuple[str, str], str]:
    with (run_dir / "metrics.csv").open() as fh:
        return {(r["step"], r["tag"]): r["value"] for r in csv.DictReader(fh)}


def test_a_run_resumed_after_the_switch_matches_the_uninterrupted_run(data_root, pseudo_labels, tmp_path):
    # Epoch 1: 60 records (7 steps of 8); epochs 2-3: the 36 labeled ones (4 steps). EMA, SWA and dropout on.
    settings = [
        "train.epochs=3",
        "train.ema_decay=0.9",
        "train.swa_start_epoch=2",
        "train.checkpoint_every_steps=3",
    ]
    cfg = _config(pseudo_labels, "[{after_epoch: 1, filter: {source_split: labeled}}]", *settings)
    reference = train(cfg, data_root, tmp_path / "reference")
    assert reference.global_step == 7 + 4 + 4
    assert reference.data_phases == [
        {"first_epoch": 1, "last_epoch": 1, "records": 60, "samples": 56},
        {"first_epoch": 2, "last_epoch": 3, "records": 36, "samples": 64},
    ]

    run_dir = tmp_path / "resumed"
    StopAtStep.stop_step = 9  # inside epoch 2, after the switch
    stopped = StopAtStep(cfg, data_root, run_dir).fit()
    assert stopped.interrupted and stopped.global_step == 9
    resumed = train(cfg, data_root, run_dir, resume=True)
    assert resumed.global_step == reference.global_step and resumed.best_score == reference.best_score

    for name in ("last", "best"):
        expected = load_file(tmp_path / "reference" / name / "model.safetensors")
        got = load_file(run_dir / name / "model.safetensors")
        for key in expected:
            assert torch.equal(got[key], expected[key]), f"{name}/{key}"
    assert _metrics(run_dir) == _metrics(tmp_path / "reference")  # the log: losses, lr, switch, validation
    assert _metrics(run_dir)[("7", "data/train_records")] == "36"
    summary = (run_dir / "summary.md").read_text()
    assert "| 1-1 | 60 | 56 |" in summary and "| 2-3 | 36 | 64 |" in summary
