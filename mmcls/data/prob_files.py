"""Probability files: ``NAME.npy`` (``[records, classes]`` float32) + ``NAME.json`` (their ids and classes).

Written by ``mmcls kfold`` (``oof.npy``: out-of-fold probabilities) and ``mmcls ensemble --save-probs``; read by
``mmcls ensemble --weights hill-climb`` and by distillation (``train.distill_from``). Rows are looked up by
record id, never by position, so a file can be used with records in any order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmcls.data.categories import CategoryMap
from mmcls.errors import MmclsError


class ProbFileError(MmclsError, ValueError):
    """A probabilities file is missing, inconsistent with its ``.json``, or lacks records it is asked for."""


def sidecar(path: str | Path) -> Path:
    """``P.npy`` -> ``P.json``."""
    return Path(path).with_suffix(".json")


def check_probs_path(path: str | Path) -> None:
    """Refuse, before any work, a path :func:`save_probs` cannot write (a name without ``.npy``, a folder)."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ProbFileError(f"{path}: a probabilities file must end in .npy")
    for target in (path, sidecar(path)):
        if target.is_dir():
            raise ProbFileError(f"{target}: is a folder; a probabilities file is NAME.npy + NAME.json")


def save_probs(
    path: str | Path,
    probs: np.ndarray,
    ids: Sequence[str],
    categories: CategoryMap,
    **meta: Any,
) -> None:
    """Write ``path`` (.npy) and its ``.json`` ({ids, category_ids, **meta}); each file replaced atomically."""
    path = Path(path)
    check_probs_path(path)
    if probs.shape != (len(ids), categories.num_lv2):
        raise ValueError(f"probs of shape {probs.shape} for {len(ids)} ids and {categories.num_lv2} classes")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        np.save(fh, probs.astype(np.float32))
    os.replace(tmp, path)
    info = {**meta, "ids": list(ids), "category_ids": list(categories.category_ids)}
    write_json(sidecar(path), info)


def load_probs(path: str | Path) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """``(ids, probs, info)`` of a probabilities file; ``info`` is its ``.json`` (ids and classes included)."""
    path = Path(path)
    meta_path = sidecar(path)
    for needed in (path, meta_path):
        if not needed.is_file():
            raise ProbFileError(f"{needed}: no such file (a probabilities file is NAME.npy + NAME.json)")
    try:
        probs = np.load(path, allow_pickle=False)
        info = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProbFileError(f"{path}: unreadable probabilities file: {exc}") from None
    ids = info.get("ids") if isinstance(info, dict) else None
    if not isinstance(ids, list) or probs.ndim != 2 or probs.shape[0] != len(ids):
        raise ProbFileError(f"{path}: {probs.shape} probabilities do not match the ids of {meta_path}")
    if len(info.get("category_ids", [])) != probs.shape[1]:
        raise ProbFileError(f"{meta_path}: category_ids do not match the {probs.shape[1]} columns of {path}")
    return ids, probs.astype(np.float32, copy=False), info


def rows_for(path: str | Path, wanted: Sequence[str], categories: CategoryMap) -> np.ndarray:
    """The rows of ``path`` for the ids ``wanted`` (in that order); every id must be there."""
    ids, probs, info = load_probs(path)
    if list(info["category_ids"]) != list(categories.category_ids):
        raise ProbFileError(f"{sidecar(path)}: its classes are not this run's category map")
    row_of = {video_id: row for row, video_id in enumerate(ids)}
    missing = [video_id for video_id in wanted if video_id not in row_of]
    if missing:
        raise ProbFileError(
            f"{path}: no probabilities for {len(missing)} of the {len(wanted)} records asked for "
            f"(first: {missing[0]})"
        )
    return probs[[row_of[video_id] for video_id in wanted]]


def write_json(path: str | Path, values: Any) -> None:
    """Pretty JSON, written to a temporary file that replaces ``path`` only when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(values, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
