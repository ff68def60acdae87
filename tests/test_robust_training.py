"""Training survives broken data: corrupt JPEGs, truncated/missing zips, bad feature arrays, broken videos.

Every test damages some files of a small synthetic dataset and trains on it in-process (the real trainer, real
files). The problems must be counted per kind in ``RUN_DIR/data_errors.json`` and logged at the end of each
epoch, and handled as ``data.frames.on_error`` says: ``text_only`` (the sample keeps its text, with an empty
frame mask), ``drop`` (the sample leaves its batch and is counted as ``dropped_samples``) or ``raise`` (the
run stops with an error naming the file, also when the file was read in a DataLoader worker process).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from mmcls.config import Config
from mmcls.data.annotations import AnnotationError, annotation_path, load_records
from mmcls.data.builders import build_dataset
from mmcls.data.categories import official_categories
from mmcls.data.folds import split_train_val
from mmcls.data.frames import FrameError
from mmcls.engine.trainer import train

from commands import QUIET, run_mmcls, tiny_config, train_args

FEATURE_DIM = 16
BATCH = 8


@pytest.fixture(scope="module")
def clean_data(synthetic_data) -> Path:
    """24 labeled videos of 2-6 frames; 16 of them train (2 full batches), 8 validate."""
    return synthetic_data(24, 0, 0, seed=11, num_frames=4, image_size=32, feature_dim=FEATURE_DIM)


@pytest.fixture
def data_root(clean_data, tmp_path) -> Path:
    """A private copy of the clean dataset, to damage."""
    return Path(shutil.copytree(clean_data, tmp_path / "data"))


def make_config(*overrides: str) -> Config:
    """The tiny preset for 2 short epochs, with 8 frames per clip: more than the 2-6 a synthetic video has, so
    every frame is read and a single bad frame is counted in every epoch."""
    return tiny_config(
        "train.epochs=2",
        f"train.batch_size={BATCH}",
        *QUIET,
        "data.num_workers=0",
        "data.val_fraction=0.34",
        "data.frames.max_frames=8",
        *overrides,
    )


FEATS = (
    "data.frames.source=zip_feats",
    f"data.frames.feature_dim={FEATURE_DIM}",
    "model.frame_encoder.type=identity",
    f"model.frame_encoder.input_dim={FEATURE_DIM}",
)


def split_ids(cfg: Config, root: Path) -> tuple[list[str], list[str]]:
    """The (train, val) ids the trainer will use, every training sample read once per epoch."""
    records = load_records(annotation_path(root, "labeled"), require_label=True)
    if cfg.data.limit_train:
        records = records[: cfg.data.limit_train]
    train_records, val_records = split_train_val(records, cfg.data.val_fraction, cfg.train.seed)
    assert len(train_records) % cfg.train.batch_size == 0, "drop_last would leave samples unread"
    return [r.id for r in train_records], [r.id for r in val_records]


def frame_zip(root: Path, video_id: str) -> Path:
    return root / "zip_frames" / "labeled" / video_id[-3:] / f"{video_id}.zip"


def rewrite_zip(path: Path, change) -> None:
    """Rewrite the zip at ``path`` with ``change(name, data) -> bytes | None`` applied (None drops a member)."""
    with zipfile.ZipFile(path) as zf:
        members = [(name, zf.read(name)) for name in zf.namelist()]
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            new = change(name, data)
            if new is not None:
                zf.writestr(name, new)


def truncated_jpeg(data: bytes) -> bytes:
    return data[: len(data) // 3]  # a real JPEG header, then the scan data stops


def damage_frames(root: Path, ids: list[str]) -> dict[str, str]:
    """Damage four videos' frame zips in four ways; ``id -> what the whole clip becomes``."""
    partial, all_bad, truncated, missing = ids
    first = sorted(zipfile.ZipFile(frame_zip(root, partial)).namelist())[0]
    rewrite_zip(frame_zip(root, partial), lambda n, d: truncated_jpeg(d) if n == first else d)
    rewrite_zip(frame_zip(root, all_bad), lambda n, d: b"\xff\xd8 not really a jpeg")
    path = frame_zip(root, truncated)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    frame_zip(root, missing).unlink()
    return {partial: "one_bad_frame", all_bad: "bad_image", truncated: "bad_zip", missing: "missing_file"}


def data_report(run_dir: Path) -> dict:
    return json.loads((run_dir / "data_errors.json").read_text())


def epoch_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if ": data problems" in r.getMessage()]


# ------------------------------------------------------------------------------------------- zip frames
def test_text_only_counts_each_kind_every_epoch_and_finishes(data_root, tmp_path, caplog, bert_tokenizer):
    cfg = make_config()
    train_ids, val_ids = split_ids(cfg, data_root)
    damaged = damage_frames(data_root, train_ids[3:7])
    frame_zip(data_root, val_ids[0]).unlink()  # evaluation falls back to text too, whatever the policy

    with caplog.at_level(logging.WARNING, logger="mmcls"):
        result = train(cfg, data_root, tmp_path / "run")

    per_epoch = {"bad_image": 2, "bad_zip": 1, "missing_file": 1}
    report = data_report(tmp_path / "run")
    assert report["train"] == {
        "epoch_1": per_epoch,
        "epoch_2": per_epoch,
        "total": {k: 2 * v for k, v in per_epoch.items()},
    }
    # The validation sample without frames is scored on its text and reported separately.
    assert report["val"] == {
        "epoch_1": {"missing_file": 1},
        "epoch_2": {"missing_file": 1},
        "total": {"missing_file": 2},
    }
    warnings = epoch_warnings(caplog)
    assert len(warnings) == 2 and warnings[0].startswith("epoch 1: data problems")
    assert all(f"'{kind}': {n}" in warnings[1] for kind, n in per_epoch.items())
    assert result.global_step == 2 * 16 // BATCH and result.last_metrics["num_samples"] == len(val_ids)
    assert (tmp_path / "run" / "last" / "model.safetensors").is_file()

    # What those samples looked like: text kept, frames empty (or one frame short for the partial zip).
    records = {r.id: r for r in load_records(annotation_path(data_root, "labeled"), require_label=True)}
    dataset = build_dataset(
        cfg, data_root, "labeled", list(records.values()), bert_tokenizer, official_categories(), train=True
    )
    index = {video_id: i for i, video_id in enumerate(records)}
    for video_id, outcome in damaged.items():
        sample = dataset[index[video_id]]
        assert sample["id"] == video_id and len(sample["input_ids"]) > 2
        if outcome == "one_bad_frame":
            frames = len(zipfile.ZipFile(frame_zip(data_root, video_id)).namelist())
            assert sample["frame_errors"] == ["bad_image"] and sample["frame_mask"].sum() == frames - 1
        else:
            assert sample["frame_errors"] == [outcome]
            assert not sample["frame_mask"].any() and torch.all(sample["frames"] == 0)


def test_drop_leaves_broken_samples_out_and_counts_them(data_root, tmp_path, caplog):
    cfg = make_config("data.frames.on_error=drop", "train.epochs=1")
    train_ids, _ = split_ids(cfg, data_root)
    damage_frames(data_root, train_ids[:4])
    with caplog.at_level(logging.WARNING, logger="mmcls"):
        result = train(cfg, data_root, tmp_path / "run")
    # The partial zip still has readable frames: kept, its bad frame counted. The other three are dropped.
    assert data_report(tmp_path / "run")["train"]["epoch_1"] == {"bad_image": 1, "dropped_samples": 3}
    assert "'dropped_samples': 3" in epoch_warnings(caplog)[0]
    assert sum("sample dropped" in r.getMessage() for r in caplog.records) == 3
    assert result.global_step == 16 // BATCH


def test_raise_stops_with_an_error_naming_the_file(data_root, tmp_path):
    cfg = make_config("data.frames.on_error=raise")
    train_ids, _ = split_ids(cfg, data_root)
    path = frame_zip(data_root, train_ids[5])
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(FrameError) as info:
        train(cfg, data_root, tmp_path / "run")
    assert info.value.kind == "bad_zip" and info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: bad_zip: not a readable zip file")


# --------------------------------------------------------------------------------------- feature zips
def test_unreadable_npy_and_wrong_width_features(data_root, tmp_path, caplog):
    cfg = make_config(*FEATS, "train.epochs=1")
    train_ids, _ = split_ids(cfg, data_root)
    garbage, wide, gone = train_ids[:3]

    def damage(name: str, data: bytes) -> bytes | None:
        if name == f"{garbage}.npy":
            return b"\x93NUMPY garbage"
        if name == f"{wide}.npy":
            buffer = io.BytesIO()
            np.save(buffer, np.zeros((3, FEATURE_DIM + 1), np.float16))
            return buffer.getvalue()
        return None if name == f"{gone}.npy" else data

    rewrite_zip(data_root / "zip_feats" / "labeled.zip", damage)
    with caplog.at_level(logging.WARNING, logger="mmcls"):
        train(cfg, data_root, tmp_path / "run")
    assert data_report(tmp_path / "run")["train"]["epoch_1"] == {
        "bad_npy": 1,
        "wrong_shape": 1,
        "missing_file": 1,
    }
    assert epoch_warnings(caplog)
    assert (tmp_path / "run" / "last" / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------- videos
@pytest.mark.slow  # decoding the real clip takes ~0.3 s per sample
def test_empty_and_undecodable_videos(data_root, tmp_path, shared_data, caplog):
    cfg = make_config(
        "data.frames.source=video",
        f"data.frames.video_dir={tmp_path / 'videos'}",
        "data.frames.video_ext=.mp4",
        "data.limit_train=10",
        "data.val_fraction=0.2",
        "train.epochs=1",
        "train.batch_size=4",
    )
    train_ids, val_ids = split_ids(cfg, data_root)
    (tmp_path / "videos").mkdir()
    for video_id in train_ids + val_ids:  # an MPEG-1 clip under a .mp4 name: decord probes the content
        (tmp_path / "videos" / f"{video_id}.mp4").symlink_to(shared_data / "cityCC0.mpg")
    empty, garbage, gone = train_ids[:3]
    for video_id in (empty, garbage, gone):
        (tmp_path / "videos" / f"{video_id}.mp4").unlink()
    (tmp_path / "videos" / f"{empty}.mp4").write_bytes(b"")
    (tmp_path / "videos" / f"{garbage}.mp4").write_bytes(os.urandom(4096))
    with caplog.at_level(logging.WARNING, logger="mmcls"):
        train(cfg, data_root, tmp_path / "run")
    assert data_report(tmp_path / "run")["train"]["epoch_1"] == {"bad_video": 2, "missing_file": 1}
    assert epoch_warnings(caplog)
    assert (tmp_path / "run" / "last" / "model.safetensors").is_file()


# ------------------------------------------------------------------------ errors from worker processes
class _Failing(Dataset):
    """Raises ``error()`` for every item, inside the DataLoader worker."""

    def __init__(self, error) -> None:
        self.error = error

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise self.error()


def _first_batch_error(dataset: Dataset) -> BaseException:
    """The exception the main process sees when a worker raises; the loader is shut down before returning."""
    loader = iter(DataLoader(dataset, num_workers=1))
    try:
        next(loader)
    except Exception as exc:  # noqa: BLE001 - the type is what is being tested
        return exc
    finally:
        loader._shutdown_workers()
    pytest.fail("the worker did not raise")


def test_frame_error_from_a_worker_keeps_its_type_message_and_fields(tmp_path, bert_tokenizer, clean_data):
    cfg = make_config("data.frames.on_error=raise")
    records = load_records(annotation_path(clean_data, "labeled"), require_label=True)[:2]
    empty_root = tmp_path / "empty"  # no zips at all: every sample's frames are missing
    dataset = build_dataset(
        cfg, empty_root, "labeled", records, bert_tokenizer, official_categories(), train=True
    )
    error = _first_batch_error(dataset)
    path = frame_zip(empty_root, records[0].id)
    assert type(error) is FrameError
    assert str(error) == f"{path}: missing_file: no such zip file"
    assert (error.kind, error.path, error.detail, error.member) == (
        "missing_file",
        str(path),
        "no such zip file",
        None,
    )
    assert "DataLoader worker" in error.worker_traceback  # the worker's traceback is kept for debugging

    member = FrameError("bad_zip", "/d/1.zip", "cannot read member: Bad CRC-32", "0001.jpg")
    error = _first_batch_error(_Failing(lambda: member))
    assert type(error) is FrameError and str(error) == str(member)
    assert (error.kind, error.path, error.detail, error.member) == (
        "bad_zip",
        "/d/1.zip",
        member.detail,
        "0001.jpg",
    )


def test_annotation_error_from_a_worker_keeps_its_type_message_and_fields(tmp_path):
    bad = tmp_path / "labeled.json"
    bad.write_text('[{"id": "1", "title": "t", "asr": "", "ocr": [{"time": 1}]}]')

    def load_bad():
        try:
            load_records(bad)
        except AnnotationError as exc:
            return exc
        raise AssertionError("expected an AnnotationError")

    original = load_bad()
    error = _first_batch_error(_Failing(load_bad))
    assert type(error) is AnnotationError and str(error) == str(original)
    assert str(error) == f"{bad}: record 0: field 'ocr[0].text': missing"
    assert (error.path, error.index, error.field, error.problem) == (str(bad), 0, "ocr[0].text", "missing")


@pytest.mark.slow
def test_cli_raise_with_workers_prints_one_clean_line(data_root, tmp_path):
    cfg = make_config()
    train_ids, _ = split_ids(cfg, data_root)
    path = frame_zip(data_root, train_ids[0])
    path.unlink()
    settings = [
        "data.frames.on_error=raise",
        "data.num_workers=1",
        "train.epochs=1",
        f"train.batch_size={BATCH}",
        "data.val_fraction=0.34",
        *QUIET,
    ]
    proc = run_mmcls(*train_args(data_root, tmp_path / "run", settings), expect=2, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == f"mmcls train: error: {path}: missing_file: no such zip file", proc.stderr
    assert "Traceback" not in proc.stderr and "RuntimeError" not in proc.stderr
