"""Taxonomies: the label set of a model, read from a CSV file (``id,name,parent``), never from code.

A taxonomy file is UTF-8 CSV with a header naming at least ``id`` (``name`` and ``parent`` are optional
columns, any other column is kept as it is)::

    id,name,parent
    food,美食,
    food/home,家常菜,food
    sport,体育,
    sport/football,足球,sport

- ``id``: non-empty, unique, no comma, newline or surrounding spaces (ids end up in submission CSV lines).
- ``parent``: empty for a top-level row, else the ``id`` of a top-level row (two levels at most).
- ``name``: what people read in reports (empty: the id).

The **classes** (level 2, what the model predicts) are the rows that no row names as parent, in file order.
Level 1 of a class is its parent, or the class itself when it is top-level (in a flat file, with no parents
at all, level 1 is level 2). The level-1 groups are the top-level rows in file order, so a level-1 index is a
position in that list.

The packaged WBDC2022 list (``mmcls/assets/wbdc2022_categories.csv``: 23 parents ``00``..``22``, then the 200
official classes in official order, with their ``labeled_count``) is the default taxonomy: for it the level-1
index equals the official scorer's ``int(category_id[:2])``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from mmcls.errors import MmclsError
from mmcls.files import check_regular_file
from mmcls.names import CATEGORIES_FILE

PACKAGED_FILE = "wbdc2022_categories.csv"
PACKAGED_SOURCE = f"the packaged WBDC2022 list (mmcls/assets/{PACKAGED_FILE})"
REQUIRED_COLUMNS = ("id", "name", "parent")
COUNT_COLUMN = "labeled_count"  # optional: class frequencies (the synthetic data's imbalance)


class TaxonomyError(MmclsError, ValueError):
    """A taxonomy file (or a model folder's copy of one) is unusable; the message names the file and row."""


class ClassIds(frozenset):
    """The class ids of a taxonomy as a set, remembering which file they come from (for error messages)."""

    source: str = "the taxonomy"

    def __new__(cls, ids: tuple[str, ...], source: str = "the taxonomy") -> ClassIds:
        value = super().__new__(cls, ids)
        value.source = source
        return value

    def __reduce__(self):  # datasets holding the set travel to DataLoader workers
        return (type(self), (tuple(self), self.source))


@dataclass(frozen=True)
class Taxonomy:
    """A label set: classes (level 2) with names, their level-1 groups and the file's extra columns.

    ``lv2`` index = position of a class among the classes; ``lv1`` index = position of its top-level row
    among the top-level rows. Built by :meth:`from_rows` (a file, a model folder's ``categories.json``).
    """

    category_ids: tuple[str, ...]  # the classes, in file order
    lv1_of_lv2: tuple[int, ...]  # lv1 index of every class
    labeled_counts: tuple[int, ...]  # the ``labeled_count`` column (0 where the file has none)
    names: tuple[str, ...]  # class names
    parents: tuple[str, ...]  # parent id of every class ("" for a top-level class)
    lv1_ids: tuple[str, ...]  # the top-level rows, in file order
    lv1_names: tuple[str, ...]
    columns: tuple[str, ...]  # the file's header
    rows: tuple[tuple[str, ...], ...]  # every row of the file, in column order (extra columns kept)
    source: str = field(default="the taxonomy", compare=False)  # the file, for messages

    # ---------------------------------------------------------------------------------------- sizes
    @property
    def num_lv2(self) -> int:
        return len(self.category_ids)

    @property
    def num_lv1(self) -> int:
        return len(self.lv1_ids)

    @property
    def is_flat(self) -> bool:
        """No parents at all: level 1 is level 2."""
        return not any(self.parents)

    # ---------------------------------------------------------------------------------------- lookups
    def lv2_index(self, category_id: str) -> int:
        try:
            return self._index[category_id]
        except KeyError:
            raise KeyError(f"unknown category_id {category_id!r} (not a class of {self.source})") from None

    def category_id(self, lv2_index: int) -> str:
        return self.category_ids[lv2_index]

    def name(self, category_id: str) -> str:
        return self.names[self.lv2_index(category_id)]

    def lv1_index(self, category_id: str) -> int:
        """Level-1 index of a class, from the file (its parent's row), never from the id's characters."""
        return self.lv1_of_lv2[self.lv2_index(category_id)]

    def lv1_of_ids(self) -> dict[str, int]:
        """``{category_id: lv1 index}`` for every class (for scoring many labels at once)."""
        return dict(zip(self.category_ids, self.lv1_of_lv2))

    def lv1_id(self, category_id: str) -> str:
        return self.lv1_ids[self.lv1_index(category_id)]

    def id_set(self) -> ClassIds:
        """The class ids as a set that remembers this taxonomy's file (annotation checks name it)."""
        return ClassIds(self.category_ids, self.source)

    def column(self, name: str) -> tuple[str, ...]:
        """A column's value for every class (``KeyError`` if the file has no such column)."""
        position = self.columns.index(name) if name in self.columns else None
        if position is None:
            raise KeyError(f"{self.source} has no column {name!r}")
        by_id = {row[0]: row[position] for row in self.rows}
        return tuple(by_id[c] for c in self.category_ids)

    def lv2_to_lv1_matrix(self) -> np.ndarray:
        """``[num_lv2, num_lv1]`` 0/1 matrix: ``lv2_probs @ M`` gives lv1 probabilities."""
        matrix = np.zeros((self.num_lv2, self.num_lv1), dtype=np.float32)
        matrix[np.arange(self.num_lv2), list(self.lv1_of_lv2)] = 1.0
        return matrix

    # ---------------------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict:
        """The model folder's ``categories.json`` form: the file's rows plus per-class lists for readers."""
        return {
            "category_ids": list(self.category_ids),
            "lv1_of_lv2": list(self.lv1_of_lv2),
            "names": list(self.names),
            "parents": list(self.parents),
            "lv1_ids": list(self.lv1_ids),
            "lv1_names": list(self.lv1_names),
            "taxonomy": {"columns": list(self.columns), "rows": [list(row) for row in self.rows]},
        }

    def to_csv(self) -> str:
        """The taxonomy as a file's text (what :func:`read_taxonomy` reads back)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.rows)
        return buffer.getvalue()

    @classmethod
    def from_dict(cls, values: dict, source: str = CATEGORIES_FILE) -> Taxonomy:
        """Read a model folder's ``categories.json``.

        A folder written before taxonomies were files holds only ``category_ids`` (and ``lv1_of_lv2``): it is
        the packaged WBDC2022 list when its ids are the official ones, else its level-1 groups are named after
        their index (``00``, ``01``, ...) as the official ids did.
        """
        table = values.get("taxonomy")
        if table is not None:
            return cls.from_rows(table["columns"], [tuple(row) for row in table["rows"]], source)
        ids = tuple(values["category_ids"])
        official = official_categories()
        lv1 = values.get("lv1_of_lv2")
        if ids == official.category_ids and (lv1 is None or tuple(lv1) == official.lv1_of_lv2):
            return official
        if lv1 is None:
            raise TaxonomyError(f"{source}: lv1_of_lv2 is missing and the ids are not the WBDC2022 list")
        groups = [f"{int(g):02d}" for g in lv1]
        rows = [(g, g, "") for g in sorted(set(groups))] + [(c, c, g) for c, g in zip(ids, groups)]
        return cls.from_rows(("id", "name", "parent"), rows, source)

    @classmethod
    def from_rows(
        cls, columns: tuple[str, ...] | list[str], rows: list[tuple[str, ...]], source: str
    ) -> Taxonomy:
        """Check a table (header ``columns``, data ``rows``) and build the taxonomy; errors name ``source``
        and the row's line as if the table were a file (header on line 1)."""
        rows = [tuple(r) for r in rows]
        return _build(tuple(columns), rows, source, list(range(2, len(rows) + 2)))

    @property
    def _index(self) -> dict[str, int]:
        return _index_of(self.category_ids)


CategoryMap = Taxonomy  # the name every caller used before taxonomies were files


@lru_cache(maxsize=8)
def _index_of(category_ids: tuple[str, ...]) -> dict[str, int]:
    return {cid: i for i, cid in enumerate(category_ids)}


# ------------------------------------------------------------------------------------------------ checking
def _build(columns: tuple[str, ...], rows: list[tuple[str, ...]], source: str, lines: list[int]) -> Taxonomy:
    """Check the table and build the taxonomy (``lines``: the file line of every row, for messages)."""
    if "id" not in columns:
        raise TaxonomyError(
            f"{source}: line 1: the header must name an 'id' column (id,name,parent), got {columns}"
        )
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise TaxonomyError(f"{source}: line 1: column(s) {repeated} appear twice in the header")
    if not rows:
        raise TaxonomyError(f"{source}: no rows under the header (a taxonomy needs at least two classes)")
    # Canonical column order: id, name, parent, then the file's other columns as they come.
    extra = tuple(c for c in columns if c not in REQUIRED_COLUMNS)
    order = REQUIRED_COLUMNS + extra
    table: list[tuple[str, ...]] = []
    line_of: dict[str, int] = {}
    for row, line in zip(rows, lines):
        if len(row) != len(columns):
            raise TaxonomyError(f"{source}: line {line}: {len(row)} fields, the header has {len(columns)}")
        values = dict(zip(columns, row))
        cid = values["id"]
        _check_id(cid, source, line)
        if cid in line_of:
            raise TaxonomyError(f"{source}: line {line}: duplicate id {cid!r} (first on line {line_of[cid]})")
        line_of[cid] = line
        values.setdefault("name", "")
        values.setdefault("parent", "")
        table.append(tuple(values[c] for c in order))
    parent_of = {row[0]: row[2] for row in table}
    for row in table:
        cid, parent = row[0], row[2]
        if not parent:
            continue
        where = f"{source}: line {line_of[cid]}: id {cid!r}"
        if parent == cid:
            raise TaxonomyError(f"{where}: is its own parent")
        if parent not in parent_of:
            raise TaxonomyError(f"{where}: unknown parent {parent!r} (no row has that id)")
        if parent_of[parent]:
            raise TaxonomyError(
                f"{where}: parent {parent!r} has a parent itself ({parent_of[parent]!r}, line "
                f"{line_of[parent]}); a taxonomy has two levels at most"
            )
    return _taxonomy(order, table, line_of, source)


def _check_id(cid: str, source: str, line: int) -> None:
    if not cid:
        raise TaxonomyError(f"{source}: line {line}: empty id")
    if "," in cid or "\n" in cid or "\r" in cid:
        raise TaxonomyError(f"{source}: line {line}: id {cid!r} contains a comma or a line break")
    if cid != cid.strip():
        raise TaxonomyError(f"{source}: line {line}: id {cid!r} has leading or trailing spaces")


def _taxonomy(
    columns: tuple[str, ...], table: list[tuple[str, ...]], line_of: dict[str, int], source: str
) -> Taxonomy:
    named_as_parent = {row[2] for row in table if row[2]}
    top = [row for row in table if not row[2]]
    lv1_index = {row[0]: i for i, row in enumerate(top)}
    classes = [row for row in table if row[0] not in named_as_parent]
    if len(classes) < 2:
        raise TaxonomyError(f"{source}: {len(classes)} class(es); a classifier needs at least two")
    counts = [0] * len(classes)
    if COUNT_COLUMN in columns:
        position = columns.index(COUNT_COLUMN)
        for i, row in enumerate(classes):
            text = row[position].strip()
            if not (text.isascii() and text.isdigit()):
                raise TaxonomyError(
                    f"{source}: line {line_of[row[0]]}: {COUNT_COLUMN} must be a non-negative integer, "
                    f"got {row[position]!r}"
                )
            counts[i] = int(text)
    return Taxonomy(
        category_ids=tuple(row[0] for row in classes),
        lv1_of_lv2=tuple(lv1_index[row[2] or row[0]] for row in classes),
        labeled_counts=tuple(counts),
        names=tuple(row[1] or row[0] for row in classes),
        parents=tuple(row[2] for row in classes),
        lv1_ids=tuple(row[0] for row in top),
        lv1_names=tuple(row[1] or row[0] for row in top),
        columns=columns,
        rows=tuple(table),
        source=source,
    )


# ------------------------------------------------------------------------------------------------ loading
def parse_taxonomy(text: str, source: str) -> Taxonomy:
    """A taxonomy from a file's text (``source`` names it in errors)."""
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise TaxonomyError(
            f"{source}: empty file (expected a header id,name,parent and one row per category)"
        )
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[str, ...]] = []
    lines: list[int] = []
    try:
        header = tuple(cell.strip() for cell in next(reader))
        for row in reader:
            if row and any(cell.strip() for cell in row):  # blank lines (a trailing one) carry nothing
                rows.append(tuple(row))
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise TaxonomyError(f"{source}: line {reader.line_num}: not valid CSV: {exc}") from None
    return _build(header, rows, source, lines)


def read_taxonomy(path: str | Path) -> Taxonomy:
    """Read and check a taxonomy file; a bad one raises :class:`TaxonomyError` naming the file and row."""
    path = Path(path)
    try:
        check_regular_file(path, what="taxonomy file")
        data = path.read_bytes()
    except OSError as exc:
        raise TaxonomyError(f"{path}: cannot read taxonomy file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaxonomyError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_taxonomy(text, str(path))


def load_categories(path: str | Path | None) -> Taxonomy:
    """The taxonomy a setting names: ``None`` is the packaged WBDC2022 list, a path is read (and cached
    while the file is unchanged)."""
    if path is None:
        return official_categories()
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise TaxonomyError(f"{path}: cannot read taxonomy file: {exc.strerror or exc}") from None
    return _cached_taxonomy(str(path.resolve()), str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _cached_taxonomy(resolved: str, shown: str, mtime_ns: int, size: int) -> Taxonomy:
    return read_taxonomy(shown)


@lru_cache(maxsize=1)
def official_categories() -> Taxonomy:
    """The packaged WBDC2022 list (200 level-2 classes under 23 level-1 classes): the default taxonomy."""
    text = resources.files("mmcls.assets").joinpath(PACKAGED_FILE).read_text(encoding="utf-8")
    return parse_taxonomy(text, PACKAGED_SOURCE)
