"""Annotation files people already have: JSON Lines and CSV besides the official JSON list, ``data.annotations``
naming each split's file, and a record's own ``video`` path (read only inside the data root when relative)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmcls.cli import main
from mmcls.config import Config, ConfigError
from mmcls.data.annotations import (
    AnnotationError,
    Record,
    annotation_path,
    load_labels,
    load_records,
    write_records,
)
from mmcls.data.builders import build_dataset
from mmcls.data.categories import official_categories
from mmcls.data.frames import FrameError, VideoFileSource
from mmcls.data.synthetic import make_synthetic_dataset
from mmcls.data.text import load_tokenizer
from mmcls.engine.trainer import train

from commands import ONE_EPOCH

CATEGORIES = official_categories()
LABEL = CATEGORIES.category_ids[7]
FAST = list(ONE_EPOCH)


def write_jsonl(path: Path, records: list[Record]) -> Path:
    path.write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def write_csv(path: Path, records: list[Record]) -> Path:
    """The records as CSV, ``ocr`` as the official JSON list (the only form that keeps several timed lines)."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "title", "asr", "ocr", "category_id", "video"])
        for r in records:
            ocr = json.dumps(r.to_dict()["ocr"], ensure_ascii=False)
            writer.writerow([r.id, r.title, r.asr, ocr, r.category_id or "", r.video or ""])
    return path


def hard_records() -> list[Record]:
    """Records that stress CSV quoting and JSON escaping: commas, quotes, newlines, Chinese, empty fields."""
    return [
        Record(
            "101", '标题, 带 "引号"', "第一句\n第二句", [(0.5, "甲"), (2.0, "乙, 丙")], LABEL, "clips/a b.mp4"
        ),
        Record("102", "", "", [], None),
        Record("103", "[广告] 不是 JSON", "asr", [(1.0, "[1, 2]")], LABEL),
    ]


def read_error(path: Path, **kw) -> AnnotationError:
    with pytest.raises(AnnotationError) as info:
        load_records(path, **kw)
    assert "\n" not in str(info.value)
    return info.value


# --------------------------------------------------------------------------------------------- formats


def test_jsonl_and_csv_give_the_records_of_the_json_list(tmp_path):
    records = hard_records()
    write_records(tmp_path / "a.json", records)
    for path in (
        tmp_path / "a.json",
        write_jsonl(tmp_path / "a.jsonl", records),
        write_csv(tmp_path / "a.csv", records),
    ):
        assert load_records(path) == records, path.name
    # The official JSON form keeps the video path, so a record survives every round trip.
    assert json.loads((tmp_path / "a.json").read_text("utf-8"))[0]["video"] == "clips/a b.mp4"
    labeled = [r for r in records if r.category_id]
    write_csv(tmp_path / "l.csv", labeled)
    assert load_labels(tmp_path / "l.csv") == {r.id: r.category_id for r in labeled}


def test_csv_columns_cells_bom_and_blank_lines(tmp_path):
    path = tmp_path / "a.csv"
    # Only id and title; an extra column is ignored; BOM and blank lines are fine; a plain-text OCR cell.
    path.write_text("\ufeffid,title,source\n\n1,t1,web\n2,t2,app\n", encoding="utf-8")
    assert load_records(path) == [Record("1", "t1", "", []), Record("2", "t2", "", [])]
    path.write_text(
        'id,ocr,category_id,video\n3,屏幕上的字,,\n4,"[{""time"": 3, ""text"": ""x""}]",,v.mp4\n', "utf-8"
    )
    assert load_records(path) == [
        Record("3", "", "", [(0.0, "屏幕上的字")]),
        Record("4", "", "", [(3.0, "x")], None, "v.mp4"),
    ]


def test_jsonl_blank_lines_and_bom(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": "1", "title": "t"}\n\n  \n{"id": "2", "title": "u", "video": null}\n'
    )
    assert load_records(path) == [Record("1", "t", "", []), Record("2", "u", "", [])]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"id": "1", "title": "t"}\n{"id": "2", "title": "t"\n',
            r"a\.jsonl: line 2: invalid JSON: Expecting ',' delimiter",
        ),
        (
            '{"id": "1", "title": "t"}\n\n{"id": "2", "title": 5}\n',
            r"a\.jsonl: line 3: field 'title': expected a string, got int",
        ),
        ('{"id": "1", "title": "t"}\n[1, 2]\n', r"a\.jsonl: line 2: expected a JSON object, got list"),
        ('{"id": "x1", "title": "t"}\n', r"a\.jsonl: line 1: field 'id': expected a string of digits"),
        (
            '{"id": "1", "title": "t", "ocr": [{"time": "0", "text": "a"}]}\n',
            r"line 1: field 'ocr\[0\]\.time': expected a number",
        ),
        ('{"id": "1", "title": "t", "video": ""}\n', r"line 1: field 'video': expected a file path"),
        (
            '{"id": "1", "title": "t", "video": 7}\n',
            r"line 1: field 'video': expected a path string, got int",
        ),
    ],
)
def test_malformed_jsonl_lines_name_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "a.jsonl"
    path.write_text(content, encoding="utf-8")
    assert read_error(path).args[0] == str(read_error(path))
    with pytest.raises(AnnotationError, match=message):
        load_records(path)


@pytest.mark.parametrize(
    ("content", "message", "kw"),
    [
        ("title,asr\nt,a\n", r"a\.csv: line 1: the header has no 'id' column", {}),
        ("id,title,id\n1,t,1\n", r"a\.csv: line 1: the header repeats column\(s\) id", {}),
        ('id,title\n1,t\n2,"two\nlines"\n3,t,extra\n', r"a\.csv: line 5: 3 fields, the header has 2", {}),
        (
            "id,title,category_id\n1,t,9999\n",
            r"a\.csv: line 2: field 'category_id': unknown category id '9999'",
            {},
        ),
        ("id,title\n1,t\n", r"a\.csv: line 2: field 'category_id': missing", {"require_label": True}),
        ('id,ocr\n1,"[{""time"": 1}]"\n', r"a\.csv: line 2: field 'ocr\[0\]\.text': missing", {}),
        ("", r"a\.csv: empty file", {}),
    ],
)
def test_malformed_csv_rows_name_file_line_and_field(tmp_path, content, message, kw):
    path = tmp_path / "a.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AnnotationError, match=message):
        load_records(path, **kw)


def test_bad_utf8_names_the_line(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"id": "1", "title": "t"}\n{"id": "2", "title": "\xff"}\n')
    assert read_error(tmp_path / "a.jsonl").line == 2
    (tmp_path / "a.csv").write_bytes(b"id,title\n1,t\n2,\xff\n")
    assert "not valid UTF-8" in str(read_error(tmp_path / "a.csv"))


def test_a_line_error_survives_a_worker_process_round_trip(tmp_path):
    error = AnnotationError(tmp_path / "a.csv", "missing", 4, "title", line=6)
    again = AnnotationError(
        f"Caught AnnotationError in DataLoader worker process 0.\nOriginal Traceback:\n  x\nmmcls.data.annotations.AnnotationError: {error}\n"
    )
    assert (again.path, again.line, again.field, again.problem) == (
        str(tmp_path / "a.csv"),
        6,
        "title",
        "missing",
    )


# ------------------------------------------------------------------------------------- data.annotations


def test_data_annotations_resolve_every_split_through_one_function(tmp_path):
    files = {"labeled": "mine/train.csv", "test": str(tmp_path / "elsewhere" / "t.jsonl")}
    assert annotation_path(tmp_path, "labeled", files) == tmp_path / "mine" / "train.csv"
    assert annotation_path(tmp_path, "test", files) == tmp_path / "elsewhere" / "t.jsonl"
    assert annotation_path(tmp_path, "unlabeled", files) == tmp_path / "annotations" / "unlabeled.json"
    cfg = Config.from_yaml("tiny", ["data.annotations={labeled: a.jsonl, unlabeled: b.csv, test: c.json}"])
    assert cfg.data.annotations == {"labeled": "a.jsonl", "unlabeled": "b.csv", "test": "c.json"}
    assert Config.from_yaml("tiny", ["data.train_split=train", "data.annotations={train: t.csv}"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{valid: a.csv}", r"data.annotations: unknown split 'valid'; known: labeled, test, unlabeled"),
        ("{test: a.txt}", r"data.annotations.test: 'a.txt' is not a .json/.jsonl/.csv file"),
        ("{test: a}", r"data.annotations.test: 'a' is not"),
        ("{test: 3}", r"data.annotations: expected a string, got 3"),
        ("[a.csv]", r"data.annotations: expected a mapping"),
    ],
)
def test_data_annotations_are_validated_before_work(value, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_yaml("tiny", [f"data.annotations={value}"])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats") / "data"
    make_synthetic_dataset(root, 40, 4, 12, seed=3, num_frames=2, image_size=32, videos=2)
    return root


@pytest.fixture(scope="module")
def own_files_root(data_root) -> Path:
    """The same frames under a root without ``annotations/``: its records are in ``mine/`` as JSONL and CSV."""
    root = data_root.parent / "own"
    (root / "mine").mkdir(parents=True)
    (root / "zip_frames").symlink_to(data_root / "zip_frames")
    for split in ("labeled", "unlabeled", "test"):
        records = load_records(annotation_path(data_root, split))
        write_jsonl(root / "mine" / f"{split}.jsonl", records)
        write_csv(root / "mine" / f"{split}.csv", records)
    return root


def test_jsonl_and_csv_train_the_same_model_and_predict_split_reads_the_mapping(
    data_root, own_files_root, tmp_path
):
    outputs = {}
    for kind in ("json", "jsonl", "csv"):
        root, mapping = data_root, []
        if kind != "json":  # one path relative to the data root, one absolute
            root = own_files_root
            mapping = [f"data.annotations={{labeled: mine/labeled.{kind}, test: {root}/mine/test.{kind}}}"]
        cfg = Config.from_yaml(
            "tiny", [*FAST, "data.val_fraction=0", "data.limit_train=32", "train.seed=5", *mapping]
        )
        train(cfg, root, tmp_path / kind)
        out = tmp_path / f"{kind}.csv"
        # predict --split test: the model folder's data.annotations says which file holds the test split.
        args = ["predict", str(tmp_path / kind / "best"), "--data-root", str(root), "--split", "test"]
        assert main([*args, "--out", str(out), "--num-workers", "0", "--device", "cpu"]) == 0
        outputs[kind] = (load_file(str(tmp_path / kind / "best" / "model.safetensors")), out.read_text())
    weights, predictions = outputs["json"]
    assert len(predictions.splitlines()) == 12
    for kind in ("jsonl", "csv"):
        assert outputs[kind][1] == predictions, kind
        assert weights.keys() == outputs[kind][0].keys()
        for key, value in weights.items():
            assert torch.equal(value, outputs[kind][0][key]), (kind, key)


def test_pseudo_label_reads_the_split_its_members_were_given(own_files_root, tmp_path):
    from mmcls.models import build_model, save_model_dir
    from mmcls.workflows.members import PredictOptions
    from mmcls.workflows.pseudo_label import pseudo_label

    cfg = Config.from_yaml("tiny", [*FAST, "data.annotations={unlabeled: mine/unlabeled.csv}"])
    tokenizer = load_tokenizer(cfg.data.text.tokenizer)
    torch.manual_seed(0)
    save_model_dir(tmp_path / "m", build_model(cfg, vocab_size=len(tokenizer)), cfg, tokenizer, CATEGORIES)
    options = PredictOptions(batch_size=8, num_workers=0, device="cpu")
    out = tmp_path / "labels.json"
    summary = pseudo_label([tmp_path / "m"], own_files_root, "unlabeled", out, 0.0, options=options)
    expected = load_records(own_files_root / "mine" / "unlabeled.csv")
    assert summary["records"] == summary["passed"] == len(expected) == 4
    assert [(r.id, r.title, r.ocr) for r in load_records(out)] == [(r.id, r.title, r.ocr) for r in expected]


def test_a_malformed_line_stops_training_with_one_line(data_root, own_files_root, tmp_path, capsys):
    lines = (own_files_root / "mine" / "labeled.jsonl").read_text("utf-8").splitlines()
    lines[6] = lines[6].replace('"title"', '"titel"')
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    args = ["train", "tiny", "--data-root", str(data_root), "--out", str(tmp_path / "run")]
    assert (
        main(
            [*args, "--set", f"data.annotations.labeled={tmp_path / 'bad.jsonl'}", "--set", "train.epochs=1"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err == f"mmcls train: error: {tmp_path / 'bad.jsonl'}: line 7: field 'title': missing"


# ------------------------------------------------------------------------------------------- own videos


@pytest.fixture
def video_root(data_root, tmp_path) -> tuple[Path, Path, list[Record]]:
    """A data root whose records name their own videos: good ones, escaping ones, missing and special files."""
    root = tmp_path / "root"
    (root / "clips").mkdir(parents=True)
    good = next((data_root / "videos" / "labeled").glob("*.mp4"))
    shutil.copy(good, root / "clips" / "good.mp4")
    outside = tmp_path / "outside.mp4"  # a real, decodable video just outside the data root
    shutil.copy(good, outside)
    (root / "clips" / "out_link.mp4").symlink_to(outside)
    (root / "clips" / "in_link.mp4").symlink_to(root / "clips" / "good.mp4")
    os.mkfifo(root / "clips" / "fifo.mp4")  # opening it for reading would block forever
    videos = {
        "1": "clips/good.mp4",
        "2": "../outside.mp4",
        "3": "clips/../../outside.mp4",
        "4": "clips/out_link.mp4",
        "5": "clips/missing.mp4",
        "6": "clips/fifo.mp4",
        "7": "clips",
        "8": str(outside),  # absolute: the user's explicit choice, read where it is
        "9": "clips/in_link.mp4",
        "10": "./clips//good.mp4",
    }
    records = [Record(i, f"t{i}", "", [], LABEL, v) for i, v in videos.items()]
    return root, outside, records


EXPECTED_ERRORS = {
    "1": [],
    "2": ["unsafe_path"],
    "3": ["unsafe_path"],
    "4": ["unsafe_path"],
    "5": ["missing_file"],
    "6": ["bad_video"],
    "7": ["bad_video"],
    "8": [],
    "9": [],
    "10": [],
}


def video_dataset(root: Path, records: list[Record], on_error: str = "text_only"):
    cfg = Config.from_yaml("tiny", [*FAST, "data.frames.source=video"])
    tokenizer = load_tokenizer(cfg.data.text.tokenizer)
    return build_dataset(cfg, root, "labeled", records, tokenizer, CATEGORIES, train=True, on_error=on_error)


def test_own_video_paths_read_inside_the_data_root_only(video_root):
    root, outside, records = video_root
    dataset = video_dataset(root, records)
    for index, record in enumerate(records):
        sample = dataset[index]
        assert sample["frame_errors"] == EXPECTED_ERRORS[record.id], record.video
        assert bool(sample["frame_mask"].any()) == (not EXPECTED_ERRORS[record.id]), record.video
    good = dataset[0]["frames"]
    for index in (7, 8, 9):  # the absolute path, a symlink inside the root and a redundant path: same video
        assert torch.equal(dataset[index]["frames"], good)
    source = dataset.frame_source
    with pytest.raises(FrameError) as info:
        source.read_record(records[1])
    assert info.value.kind == "unsafe_path" and "'..'" in str(info.value)
    with pytest.raises(FrameError) as info:
        source.read_record(records[3])
    assert str(outside) in str(info.value) and "outside the data root" in str(info.value)


def test_own_video_errors_follow_on_error(video_root):
    root, _, records = video_root
    dropped = video_dataset(root, records, on_error="drop")
    assert [dropped[i] is None for i in range(len(records))] == [bool(EXPECTED_ERRORS[r.id]) for r in records]
    with pytest.raises(FrameError, match="unsafe_path"):
        video_dataset(root, records, on_error="raise")[1]


def test_records_without_their_own_video_keep_the_id_layout(tmp_path):
    cfg = Config.from_yaml("tiny", ["data.frames.source=video"]).data.frames
    source = VideoFileSource(cfg, tmp_path / "videos", data_root=tmp_path)
    with pytest.raises(FrameError) as info:
        source.read_record(Record("42", "t", "", []))
    assert info.value.kind == "missing_file" and info.value.path == str(tmp_path / "videos" / "42.mp4")


def test_training_counts_the_own_video_errors(video_root, tmp_path):
    root, _, records = video_root
    (root / "annotations").mkdir()
    write_csv(root / "annotations" / "train.csv", records * 2)
    cfg = Config.from_yaml(
        "tiny",
        [
            *FAST,
            "data.frames.source=video",
            "data.val_fraction=0",
            "train.batch_size=4",
            "data.annotations={labeled: annotations/train.csv}",
        ],
    )
    train(cfg, root, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "data_errors.json").read_text())
    expected = {"unsafe_path": 6, "missing_file": 2, "bad_video": 4}
    assert report["train"]["epoch_1"] == expected
    assert all(
        torch.isfinite(v).all()
        for v in load_file(str(tmp_path / "run" / "last" / "model.safetensors")).values()
    )


# -------------------------------------------------------------------------------------------- pretraining


def test_pretraining_index_reads_jsonl_and_csv_back_by_position(tmp_path):
    import pickle

    from mmcls.pretrain.records import RecordIndex

    records = hard_records() * 3
    write_records(tmp_path / "a.json", records)
    paths = [
        tmp_path / "a.json",
        write_jsonl(tmp_path / "a.jsonl", records),
        write_csv(tmp_path / "a.csv", records),
    ]
    # Excel's dialect: CRLF line ends (a cell's own newline stays LF) and a BOM.
    text = (tmp_path / "a.csv").read_text("utf-8")
    rows = list(csv.reader(text.splitlines(keepends=True)))
    with (tmp_path / "b.csv").open("w", encoding="utf-8-sig", newline="") as fh:
        csv.writer(fh).writerows(rows)
    assert b"\r\n" in (tmp_path / "b.csv").read_bytes()
    index = RecordIndex([*paths, tmp_path / "b.csv"])
    assert len(index) == 4 * len(records) and index.file_of.tolist() == [i for i in range(4) for _ in records]
    expected = records * 4
    assert [index[i] for i in reversed(range(len(index)))] == expected[::-1]  # any order: by byte span
    assert [pickle.loads(pickle.dumps(index))[i] for i in range(len(index))] == expected
    lines = (tmp_path / "a.jsonl").read_text("utf-8").splitlines()
    (tmp_path / "bad.jsonl").write_text("\n".join([*lines[:4], lines[4].replace('"id": "102"', '"id": 102')]))
    with pytest.raises(AnnotationError, match=r"bad\.jsonl: line 5: field 'id': expected a string of digits"):
        RecordIndex([tmp_path / "bad.jsonl"])


def test_extra_training_files_may_be_jsonl_or_csv(tmp_path):
    from mmcls.data.extra_train import load_extra_train

    items = [
        {"id": "1", "title": "t", "category_id": LABEL, "source_split": "test", "soft_label": {LABEL: 0.9}},
        {"id": "2", "title": "u", "category_id": LABEL},
    ]
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items), "utf-8")
    extra = load_extra_train([tmp_path / "x.jsonl"], CATEGORIES)
    assert extra.source_splits == ["test", "unlabeled"] and extra.soft_targets[0].sum() == pytest.approx(1)
    (tmp_path / "x.csv").write_text(
        f"id,title,category_id,source_split\n1,t,{LABEL},test\n2,u,{LABEL},\n", "utf-8"
    )
    with pytest.raises(
        AnnotationError, match=r"x\.csv: record 1: field 'source_split': expected a split name"
    ):
        load_extra_train([tmp_path / "x.csv"], CATEGORIES)  # an empty cell is not a split
    (tmp_path / "x.csv").write_text(f"id,title,category_id,source_split\n1,t,{LABEL},test\n", "utf-8")
    assert load_extra_train([tmp_path / "x.csv"], CATEGORIES).source_splits == ["test"]


def test_an_endless_line_is_refused_at_the_line_limit(tmp_path, monkeypatch):
    from mmcls.data import annotations

    monkeypatch.setattr(annotations, "_MAX_LINE_BYTES", 64)
    (tmp_path / "a.jsonl").write_text('{"id": "1", "title": "t"}\n' + "x" * 100, "utf-8")
    assert read_error(tmp_path / "a.jsonl").problem == "line longer than 64 bytes"
    (tmp_path / "a.csv").write_text("id,title\n1,t\n2," + "x" * 100, "utf-8")
    assert read_error(tmp_path / "a.csv").line == 3
