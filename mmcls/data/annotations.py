"""Annotation files: the official WBDC2022 JSON list of video records, JSON Lines and CSV.

The format follows the file's extension (:data:`ANNOTATION_SUFFIXES`): ``.json`` is the official JSON list,
``.jsonl`` one JSON record a line, ``.csv`` a header row naming ``id`` and any of ``title, asr, ocr,
category_id, video, labels`` (a multilabel record's class ids, ``|``-separated in CSV, a JSON list otherwise).
All three give the same :class:`Record` objects, so nothing downstream knows which was read. The unlabeled split holds 1,000,000 records, so reading is streamed (ijson for the JSON list, one line or
row at a time otherwise) and every record is validated as it goes by. A malformed record raises
:class:`AnnotationError` naming the file, the record (its index in a JSON list, its line in the line-based
formats) and the field, so a bad record in a 1 GB file can be found without guessing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ijson

from mmcls import names
from mmcls.data.categories import CategoryMap, official_categories
from mmcls.errors import MmclsError, unwrap_worker_report
from mmcls.files import InputFileError, open_regular

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"
# Longest line of a JSON Lines or CSV file: far above any real record, and a file of one endless line (not a
# list of records) fails at this size instead of being read into memory whole.
_MAX_LINE_BYTES = 64 * 1024 * 1024
#: The annotation formats, by file extension (see the module docstring).
ANNOTATION_SUFFIXES = (".json", ".jsonl", ".csv")
#: The columns a CSV annotation file may have besides ``id`` (others are ignored, like unknown JSON keys).
CSV_COLUMNS = ("title", "asr", "ocr", "category_id", "video", "labels")
#: How a CSV cell lists the class ids of a multilabel record's ``labels`` (an empty cell: no tags).
LABELS_SEPARATOR = "|"


@dataclass(slots=True)
class Record:
    """One video's annotation. ``ocr`` holds ``(time, text)`` pairs sorted by time.

    ``video`` is the record's own video file as written in the annotation file (relative to the data root, or
    absolute), for ``data.frames.source: video``; None means the source's ``{video_dir}/{id}{video_ext}``.
    ``labels`` are the class ids of a multilabel record (``data.task: multilabel``; may be empty: no tag);
    None when the record has no ``labels`` field.
    """

    id: str
    title: str
    asr: str
    ocr: list[tuple[float, str]]
    category_id: str | None = None
    video: str | None = None
    labels: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The official JSON form (``category_id`` and ``video`` only when known)."""
        out: dict[str, Any] = {"id": self.id}
        if self.category_id is not None:
            out["category_id"] = self.category_id
        out["title"] = self.title
        out["asr"] = self.asr
        out["ocr"] = [{"time": time, "text": text} for time, text in self.ocr]
        if self.video is not None:
            out["video"] = self.video
        if self.labels is not None:
            out["labels"] = list(self.labels)
        return out


class AnnotationError(MmclsError, ValueError):
    """A malformed annotation file or record.

    ``str()`` is ``"<file>: record <index>: field '<field>': <problem>"`` for a JSON list and
    ``"<file>: line <line>: field '<field>': <problem>"`` for the line-based formats (JSON Lines, CSV; 1-based
    line of the file, where the record starts); the record and field parts are left out for problems of the
    whole file (not a JSON list, truncated JSON).

    ``AnnotationError(message)`` (one string) re-creates an error from its message, which is what torch's
    DataLoader does with an exception raised in a worker process (``type(exc)(report)``, the report being the
    worker's traceback): the original message is recovered and ``path``/``index``/``field``/``problem`` are
    parsed back (the report is kept in ``worker_traceback``), so the CLI still prints one clean line.
    """

    def __init__(
        self,
        path: str | Path,
        problem: str | None = None,
        index: int | None = None,
        field: str | None = None,
        *,
        line: int | None = None,
    ):
        self.worker_traceback: str | None = None
        if problem is None:
            message, self.worker_traceback = unwrap_worker_report(str(path), type(self).__name__)
            self.path, self.problem, self.index, self.field, self.line = _parse_annotation_message(message)
            super().__init__(message)
            return
        self.path = str(path)
        self.problem = problem
        self.index = index
        self.field = field
        self.line = line
        where = self.path
        if line is not None:
            where += f": line {line}"
        elif index is not None:
            where += f": record {index}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # keep the structured fields across pickling (DataLoader workers)
        return (type(self), (str(self),), self.__dict__.copy())


_ANNOTATION_MESSAGE = re.compile(
    r"(?P<path>.*?)(?:: record (?P<index>\d+)|: line (?P<line>\d+))?(?:: field '(?P<field>[^']*)')?"
    r": (?P<problem>.*)",
    re.DOTALL,
)


def _parse_annotation_message(message: str) -> tuple[str, str, int | None, str | None, int | None]:
    """``(path, problem, index, field, line)`` of an :class:`AnnotationError` message."""
    match = _ANNOTATION_MESSAGE.fullmatch(message)
    if match is None:
        return "", message, None, None, None
    index = None if match["index"] is None else int(match["index"])
    line = None if match["line"] is None else int(match["line"])
    return match["path"], match["problem"], index, match["field"], line


def annotation_path(data_root: str | Path, split: str, files: Mapping[str, str] | None = None) -> Path:
    """The annotation file of ``split``: ``files[split]`` (``data.annotations``) or ``annotations/{split}.json``.

    The one place that says where a split's records are: every command that reads a split by name (train,
    predict, pseudo-label, pretraining, ...) asks here, so ``data.annotations`` is honoured everywhere. A
    relative path is relative to ``data_root``; an absolute one is used as it is.
    """
    if files and split in files:
        return Path(data_root) / files[split]
    return Path(data_root) / names.ANNOTATIONS_DIR / f"{split}.json"


def annotation_format(path: str | Path) -> str:
    """The format of an annotation file by its extension: ``jsonl``, ``csv``, else ``json`` (the official list).

    Any other name reads as the JSON list, as every file did before the other formats existed (a
    ``labels.json.bak`` still works); ``data.annotations`` itself only accepts :data:`ANNOTATION_SUFFIXES`.
    """
    suffix = Path(path).suffix.lower()
    return suffix[1:] if suffix in (".jsonl", ".csv") else "json"


def iter_records(
    path: str | Path,
    *,
    require_label: bool = False,
    require_labels: bool = False,
    categories: CategoryMap | None = None,
) -> Iterator[Record]:
    """Stream and validate the records of an annotation file, in file order, in constant memory.

    The format follows the extension (``.json``, ``.jsonl``, ``.csv``; see the module docstring).
    ``category_id`` is optional unless ``require_label``, ``labels`` (multilabel) unless ``require_labels``;
    their ids must be ``categories``' (default: the 200 official ids). Unknown extra keys are ignored.
    """
    path = Path(path)
    valid_ids = (categories or official_categories()).id_set()
    for index, line, item in _iter_located_items(path):
        try:
            record = _parse_record(item, path, index, require_label, valid_ids, require_labels)
        except AnnotationError as exc:
            raise _on_line(exc, line) from None
        yield record


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
    """``id -> category_id`` from a labeled-style annotation file or a ``test_labels.json`` (any format).

    Only ``id`` and ``category_id`` are read (both required); other keys are ignored. Duplicate ids are an
    error because they would make the ground truth ambiguous.
    """
    path = Path(path)
    valid_ids = (categories or official_categories()).id_set()
    labels: dict[str, str] = {}
    for index, line, item in _iter_located_items(path):
        try:
            if not isinstance(item, dict):
                raise AnnotationError(path, f"expected a JSON object, got {_type_name(item)}", index)
            video_id = _check_id(item, path, index)
            category_id = _check_category(item, path, index, valid_ids, required=True)
            if video_id in labels:
                raise AnnotationError(path, f"duplicate id {video_id!r}", index, "id")
        except AnnotationError as exc:
            raise _on_line(exc, line) from None
        labels[video_id] = category_id  # type: ignore[assignment]
    return labels


def load_multilabels(
    path: str | Path, *, categories: CategoryMap | None = None
) -> dict[str, tuple[str, ...]]:
    """``id -> labels`` (class ids) from a multilabel annotation file or its ``test_labels.json`` (any format).

    Only ``id`` and ``labels`` are read (both required; ``labels`` may be empty); duplicate ids are an error.
    """
    path = Path(path)
    valid_ids = (categories or official_categories()).id_set()
    labels: dict[str, tuple[str, ...]] = {}
    for index, line, item in _iter_located_items(path):
        try:
            if not isinstance(item, dict):
                raise AnnotationError(path, f"expected a JSON object, got {_type_name(item)}", index)
            video_id = _check_id(item, path, index)
            tags = _check_labels(item, path, index, valid_ids, required=True)
            if video_id in labels:
                raise AnnotationError(path, f"duplicate id {video_id!r}", index, "id")
        except AnnotationError as exc:
            raise _on_line(exc, line) from None
        labels[video_id] = tags  # type: ignore[assignment]
    return labels


# ----------------------------------------------------------------------------------------------- reading


def iter_annotation_items(path: str | Path) -> Iterator[tuple[int, int | None, Any]]:
    """``(index, line, item)`` of each record, not yet validated, for readers of extra keys (``soft_label``).

    ``line`` is None in a JSON list. A CSV row's item also keeps its extra columns, as strings.
    """
    return _iter_located_items(Path(path))


def _iter_located_items(path: Path) -> Iterator[tuple[int, int | None, Any]]:
    """``(index, line, item)`` for each record of the file, in the file's format; ``line`` is None in a JSON list.

    ``item`` is what a JSON list element would be (a CSV row becomes such a dict), so one validation serves all.
    """
    kind = annotation_format(path)
    if kind == "jsonl":
        yield from _iter_jsonl_items(path)
    elif kind == "csv":
        yield from _iter_csv_items(path)
    else:
        for index, item in _iter_items(path):
            yield index, None, item


def _on_line(exc: AnnotationError, line: int | None) -> AnnotationError:
    """``exc`` located by the file line of its record (line-based formats) instead of the record index."""
    if line is None:
        return exc
    return AnnotationError(exc.path, exc.problem, exc.index, exc.field, line=line)


def _open_annotations(path: Path) -> IO[bytes]:
    try:
        return open_regular(path, what="annotation file")  # a FIFO or a device would hang or never end
    except FileNotFoundError:
        raise AnnotationError(path, "file not found") from None
    except InputFileError as exc:
        raise AnnotationError(path, exc.problem) from None


def _iter_jsonl_items(path: Path) -> Iterator[tuple[int, int, Any]]:
    for index, line, item, _, _ in _jsonl_spans(path):
        yield index, line, item


def _iter_csv_items(path: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    for index, line, item, _, _ in _csv_spans(path, []):
        yield index, line, item


def _jsonl_spans(path: Path) -> Iterator[tuple[int, int, Any, int, int]]:
    """JSON Lines: ``(index, line, item, byte start, byte length)`` of each record; blank lines are skipped."""
    index, position = 0, 0
    with _open_annotations(path) as fh:
        for line_number, raw in _bounded_lines(fh, path):
            start, position = position, position + len(raw)
            if line_number == 1 and raw.startswith(_BOM):
                raw, start = raw[len(_BOM) :], start + len(_BOM)
            if not raw.strip(_WHITESPACE):
                continue
            yield index, line_number, _json_line(raw, path, line_number), start, len(raw)
            index += 1


def _bounded_lines(fh: IO[bytes], path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` of each line, refusing a line longer than :data:`_MAX_LINE_BYTES`."""
    number = 0
    while raw := fh.readline(_MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > _MAX_LINE_BYTES:
            raise AnnotationError(path, f"line longer than {_MAX_LINE_BYTES} bytes", line=number)
        yield number, raw


def _json_line(raw: bytes, path: Path, line: int) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, f"not valid UTF-8: {exc.reason}", line=line) from None
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", line=line) from None


def _csv_spans(path: Path, header: list[str]) -> Iterator[tuple[int, int, dict[str, Any], int, int]]:
    """CSV with a header row (UTF-8, BOM allowed): ``(index, line, item, byte start, byte length)`` per row.

    ``item`` is the dict a JSON record would be (see :func:`_csv_item`); ``header`` (empty) receives the header's
    columns. A column the header does not have is absent from every record: empty text for ``title``/``asr``/
    ``ocr``, no label, no own video. An empty ``category_id`` or ``video`` cell is absent too. Extra columns are
    ignored, like unknown keys of a JSON record. The file is read as binary lines so that each row's byte span
    is known (a quoted cell may hold newlines: the csv reader then pulls several lines for one row).
    """
    ends = [0]  # byte offset after each line handed to the csv reader (index 0: the start of the file)

    def lines(fh: IO[bytes]) -> Iterator[str]:
        for number, raw in _bounded_lines(fh, path):
            if number == 1 and raw.startswith(_BOM):
                ends[0] = len(_BOM)
                raw = raw[len(_BOM) :]
            ends.append(ends[-1] + len(raw))
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise AnnotationError(path, f"not valid UTF-8: {exc.reason}", line=number) from None

    with _open_annotations(path) as fh:
        reader = csv.reader(lines(fh))
        index = 0
        while True:
            first = reader.line_num  # lines consumed so far: this row starts on the next one
            try:
                row = next(reader, None)
            except csv.Error as exc:
                raise AnnotationError(path, f"not valid CSV: {exc}", line=first + 1) from None
            if row is None:
                break
            if not row:  # a blank line
                continue
            if not header:
                header.extend(_csv_header(row, path, first + 1))
                continue
            if len(row) != len(header):
                raise AnnotationError(
                    path, f"{len(row)} fields, the header has {len(header)}", index, line=first + 1
                )
            start = ends[first]
            yield index, first + 1, _csv_item(dict(zip(header, row))), start, ends[reader.line_num] - start
            index += 1
    if not header:
        raise AnnotationError(path, "empty file, expected a CSV header row with an 'id' column")


class LineRecordReader:
    """The records of a JSON Lines or CSV file by byte span: an offset index's scan and re-read.

    :meth:`scan` validates every record and yields its byte span; :meth:`parse` turns the bytes of one span back
    into its :class:`Record`. Holds no open file (it pickles to DataLoader workers).
    """

    def __init__(self, path: str | Path, categories: CategoryMap | None = None) -> None:
        self.path = Path(path)
        self.format = annotation_format(self.path)
        if self.format == "json":
            raise AnnotationError(self.path, "a JSON list is not a line-based annotation file")
        self.valid_ids = category_id_set(categories)
        self.header: list[str] = []

    def scan(self) -> Iterator[tuple[int, int]]:
        """``(byte start, byte length)`` of each record, in file order, each one validated."""
        self.header = []
        spans = _jsonl_spans(self.path) if self.format == "jsonl" else _csv_spans(self.path, self.header)
        for index, line, item, start, length in spans:
            try:
                _parse_record(item, self.path, index, False, self.valid_ids)
            except AnnotationError as exc:
                raise _on_line(exc, line) from None
            yield start, length

    def parse(self, raw: bytes, index: int) -> Record:
        """The record whose span held ``raw`` (``index``: its position in the file, for error messages)."""
        if self.format == "jsonl":
            item = json.loads(raw.decode("utf-8"))
        else:
            row = next(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
            item = _csv_item(dict(zip(self.header, row)))
        return _parse_record(item, self.path, index, False, self.valid_ids)


def _csv_header(row: list[str], path: Path, line: int) -> list[str]:
    header = [name.strip() for name in row]
    if "id" not in header:
        raise AnnotationError(
            path,
            f"the header has no 'id' column (columns: id and any of {', '.join(CSV_COLUMNS)})",
            line=line,
        )
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise AnnotationError(path, f"the header repeats column(s) {', '.join(repeated)}", line=line)
    return header


def _csv_item(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row as the equivalent JSON record (``title``/``asr`` default to empty, like ``asr`` in JSON)."""
    item: dict[str, Any] = {key: value for key, value in row.items() if key not in CSV_COLUMNS}  # id, extras
    item.update(title=row.get("title", ""), asr=row.get("asr", ""))
    for key in ("category_id", "video"):
        if row.get(key):
            item[key] = row[key]
    if "labels" in row:  # a column of the file: an empty cell is a record without tags
        item["labels"] = [part.strip() for part in row["labels"].split(LABELS_SEPARATOR) if part.strip()]
    ocr = row.get("ocr", "")
    if ocr.strip():
        item["ocr"] = _csv_ocr(ocr)
    return item


def _csv_ocr(cell: str) -> Any:
    """The official ``[{"time", "text"}]`` list when the cell is a JSON list, else one line of plain text."""
    if cell.lstrip().startswith("["):
        try:
            value = json.loads(cell)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, list):
            return value  # validated like a JSON record's ocr (a list that is not {time, text} is an error)
    return [{"time": 0, "text": cell}]


def _iter_items(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, item)`` for each element of the top-level JSON list, streaming."""
    fh = _open_annotations(path)
    with fh:
        _seek_to_list(fh, path)
        index = -1
        try:
            for index, item in enumerate(ijson.items(fh, "item", use_float=True)):
                yield index, item
        except ijson.JSONError as exc:
            after = f"after record {index}" if index >= 0 else "before the first record"
            raise AnnotationError(path, f"invalid or truncated JSON {after}: {_first_line(exc)}") from None


def _seek_to_list(fh: IO[bytes], path: Path) -> None:
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
    item: Any,
    path: Path,
    index: int,
    require_label: bool,
    valid_ids: frozenset[str],
    require_labels: bool = False,
) -> Record:
    if not isinstance(item, dict):
        raise AnnotationError(path, f"expected a JSON object, got {_type_name(item)}", index)
    video_id = _check_id(item, path, index)
    title = _check_str(item, "title", path, index)
    # The official baseline ignores asr/ocr; records without them are valid there, so they read as empty here.
    asr = _check_str(item, "asr", path, index) if "asr" in item else ""
    ocr = _check_ocr(item, path, index) if "ocr" in item else []
    category_id = _check_category(item, path, index, valid_ids, required=require_label)
    video = _check_video(item, path, index) if item.get("video") is not None else None
    labels = _check_labels(item, path, index, valid_ids, required=require_labels)
    return Record(
        id=video_id, title=title, asr=asr, ocr=ocr, category_id=category_id, video=video, labels=labels
    )


def _check_labels(
    item: dict, path: Path, index: int, valid_ids: frozenset[str], *, required: bool
) -> tuple[str, ...] | None:
    """A multilabel record's class ids (a JSON list of id strings; repeats are kept once, in first order)."""
    value = item.get("labels")
    if value is None:
        if required:
            raise AnnotationError(path, "missing (a list of class ids is required here)", index, "labels")
        return None
    if not isinstance(value, list):
        raise AnnotationError(path, f"expected a list of class ids, got {_type_name(value)}", index, "labels")
    for j, label in enumerate(value):
        if not isinstance(label, str):
            raise AnnotationError(path, f"expected a string, got {_type_name(label)}", index, f"labels[{j}]")
        if label not in valid_ids:
            source = getattr(valid_ids, "source", "the taxonomy")
            raise AnnotationError(
                path, f"unknown category id {label!r} (not a class of {source})", index, f"labels[{j}]"
            )
    return tuple(dict.fromkeys(value))


def _check_video(item: dict, path: Path, index: int) -> str:
    """The record's own video path, kept as written: whether it may be read is the frame source's decision."""
    value = item["video"]
    if not isinstance(value, str):
        raise AnnotationError(path, f"expected a path string, got {_type_name(value)}", index, "video")
    if not value.strip() or "\0" in value:
        raise AnnotationError(path, f"expected a file path, got {value[:40]!r}", index, "video")
    return value


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
