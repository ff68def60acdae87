"""Which labeled records train and which validate: the random hold-out, or one fold of a stratified K-fold.

K-fold assignment is our own rather than scikit-learn's ``StratifiedKFold``: that one deals the members of a
class to folds in sorted order, so every class with fewer members than folds lands in the first folds (all
singletons in fold 0), and it warns for each such class. The challenge's labels have many rare classes; here
each class's leftover members go to the folds that are smallest so far, which spreads rare classes over the
folds and keeps fold sizes within one record of each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmcls.config import DataConfig
from mmcls.data.annotations import Record
from mmcls.data.categories import CategoryMap


def split_train_val(
    records: Sequence[Record], val_fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """Deterministic hold-out split of the labeled records (same seed, same split, on every rank)."""
    order = np.random.default_rng(seed).permutation(len(records))
    num_val = int(round(len(records) * val_fraction))
    val_idx = set(order[:num_val].tolist())
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val


def assign_folds(labels: Sequence[int] | np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    """The fold (``0..num_folds-1``) of every record, stratified by ``labels`` (level-2 indices).

    Every class has ``n // K`` or ``n // K + 1`` members in each fold; the ``n % K`` leftover members of a
    class go to the folds with the fewest records so far (ties broken at random), classes taken from the most
    to the least frequent. Depends only on (labels, num_folds, seed).
    """
    labels = np.asarray(labels)
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    if len(labels) < num_folds:
        raise ValueError(f"{len(labels)} records cannot be split into {num_folds} folds")
    rng = np.random.default_rng(seed)
    folds = np.full(len(labels), -1, dtype=np.int64)
    sizes = np.zeros(num_folds, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    for cls in classes[np.lexsort((classes, -counts))]:  # most frequent first, then by class index
        members = rng.permutation(np.flatnonzero(labels == cls))
        # Smallest folds first (random among equals): the leftover members fill them.
        order = np.lexsort((rng.permutation(num_folds), sizes))
        for i, member in enumerate(members):
            folds[member] = order[i % num_folds]
        sizes += np.bincount(folds[members], minlength=num_folds)
    return folds


def record_folds(records: Sequence[Record], data: DataConfig, categories: CategoryMap) -> np.ndarray:
    """:func:`assign_folds` of labeled ``records`` with the config's ``num_folds`` and ``fold_seed``."""
    assert data.num_folds is not None
    labels = [categories.lv2_index(r.category_id) for r in records]  # type: ignore[arg-type]
    return assign_folds(labels, data.num_folds, data.fold_seed)


def split_labeled(
    records: Sequence[Record], data: DataConfig, seed: int, categories: CategoryMap
) -> tuple[list[Record], list[Record]]:
    """The (train, validation) records of a run: fold ``data.fold`` when folds are set, else the seeded
    ``val_fraction`` hold-out; then, with ``data.lv1_groups``, only the records of those level-1 groups.

    The group filter comes after the split so that a group fine-tune validates on the same records as the
    full run it starts from (filtering first would reshuffle the hold-out and train on its validation records).
    """
    if data.num_folds is not None:
        folds = record_folds(records, data, categories)
        train = [r for r, f in zip(records, folds) if f != data.fold]
        val = [r for r, f in zip(records, folds) if f == data.fold]
    else:
        train, val = split_train_val(records, data.val_fraction, seed)
    if data.lv1_groups is not None:
        groups = set(data.lv1_groups)
        train = [r for r in train if categories.lv1_index(r.category_id) in groups]  # type: ignore[arg-type]
        val = [r for r in val if categories.lv1_index(r.category_id) in groups]  # type: ignore[arg-type]
    return train, val
