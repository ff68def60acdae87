"""Multilabel tagging data (``data.task: multilabel``): multi-hot targets and the dataset that yields them.

A multilabel record carries ``labels``, a list of class ids of the taxonomy (see
:mod:`mmcls.data.annotations`). Here they become a 0/1 row over the classes in taxonomy order; a record
without ``labels`` (an unlabeled or test record) gets a row of -1, so a batch always has one ``labels``
tensor ``[B, C]`` and nothing downstream mistakes an unknown record for one without tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcls.config import Config
from mmcls.data.annotations import Record
from mmcls.data.builders import build_dataset
from mmcls.data.categories import CategoryMap
from mmcls.data.dataset import VideoTextDataset, collate_batch


def multi_hot(labels: Sequence[str] | None, categories: CategoryMap) -> np.ndarray:
    """``[C]`` float32: 1 for each class id in ``labels``, else 0; all -1 when ``labels`` is None (unknown)."""
    row = np.full(categories.num_lv2, -1.0 if labels is None else 0.0, dtype=np.float32)
    for label in labels or ():
        row[categories.lv2_index(label)] = 1.0
    return row


def label_matrix(records: Sequence[Record], categories: CategoryMap) -> np.ndarray:
    """``[N, C]`` multi-hot rows of ``records`` (see :func:`multi_hot`)."""
    if not records:
        return np.zeros((0, categories.num_lv2), dtype=np.float32)
    return np.stack([multi_hot(r.labels, categories) for r in records])


class MultiLabelDataset(VideoTextDataset):
    """A :class:`VideoTextDataset` whose samples' ``label`` is the record's multi-hot row ``[C]``."""

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = super().__getitem__(index)
        if sample is not None:
            sample["label"] = torch.from_numpy(multi_hot(self.records[index].labels, self.categories))
        return sample

    @staticmethod
    def collate_fn(samples: list[dict[str, Any] | None], pad_token_id: int = 0) -> dict[str, Any]:
        kept = [s for s in samples if s is not None]
        labels = [s["label"] for s in kept]
        batch = collate_batch([None if s is None else {**s, "label": 0} for s in samples], pad_token_id)
        width = len(labels[0]) if labels else 0
        batch["labels"] = torch.stack(labels) if labels else torch.zeros((0, width), dtype=torch.float32)
        return batch


def build_multilabel_dataset(
    cfg: Config,
    data_root: str | Path,
    split: str,
    records: Sequence[Record],
    tokenizer: Any,
    categories: CategoryMap,
    *,
    train: bool,
    **kwargs: Any,
) -> MultiLabelDataset:
    """:func:`mmcls.data.builders.build_dataset` with multi-hot labels (same frames, text and error policy)."""
    return build_dataset(  # type: ignore[return-value]
        cfg,
        data_root,
        split,
        records,
        tokenizer,
        categories,
        train=train,
        dataset_cls=MultiLabelDataset,
        **kwargs,
    )
