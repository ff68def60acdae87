from __future__ import annotations

import copy
import json
import pickle
import tracemalloc
from pathlib import Path

import pytest

from mmcls.data.annotations import (
    AnnotationError,
    Record,
    annotation_path,
    iter_records,
    load_labels,
    load_records,
    write_records,
)
from mmcls.data.categories import official_categories

CATEGORY = official_categories().category_ids[5]


def good_record(i: int = 0, labeled: bool = True) -> dict:
    record = {
        "id": f"{13477278056527828998 + i}",
        "title": f"管嘴管心，祸少福多;#国学禅语 {i}",
        "asr": "",
        "ocr": [{"time": 2, "text": "第二行"}, {"time": 0.5, "text": "第一行"}],
    }
    if labeled:
        record["category_id"] = CATEGORY
    return record


def write_json(path: Path, items) -> Path:
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return path


def test_annotation_path():
    assert annotation_path("/data", "unlabeled") == Path("/data/annotations/unlabeled.json")


def test_round_trip_sorts_ocr_by_time(tmp_path):
    path = tmp_path / "labeled.json"
    write_records(path, [good_record(0), Record("42", "t", "a", [(1.0, "x")], None)])
    first, second = load_records(path)
    assert first.category_id == CATEGORY
    assert first.ocr == [(0.5, "第一行"), (2.0, "第二行")]
    assert second == Record("42", "t", "a", [(1.0, "x")], None)
    # Written as the official JSON list, readable by the standard library, Chinese kept as is.
    text = path.read_text(encoding="utf-8")
    assert "管嘴管心" in text
    assert json.loads(text)[1] == {"id": "42", "title": "t", "asr": "a", "ocr": [{"time": 1.0, "text": "x"}]}
    assert not list(tmp_path.glob(".*tmp"))


def test_require_label_and_bom_and_whitespace(tmp_path):
    path = tmp_path / "test.json"
    path.write_bytes(b"\xef\xbb\xbf \n" + json.dumps([good_record(labeled=False)]).encode())
    assert load_records(path)[0].category_id is None
    with pytest.raises(AnnotationError) as info:
        load_records(path, require_label=True)
    assert (info.value.index, info.value.field) == (0, "category_id")


def test_missing_asr_and_ocr_read_as_empty_like_the_official_baseline(tmp_path):
    # Issue 12: the official baseline ignores asr/ocr, so a record without them is valid data (a record without
    # ocr used to be an error here; a wrong type still is, see BAD_FIELDS).
    record = good_record(0)
    del record["asr"], record["ocr"]
    loaded = load_records(write_json(tmp_path / "labeled.json", [record]))[0]
    assert (loaded.asr, loaded.ocr, loaded.title) == ("", [], record["title"])


BAD_FIELDS = [
    ("id", lambda r: r.update(id=123)),
    ("id", lambda r: r.update(id="12a4")),
    ("id", lambda r: r.update(id="")),
    ("id", lambda r: r.pop("id")),
    ("title", lambda r: r.pop("title")),
    ("title", lambda r: r.update(title=["x"])),
    ("asr", lambda r: r.update(asr=None)),
    ("ocr", lambda r: r.update(ocr="text")),
    ("ocr[1]", lambda r: r["ocr"].__setitem__(1, "text")),
    ("ocr[0].time", lambda r: r["ocr"][0].update(time="0")),
    ("ocr[0].time", lambda r: r["ocr"][0].update(time=True)),
    ("ocr[1].time", lambda r: r["ocr"][1].pop("time")),
    ("ocr[0].text", lambda r: r["ocr"][0].update(text=5)),
    ("category_id", lambda r: r.update(category_id="9999")),
    ("category_id", lambda r: r.update(category_id=103)),
]


@pytest.mark.parametrize(("field", "breaker"), BAD_FIELDS)
def test_malformed_field_names_file_index_and_field(tmp_path, field, breaker):
    records = [good_record(i) for i in range(4)]
    breaker(records[2])
    path = write_json(tmp_path / "labeled.json", records)
    with pytest.raises(AnnotationError) as info:
        load_records(path)
    message = str(info.value)
    assert str(path) in message
    assert "record 2" in message
    assert f"field '{field}'" in message
    assert (info.value.index, info.value.field) == (2, field)
    # The structured error survives pickling (it may come back from a DataLoader worker).
    assert str(pickle.loads(pickle.dumps(info.value))) == message


def test_record_that_is_not_an_object(tmp_path):
    path = write_json(tmp_path / "x.json", [good_record(), 7])
    with pytest.raises(AnnotationError, match=r"x\.json: record 1: expected a JSON object, got int"):
        load_records(path)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b'{"id": "1"}', "expected a JSON list"),
        (b"", "empty file"),
        (b"  \n ", "empty file"),
        (json.dumps([good_record()]).encode() + b" trailing", "invalid or truncated JSON after record 0"),
    ],
)
def test_file_that_is_not_a_json_list(tmp_path, content, pattern):
    path = tmp_path / "weird.json"
    path.write_bytes(content)
    with pytest.raises(AnnotationError, match=pattern) as info:
        list(iter_records(path))
    assert str(path) in str(info.value)


def test_truncated_json_names_file_and_last_good_record(tmp_path):
    path = tmp_path / "unlabeled.json"
    write_records(path, [good_record(i, labeled=False) for i in range(3)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    seen = []
    with pytest.raises(AnnotationError) as info:
        for record in iter_records(path):
            seen.append(record.id)
    assert len(seen) == 2  # streaming: the good records came through before the error
    assert str(path) in str(info.value) and "truncated JSON after record 1" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="file not found"):
        load_records(tmp_path / "nope.json")


def test_load_labels_both_styles(tmp_path):
    labeled = tmp_path / "labeled.json"
    write_records(labeled, [good_record(0), good_record(1)])
    assert load_labels(labeled) == {good_record(0)["id"]: CATEGORY, good_record(1)["id"]: CATEGORY}
    test_labels = write_json(tmp_path / "test_labels.json", [{"id": "1", "category_id": CATEGORY}])
    assert load_labels(test_labels) == {"1": CATEGORY}


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([{"id": "1"}], "category_id"),
        ([{"id": "1", "category_id": "9999"}], "category_id"),
        ([{"id": "1", "category_id": 1}], "category_id"),
        ([{"category_id": CATEGORY}], "id"),
        ([{"id": "1", "category_id": CATEGORY}, {"id": "1", "category_id": CATEGORY}], "id"),
    ],
)
def test_load_labels_errors(tmp_path, items, field):
    path = write_json(tmp_path / "test_labels.json", items)
    with pytest.raises(AnnotationError) as info:
        load_labels(path)
    assert info.value.field == field and "test_labels.json" in str(info.value)


def test_streaming_memory_is_bounded(tmp_path):
    """20,000 records (19 MB) stream through with a traced peak of a small fraction of the file's size.

    (Loading them into a list peaks at ~25 MB. 20,000 rather than more records because tracemalloc slows
    the parsing down about 7 times.)
    """
    path = tmp_path / "unlabeled.json"
    template = good_record(labeled=False)
    template["asr"] = "这是一段很长的语音识别文本" * 20

    def records():
        for i in range(20_000):
            record = copy.copy(template)
            record["id"] = str(10**19 + i)
            yield record

    write_records(path, records())
    assert path.stat().st_size > 15_000_000
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_records(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < 2_000_000, f"peak {peak} bytes while streaming"
