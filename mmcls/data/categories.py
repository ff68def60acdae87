"""The 200 official WBDC2022 level-2 categories and their 23 level-1 parents, shipped with the package.

``lv2`` index = row of the official list; ``lv1`` = ``int(category_id[:2])``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np


@dataclass(frozen=True)
class CategoryMap:
    """Both-way mappings between category ids (``"0103"``), lv2 indices and lv1 indices."""

    category_ids: tuple[str, ...]
    lv1_of_lv2: tuple[int, ...]  # lv1 index for every lv2 index
    labeled_counts: tuple[int, ...]  # real class frequencies of the 100k labeled set

    @property
    def num_lv2(self) -> int:
        return len(self.category_ids)

    @property
    def num_lv1(self) -> int:
        return max(self.lv1_of_lv2) + 1

    def lv2_index(self, category_id: str) -> int:
        try:
            return self._index[category_id]
        except KeyError:
            raise KeyError(f"unknown category_id {category_id!r}") from None

    def category_id(self, lv2_index: int) -> str:
        return self.category_ids[lv2_index]

    def lv1_index(self, category_id: str) -> int:
        return int(category_id[:2])

    def lv2_to_lv1_matrix(self) -> np.ndarray:
        """``[num_lv2, num_lv1]`` 0/1 matrix: ``lv2_probs @ M`` gives lv1 probabilities."""
        matrix = np.zeros((self.num_lv2, self.num_lv1), dtype=np.float32)
        matrix[np.arange(self.num_lv2), list(self.lv1_of_lv2)] = 1.0
        return matrix

    def to_dict(self) -> dict:
        return {"category_ids": list(self.category_ids), "lv1_of_lv2": list(self.lv1_of_lv2)}

    @classmethod
    def from_dict(cls, values: dict) -> CategoryMap:
        ids = tuple(values["category_ids"])
        lv1 = tuple(values.get("lv1_of_lv2") or [int(c[:2]) for c in ids])
        return cls(ids, lv1, tuple(values.get("labeled_counts") or [0] * len(ids)))

    @property
    def _index(self) -> dict[str, int]:
        return _index_of(self.category_ids)


@lru_cache(maxsize=8)
def _index_of(category_ids: tuple[str, ...]) -> dict[str, int]:
    return {cid: i for i, cid in enumerate(category_ids)}


@lru_cache(maxsize=1)
def official_categories() -> CategoryMap:
    """The official WBDC2022 category list (200 lv2 classes under 23 lv1 classes)."""
    text = resources.files("mmcls.assets").joinpath("wbdc2022_categories.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    return CategoryMap(
        category_ids=tuple(r["category_id"] for r in rows),
        lv1_of_lv2=tuple(int(r["lv1_id"]) for r in rows),
        labeled_counts=tuple(int(r["labeled_count"]) for r in rows),
    )
