"""Annotation files in the official WBDC2022 layout: a JSON list of video records.

The unlabeled split holds 1,000,000 records, so reading is streamed with ijson (one record in memory at a
time) and every record is validated as it goes by. A malformed record raises :class:`AnnotationError` naming
the file, the record index and the field, so a bad line in a 1 GB file can be found without guessing.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ijson

from mmcls.data.categories import CategoryMap, official_categories
from mmcls.errors import MmclsError, unwrap_worker_report
from mmcls.files import InputFileError, open_regular

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"


@dataclass(slots=True)
class Record:
    """One video's annotation. ``ocr`` holds ``(time, text)`` pairs sorted by time."""

    id: str
    title: str
    asr: str
    ocr: list[tuple[float, str]]
    category_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The official JSON form (``category_id`` only when known)."""
        out: dict[str, Any] = {"id": self.id}
        if self.category_id is not None:
            out["category_id"] = self.category_id
        out["title"] = self.title
        out["asr"] = self.asr
        out["ocr"] = [{"time": time, "text": text} for time, text in self.ocr]
        return out


class AnnotationError(MmclsError, ValueError):
    """A malformed annotation file or record.

    ``str()`` is ``"<file>: record <index>: field '<field>': <problem>"``; the record and field parts are left
    out for problems of the whole file (not a JSON list, truncated JSON).

    ``AnnotationError(message)`` (one string) re-creates an error from its message, which is what torch's
    DataLoader does with an exception raised in a worker process (``type(exc)(report)``, the report being the
    worker's traceback): the original message is recovered and ``path``/``index``/``field``/``problem`` are
    parsed back (the report is kept in ``worker_traceback``), so the CLI still prints one clean line.
    """

    def __init__(
        self, path: str | Path, problem: str | None = None, index: int | None = None, field: str | None = None
    ):
        self.worker_traceback: str | None = None
        if problem is None:
            message, self.worker_traceback = unwrap_worker_report(str(path), type(self).__name__)
            self.path, self.problem, self.index, self.field = _parse_annotation_message(message)
            super().__init__(message)
            return
        self.path = str(path)
        self.problem = problem
        self.index = index
        self.field = field
        where = self.path
        if index is not None:
            where += f": record {index}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # keep the structured fields across pickling (DataLoader workers)
        return (type(self), (str(self),), self.__dict__.copy())


_ANNOTATION_MESSAGE = re.compile(
    r"(?P<path>.*?)(?:: record (?P<index>\d+))?(?:: field '(?P<field>[^']*)')?: (?P<problem>.*)", re.DOTALL
)


def _parse_annotation_message(message: str) -> tuple[str, str, int | None, str | None]:
    """``(path, problem, index, field)`` of an :class:`AnnotationError` message."""
    match = _ANNOTATION_MESSAGE.fullmatch(message)
    if match is None:
        return "", message, None, None
    index = None if match["index"] is None else int(match["index"])
    return match["path"], match["problem"], index, match["field"]


def annotation_path(data_root: str | Path, split: str) -> Path:
    """``DATA_ROOT/annotations/{split}.json``."""
    return Path(data_root) / "annotations" / f"{split}.json"


def iter_records(
    path: str | Path, *, require_label: bool = False, categories: CategoryMap | None = None
) -> Iterator[Record]:
    """Stream and validate the records of an annotation file, in file order, in constant memory.

    ``category_id`` is optional unless ``require_label``; when present it must be one of ``categories``
    (default: the 200 official ids). Unknown extra keys are ignored.
    """
    path = Path(path)
    valid_ids = (categories or official_categories()).id_set()
    for index, item in _iter_items(path):
        yield _parse_record(item, path, index, require_label, valid_ids)


def parse_record(item: Any, path: Path, index: int, valid_ids: frozenset[str]) -> Record:
    """Validate one decoded JSON record (``index`` in ``path``, for the error message) into a :class:`Record`.

    For readers that find records themselves (an offset index); ``category_id`` is optional here and, when
    present, one of ``valid_ids`` (see :func:`category_id_set`).
    """
    return _parse_record(item, path, index, False, valid_ids)


def category_id_set(categories: CategoryMap | None = None) -> frozenset[str]:
    """The category ids a record may carry (default: the 200 official ones); the set names its taxonomy file."""
    return (categories or official_categories()).id_set()


def load_records(path: str | Path, **kw: Any) -> list[Record]:
    """All records of a file as a list (see :func:`iter_records` for the keyword arguments)."""
    return list(iter_records(path, **kw))


def count_duplicate_ids(records: Iterable[Record]) -> int:
    """How many records repeat the id of an earlier one (training counts them; prediction refuses them)."""
    seen: set[str] = set()
    repeats = 0
    for record in records:
        repeats += record.id in seen
        seen.add(record.id)
    return repeats


def first_duplicate_id(records: list[Record]) -> tuple[int, str] | None:
    """``(index, id)`` of the first record whose id appeared before, or None."""
    seen: set[str] = set()
    for index, record in enumerate(records):
        if record.id in seen:
            return index, record.id
        seen.add(record.id)
    return None


def write_records(path: str | Path, records: Iterable[Record | dict[str, Any]]) -> None:
    """Write records as the official JSON list (UTF-8, ``ensure_ascii=False``), one record per line.

    Streams (any iterable works, e.g. a generator of a million records) and writes to a temporary file that
    replaces ``path`` only when complete, so an interrupted write never leaves a truncated file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write("[")
            for i, record in enumerate(records):
                item = record.to_dict() if isinstance(record, Record) else record
                fh.write(("\n" if i == 0 else ",\n") + json.dumps(item, ensure_ascii=False))
            fh.write("\n]\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_labels(path: str | Path, *, categories: CategoryMap | None = None) -> dict[str, str]:
    """``id -> category_id`` from a labeled-style annotation file or a ``test_labels.json``.

    Only ``id`` and ``category_id`` are read (both required); other keys are ignored. Duplicate ids are an
    error because they would make the ground truth ambiguous.
    """
    path = Path(path)
    valid_ids = (categories or official_categories()).id_set()
    labels: dict[str, str] = {}
    for index, item in _iter_items(path):
        if not isinstance(item, dict):
            raise AnnotationError(path, f"expected a JSON object, got {_type_name(item)}", index)
        video_id = _check_id(item, path, index)
        category_id = _check_category(item, path, index, valid_ids, required=True)
        if video_id in labels:
            raise AnnotationError(path, f"duplicate id {video_id!r}", index, "id")
        labels[video_id] = category_id  # type: ignore[assignment]
    return labels


# ----------------------------------------------------------------------------------------------- reading


def _iter_items(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, item)`` for each element of the top-level JSON list, streaming."""
    try:
        fh = open_regular(path, what="annotation file")  # a FIFO or a device would hang or never end
    except FileNotFoundError:
        raise AnnotationError(path, "file not found") from None
    except InputFileError as exc:
        raise AnnotationError(path, exc.problem) from None
    with fh:
        _seek_to_list(fh, path)
        index = -1
        try:
            for index, item in enumerate(ijson.items(fh, "item", use_float=True)):
                yield index, item
        except ijson.JSONError as exc:
            after = f"after record {index}" if index >= 0 else "before the first record"
            raise AnnotationError(path, f"invalid or truncated JSON {after}: {_first_line(exc)}") from None


def _seek_to_list(fh: BinaryIO, path: Path) -> None:
    """Skip a UTF-8 BOM and leading whitespace; fail clearly unless the file holds a JSON list."""
    offset = 0
    head = fh.read(len(_BOM))
    if head == _BOM:
        offset = len(_BOM)
    fh.seek(offset)
    while True:
        chunk = fh.read(64 * 1024)
        if not chunk:
            raise AnnotationError(path, "empty file, expected a JSON list of records")
        stripped = chunk.lstrip(_WHITESPACE)
        if stripped:
            if not stripped.startswith(b"["):
                raise AnnotationError(
                    path, f"expected a JSON list of records, file starts with {stripped[:20]!r}"
                )
            fh.seek(offset + len(chunk) - len(stripped))
            return
        offset += len(chunk)


# -------------------------------------------------------------------------------------------- validation


def _parse_record(
    item: Any, path: Path, index: int, require_label: bool, valid_ids: frozenset[str]
) -> Record:
    if not isinstance(item, dict):
        raise AnnotationError(path, f"expected a JSON object, got {_type_name(item)}", index)
    video_id = _check_id(item, path, index)
    title = _check_str(item, "title", path, index)
    # The official baseline ignores asr/ocr; records without them are valid there, so they read as empty here.
    asr = _check_str(item, "asr", path, index) if "asr" in item else ""
    ocr = _check_ocr(item, path, index) if "ocr" in item else []
    category_id = _check_category(item, path, index, valid_ids, required=require_label)
    return Record(id=video_id, title=title, asr=asr, ocr=ocr, category_id=category_id)


def _check_id(item: dict, path: Path, index: int) -> str:
    value = _require(item, "id", path, index)
    if not isinstance(value, str):
        raise AnnotationError(path, f"expected a string of digits, got {_type_name(value)}", index, "id")
    # isascii: str.isdigit accepts other scripts' digits, which would not be a valid id (or file name).
    if not (value.isascii() and value.isdigit()):
        raise AnnotationError(path, f"expected a string of digits, got {value[:40]!r}", index, "id")
    return value


def _check_str(item: dict, field: str, path: Path, index: int) -> str:
    value = _require(item, field, path, index)
    if not isinstance(value, str):
        raise AnnotationError(path, f"expected a string, got {_type_name(value)}", index, field)
    return value


def _check_ocr(item: dict, path: Path, index: int) -> list[tuple[float, str]]:
    value = _require(item, "ocr", path, index)
    if not isinstance(value, list):
        raise AnnotationError(
            path, f"expected a list of {{time, text}}, got {_type_name(value)}", index, "ocr"
        )
    lines = []
    for j, line in enumerate(value):
        where = f"ocr[{j}]"
        if not isinstance(line, dict):
            raise AnnotationError(
                path, f"expected an object {{time, text}}, got {_type_name(line)}", index, where
            )
        for key in ("time", "text"):
            if key not in line:
                raise AnnotationError(path, "missing", index, f"{where}.{key}")
        time, text = line["time"], line["text"]
        # bool is an int subclass: reject it explicitly.
        if isinstance(time, bool) or not isinstance(time, (int, float)) or not math.isfinite(time):
            raise AnnotationError(path, f"expected a number, got {time!r}", index, f"{where}.time")
        if not isinstance(text, str):
            raise AnnotationError(path, f"expected a string, got {_type_name(text)}", index, f"{where}.text")
        lines.append((float(time), text))
    lines.sort(key=lambda line: line[0])  # stable: lines at the same time keep file order
    return lines


def _check_category(
    item: dict, path: Path, index: int, valid_ids: frozenset[str], *, required: bool
) -> str | None:
    value = item.get("category_id")
    if value is None:  # absent or null
        if required:
            raise AnnotationError(path, "missing (a label is required here)", index, "category_id")
        return None
    if not isinstance(value, str):
        raise AnnotationError(path, f"expected a string, got {_type_name(value)}", index, "category_id")
    if value not in valid_ids:
        source = getattr(valid_ids, "source", "the taxonomy")
        raise AnnotationError(
            path, f"unknown category id {value!r} (not a class of {source})", index, "category_id"
        )
    return value


def _require(item: dict, field: str, path: Path, index: int) -> Any:
    if field not in item:
        raise AnnotationError(path, "missing", index, field)
    return item[field]


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
