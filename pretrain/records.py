"""An offset index over annotation files: a million records without a million Python objects.

JSON Lines and CSV files (:class:`~mmcls.data.annotations.LineRecordReader`) are indexed the same way, a
record's span being its line (or its lines, for a CSV row with a quoted newline).

Pretraining reads the unlabeled split (1,000,000 records in the challenge) plus others. A list of
:class:`~mmcls.data.annotations.Record` would hold every title, ASR text and OCR line as Python objects in
every process (and DataLoader workers touch their reference counts, so fork's copy-on-write does not help).
:class:`RecordIndex` instead scans each file once, validating every record as it goes by, and keeps only
numpy arrays: the byte offset and length of each record and which file it came from (~17 bytes a record).
A record is parsed again from its bytes when a sample is read; each worker opens the files lazily.

The scan decodes the JSON list with the standard library's C decoder (``json.JSONDecoder.raw_decode``), which
reports where each record ends: its byte span in the file follows, without a hand-written JSON tokenizer.
"""

from __future__ import annotations

import array
import codecs
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mmcls.data.annotations import (
    AnnotationError,
    LineRecordReader,
    Record,
    annotation_format,
    category_id_set,
    parse_record,
)
from mmcls.data.categories import CategoryMap

_CHUNK = 4 * 1024 * 1024
_NON_BLANK = re.compile(r"[^ \t\r\n]")
_MAX_RECORD = 64 * 1024 * 1024  # characters; far above any real record
_DECODER = json.JSONDecoder()


class RecordIndex(Sequence[Record]):
    """Records of several annotation files, in order, read by position; see the module docstring."""

    def __init__(self, paths: Sequence[str | Path], categories: CategoryMap | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.valid_ids = category_id_set(categories)
        starts, lengths, files = [], [], []
        # JSON Lines and CSV files are scanned and re-read by their own reader (it knows a CSV file's header).
        self.line_readers: dict[int, LineRecordReader] = {}
        for file_index, path in enumerate(self.paths):
            if annotation_format(path) != "json":
                reader = self.line_readers[file_index] = LineRecordReader(path, categories)
                s, n = _spans_to_arrays(reader.scan())
            else:
                s, n = scan_record_offsets(path, categories)
            starts.append(s)
            lengths.append(n)
            files.append(np.full(len(s), file_index, dtype=np.uint8))
        self.starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
        self.file_of = np.concatenate(files) if files else np.zeros(0, np.uint8)
        self.first_index = np.cumsum([0] + [len(s) for s in starts])  # per file: its first position
        self._handles: dict[int, BinaryIO] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, position: int) -> Record:  # type: ignore[override]
        if not 0 <= position < len(self):
            raise IndexError(position)
        file_index = int(self.file_of[position])
        path = self.paths[file_index]
        handle = self._handle(file_index)
        handle.seek(int(self.starts[position]))
        raw = handle.read(int(self.lengths[position]))
        index_in_file = position - int(self.first_index[file_index])
        if file_index in self.line_readers:
            return self.line_readers[file_index].parse(raw, index_in_file)
        return parse_record(json.loads(raw), path, index_in_file, self.valid_ids)

    def _handle(self, file_index: int) -> BinaryIO:
        # A forked DataLoader worker must not share the parent's file position: reopen after a fork.
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if file_index not in self._handles:
            self._handles[file_index] = self.paths[file_index].open("rb")
        return self._handles[file_index]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # open files do not pickle (spawned workers); they reopen lazily
        return state


class Subset(Sequence[Record]):
    """Positions ``positions`` (an int array) of a :class:`RecordIndex`, as a sequence of records."""

    def __init__(self, records: Sequence[Record], positions: np.ndarray) -> None:
        self.records, self.positions = records, np.asarray(positions, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> Record:  # type: ignore[override]
        return self.records[int(self.positions[i])]

    def source_position(self, i: int) -> int:
        return int(self.positions[i])


def _spans_to_arrays(spans) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, lengths)`` arrays of ``(start, length)`` pairs, grown in compact arrays."""
    starts, lengths = array.array("q"), array.array("q")
    for start, length in spans:
        starts.append(start)
        lengths.append(length)
    return np.frombuffer(starts, dtype=np.int64).copy(), np.frombuffer(lengths, dtype=np.int64).astype(
        np.int32
    )


def scan_record_offsets(
    path: str | Path, categories: CategoryMap | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Byte offset and length of every record of the JSON list in ``path``; every record is validated.

    Raises :class:`AnnotationError` naming the file (and the record) for anything that is not a JSON list of
    valid records. Memory: the current 4 MiB chunk, one decoded record at a time and the two growing arrays.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise AnnotationError(path, "file not found") from None
    valid_ids = category_id_set(categories)
    starts = array.array("q")  # 8 bytes an entry while growing (a list would hold an int object each)
    lengths = array.array("q")
    with handle:
        scanner = _Scanner(handle, path)
        scanner.expect_list_start()
        while (span := scanner.next_record(len(starts))) is not None:
            item, start, length = span
            parse_record(item, path, len(starts), valid_ids)  # validate, then drop it
            starts.append(start)
            lengths.append(length)
    return np.frombuffer(starts, dtype=np.int64).copy(), np.frombuffer(lengths, dtype=np.int64).astype(
        np.int32
    )


class _Scanner:
    """Walks a JSON list in text chunks, keeping the byte offset of the current character."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self.handle, self.path = handle, path
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.pos = 0  # character position in self.text
        self.byte_pos = 0  # byte offset in the file of self.text[self.pos]
        self.eof = False
        self.first = True
        if handle.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8:
            self.byte_pos = len(codecs.BOM_UTF8)
        else:
            handle.seek(0)

    def _more(self) -> bool:
        """Append the next chunk to the text (dropping what was consumed); False at the end of the file."""
        if self.eof:
            return False
        chunk = self.handle.read(_CHUNK)
        self.eof = not chunk
        try:
            fresh = self.decoder.decode(chunk, final=self.eof)
        except UnicodeDecodeError as exc:
            raise AnnotationError(
                self.path, f"not valid UTF-8 near byte {self.byte_pos}: {exc.reason}"
            ) from None
        self.text = self.text[self.pos :] + fresh
        self.pos = 0
        return True

    def _advance(self, new_pos: int) -> None:
        self.byte_pos += len(self.text[self.pos : new_pos].encode("utf-8"))
        self.pos = new_pos

    def _peek(self) -> str | None:
        """The next non-blank character (not consumed), or None at the end of the file."""
        while True:
            found = _NON_BLANK.search(self.text, self.pos)
            if found:
                self.byte_pos += found.start() - self.pos  # blanks are ASCII: one byte each
                self.pos = found.start()
                return self.text[self.pos]
            self.byte_pos += len(self.text) - self.pos
            self.pos = len(self.text)
            if not self._more():
                return None

    def expect_list_start(self) -> None:
        char = self._peek()
        if char is None:
            raise AnnotationError(self.path, "empty file, expected a JSON list of records")
        if char != "[":
            head = self.text[self.pos : self.pos + 20]
            raise AnnotationError(self.path, f"expected a JSON list of records, file starts with {head!r}")
        self._advance(self.pos + 1)

    def next_record(self, index: int) -> tuple[object, int, int] | None:
        """``(decoded record, byte offset, byte length)`` of the next list element, or None after ``]``."""
        char = self._peek()
        if char == "]":
            return None
        if not self.first:
            if char != ",":
                raise self._error(index, "expected ',' or ']'" if char else "the list is not closed")
            self._advance(self.pos + 1)
            char = self._peek()
        if char is None:
            raise self._error(index, "the list is not closed")
        self.first = False
        while True:
            try:
                item, end = _DECODER.raw_decode(self.text, self.pos)
                break
            except json.JSONDecodeError as exc:
                # The record may run past the loaded text: load more and retry. A record is never near
                # _MAX_RECORD characters, so an error with that much text loaded is a broken file.
                if len(self.text) - self.pos > _MAX_RECORD or not self._more():
                    raise self._error(index, exc.msg) from None
        start = self.byte_pos
        self._advance(end)
        return item, start, self.byte_pos - start

    def _error(self, index: int, detail: str) -> AnnotationError:
        after = f"after record {index - 1}" if index > 0 else "before the first record"
        return AnnotationError(self.path, f"invalid or truncated JSON {after}: {detail}")
