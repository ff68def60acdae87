"""Broken, odd or hostile input: one line and exit 2, never a hang, a memory blow-up or a wrong result.

Issue 12, classes 3 and 4: corrupt model folders, non-UTF-8 files, symlinks to /dev/zero, FIFOs, pixel bombs,
duplicate ids, and what the official baseline accepts (missing asr/ocr, frames without a suffix, a CSV ground
truth).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import stat
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from mmcls.cli import main
from mmcls.config import Config, FrameConfig
from mmcls.data.annotations import annotation_path, load_records, write_records
from mmcls.data.categories import official_categories
from mmcls.data.frames import FrameError, ZipFramesSource
from mmcls.data.text import load_tokenizer
from mmcls.models import build_model, save_model_dir

VIDEO_ID = "12345678901234567890"


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(24, 2, 6, seed=2, num_frames=2, image_size=32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random-init tiny model folder (what training releases), saved once for the module."""
    cfg = Config.from_yaml("tiny", ["data.frames.max_frames=2"])
    tokenizer = load_tokenizer(cfg.data.text.tokenizer)
    folder = tmp_path_factory.mktemp("model") / "model"
    save_model_dir(folder, build_model(cfg, vocab_size=len(tokenizer)), cfg, tokenizer, official_categories())
    return folder


def broken_copy(model_dir: Path, tmp_path: Path, name: str, content: bytes | None, edit=None) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir()
    for item in model_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    if content is not None:
        (folder / name).write_bytes(content)
    if edit is not None:
        path = folder / name
        path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    return folder


def predict(model: Path, data_root: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "predict",
            str(model),
            "--data-root",
            str(data_root),
            "--out",
            str(out),
            "--num-workers",
            "0",
            *extra,
        ]
    )


# ------------------------------------------------------------------------------------ model folders (class 3)
def test_model_folder_files_have_ordinary_permissions(model_dir):
    for item in model_dir.iterdir():
        assert stat.S_IMODE(item.stat().st_mode) & 0o044 == 0o044, item  # readable by group and others


@pytest.mark.parametrize(
    ("name", "content", "edit", "expected"),
    [
        ("model.safetensors", b"", None, "model.safetensors: not a readable safetensors file"),
        ("model.safetensors", "truncate", None, "model.safetensors: not a readable safetensors file"),
        ("model.safetensors", pickle.dumps({"w": [1, 2, 3]}), None, "model.safetensors: not a readable"),
        ("categories.json", b'{"category_ids": [', None, "categories.json: not a valid category map"),
        ("categories.json", b'{"ids": []}', None, "categories.json: not a valid category map"),
        ("categories.json", b"\xff\xfe", None, "categories.json: not a valid category map"),
        (
            "config.yaml",
            None,
            lambda text: text.replace("num_hidden_layers: 2", "num_hidden_layers: 3"),
            "weights do not match config.yaml",
        ),
        ("config.yaml", b"model: [unclosed", None, "config.yaml: not valid YAML"),
    ],
    ids=["empty", "truncated", "pickle", "bad-json", "no-ids", "not-utf8", "mismatch", "bad-yaml"],
)
def test_broken_model_folder_is_one_line(
    model_dir, data_root, tmp_path, capsys, name, content, edit, expected
):
    if content == "truncate":
        content = (model_dir / name).read_bytes()[:1000]
    folder = broken_copy(model_dir, tmp_path, name, content, edit)
    assert predict(folder, data_root, tmp_path / "out.csv") == 2
    assert expected in one_line(capsys)
    assert not (tmp_path / "out.csv").exists()


# ----------------------------------------------------------------------------------------- predict outputs
def test_predict_writes_totals_once_and_a_report(model_dir, data_root, tmp_path, capsys):
    """Every frame missing: predictions from the text alone, and the totals per kind printed and written."""
    root = tmp_path / "data"
    (root / "annotations").mkdir(parents=True)
    write_records(annotation_path(root, "test"), load_records(annotation_path(data_root, "test")))
    out = tmp_path / "result.csv"
    assert predict(model_dir, root, out) == 0
    printed = capsys.readouterr().out
    assert printed.count("missing_file: 6") == 1
    assert json.loads((tmp_path / "result.data_errors.json").read_text()) == {
        "frames": {"missing_file": 6},
        "total": 6,
    }
    assert len(out.read_text().splitlines()) == 6


def test_predict_never_writes_onto_its_own_annotation_file(model_dir, data_root, tmp_path, capsys):
    ann = annotation_path(data_root, "test")
    before = ann.read_bytes()
    assert predict(model_dir, data_root, ann) == 2
    assert "is an input of this command" in one_line(capsys)
    assert ann.read_bytes() == before


def test_a_failed_predict_leaves_the_previous_csv(model_dir, data_root, tmp_path, capsys):
    out = tmp_path / "result.csv"
    out.write_text("1,0101\n")
    folder = broken_copy(model_dir, tmp_path, "model.safetensors", b"")
    assert predict(folder, data_root, out) == 2
    capsys.readouterr()
    assert out.read_text() == "1,0101\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "broken",
        "result.csv",
    ]


def test_duplicate_ids_are_an_error_for_prediction(model_dir, data_root, tmp_path, capsys):
    root = tmp_path / "data"
    records = load_records(annotation_path(data_root, "test"))
    write_records(annotation_path(root, "test"), [*records, records[1]])
    assert predict(model_dir, root, tmp_path / "out.csv") == 2
    line = one_line(capsys)
    assert f"record {len(records)}" in line and "duplicate id" in line and records[1].id in line
    # The exported-artifact path (mmcls.deploy's Predictor) reads the split through the same checks.
    from mmcls.data.annotations import AnnotationError
    from mmcls.deploy.predictor import Predictor

    with pytest.raises(AnnotationError, match="duplicate id"):
        Predictor.from_path(model_dir, device="cpu").predict_split(root, num_workers=0, progress=False)


# --------------------------------------------------------------------------------------------- evaluate
def test_evaluate_non_utf8_files_are_one_line(data_root, tmp_path, capsys):
    ann = annotation_path(data_root, "test_labels")
    good = tmp_path / "good.csv"
    good.write_text("".join(f"{r['id']},{r['category_id']}\n" for r in json.loads(ann.read_text())))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_bytes(good.read_bytes() + b"1,\xff\xfe\n")
    assert main(["evaluate", "--pred", str(bad_csv), "--ann", str(ann)]) == 2
    assert "bad.csv: not UTF-8" in one_line(capsys)
    bad_json = tmp_path / "labels.json"
    bad_json.write_bytes(ann.read_bytes().replace(b'"id"', b'"\xff"', 1))
    assert main(["evaluate", "--pred", str(good), "--ann", str(bad_json)]) == 2
    assert "labels.json: not UTF-8" in one_line(capsys)


def test_evaluate_accepts_the_official_csv_ground_truth(data_root, tmp_path, capsys):
    labels = json.loads(annotation_path(data_root, "test_labels").read_text())
    truth = tmp_path / "test_labels.csv"
    truth.write_text("".join(f"{r['id']},{r['category_id']}\n" for r in labels))
    assert main(["evaluate", "--pred", str(truth), "--ann", str(truth)]) == 0
    assert json.loads(capsys.readouterr().out)["mean_f1"] == 1.0


def test_empty_labeled_split_is_one_line(tmp_path, capsys):
    root = tmp_path / "data"
    write_records(annotation_path(root, "labeled"), [])
    args = [
        "train",
        "tiny",
        "--data-root",
        str(root),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "data.num_workers=0",
    ]
    assert main(args) == 2
    assert "no labeled records" in one_line(capsys)


# ---------------------------------------------------------------------------------------- hostile frames
def frames_source(root: Path, **kw) -> ZipFramesSource:
    return ZipFramesSource(FrameConfig(max_frames=4, image_size=32, **kw), root)


def zip_path(root: Path) -> Path:
    path = root / VIDEO_ID[-3:] / f"{VIDEO_ID}.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_a_symlink_to_dev_zero_is_refused_quickly(tmp_path):
    zip_path(tmp_path).symlink_to("/dev/zero")
    start = time.perf_counter()
    with pytest.raises(FrameError) as info:
        frames_source(tmp_path).read(VIDEO_ID)
    assert info.value.kind == "bad_zip" and "a device" in str(info.value)
    assert time.perf_counter() - start < 5


def test_a_fifo_is_refused_without_hanging(tmp_path):
    os.mkfifo(zip_path(tmp_path))
    start = time.perf_counter()
    with pytest.raises(FrameError) as info:
        frames_source(tmp_path).read(VIDEO_ID)
    assert info.value.kind == "bad_zip" and "FIFO" in str(info.value)
    assert time.perf_counter() - start < 5


def test_an_oversized_zip_file_is_refused(tmp_path, write_zip, jpeg_bytes):
    write_zip(zip_path(tmp_path), {"0.jpg": jpeg_bytes(10), "1.jpg": jpeg_bytes(20)})
    with pytest.raises(FrameError, match="more than the limit of 100"):
        frames_source(tmp_path, max_file_bytes=100).read(VIDEO_ID)


def test_a_pixel_bomb_is_refused_before_decoding(tmp_path, write_zip, jpeg_bytes):
    """A 12000x12000 PNG of one colour compresses to well under a megabyte, under the zip-ratio guard."""
    buffer = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buffer, format="PNG")
    write_zip(zip_path(tmp_path), {"0.png": buffer.getvalue(), "1.jpg": jpeg_bytes(100)}, zipfile.ZIP_STORED)
    start = time.perf_counter()
    clip = frames_source(tmp_path).read(VIDEO_ID)
    assert clip.errors == ["bad_image"] and int(clip.mask.sum()) == 1  # the bomb skipped, the real frame kept
    assert time.perf_counter() - start < 5


def test_frames_without_an_image_suffix_are_tried(tmp_path, write_zip, jpeg_bytes):
    write_zip(zip_path(tmp_path), {"frame_0": jpeg_bytes(10), "frame_1": jpeg_bytes(200)})
    clip = frames_source(tmp_path).read(VIDEO_ID)
    assert int(clip.mask.sum()) == 2 and clip.errors == []


def test_evaluate_refuses_a_fifo_without_hanging(data_root, tmp_path, capsys):
    fifo = tmp_path / "pred.csv"
    os.mkfifo(fifo)
    start = time.perf_counter()
    assert (
        main(["evaluate", "--pred", str(fifo), "--ann", str(annotation_path(data_root, "test_labels"))]) == 2
    )
    assert "pred.csv: prediction file is a FIFO" in one_line(capsys)
    assert main(["evaluate", "--pred", str(tmp_path / "x.csv"), "--ann", str(fifo)]) == 2
    assert "annotation file is a FIFO" in one_line(capsys)
    assert time.perf_counter() - start < 10
