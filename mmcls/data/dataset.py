"""The torch Dataset that joins annotations, text encoding and a frame source, and its collate function.

Sampling randomness comes from ``np.random.default_rng([seed, epoch, index])``: a sample's frames depend only on
those three numbers, never on the worker that reads it, so training is reproducible with any number of
DataLoader workers or processes and after a resume. The dataset holds no open files (a frame source opens
its zips lazily in each worker), so it pickles to spawned workers.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from mmcls.data.annotations import Record
from mmcls.data.categories import CategoryMap
from mmcls.data.device_decode import EncodedFrameBatch
from mmcls.data.frames import EncodedFrames, FrameError, FrameSource
from mmcls.data.text import TextEncoder

logger = logging.getLogger(__name__)

ON_ERROR_POLICIES = ("text_only", "drop", "raise")
_MAX_WARNINGS = 10  # per dataset and process: enough to see a problem, not enough to flood a log


class VideoTextDataset(torch.utils.data.Dataset):
    """One sample per record: token ids, frames (or features) with their mask, and the lv2 label.

    ``frame_source=None`` gives text-only samples whose ``frames``/``frame_mask`` have zero frames.
    ``on_error`` decides what a sample whose frames cannot be read becomes: ``"text_only"`` (an all-padding
    clip, the error kind recorded in ``frame_errors``), ``"drop"`` (``None``; :func:`collate_batch` leaves it
    out and counts it) or ``"raise"``.
    """

    def __init__(
        self,
        records: Sequence[Record],
        text_encoder: TextEncoder,
        frame_source: FrameSource | None,
        categories: CategoryMap,
        *,
        train: bool,
        seed: int = 0,
        on_error: str = "text_only",
    ):
        if on_error not in ON_ERROR_POLICIES:
            raise ValueError(f"on_error={on_error!r}; use one of {ON_ERROR_POLICIES}")
        self.records = records
        self.text_encoder = text_encoder
        self.frame_source = frame_source
        self.categories = categories
        self.train = train
        self.seed = seed
        self.on_error = on_error
        self.epoch = 0
        self._warnings = 0

    @staticmethod
    def collate_fn(samples: list[dict[str, Any] | None], pad_token_id: int = 0) -> dict[str, Any]:
        """What the loaders batch with (:func:`collate_batch`); a subclass with extra sample fields overrides it."""
        return collate_batch(samples, pad_token_id)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's frame sampling (training). Call before creating the epoch's iterator."""
        self.epoch = epoch

    def rng(self, index: int) -> np.random.Generator | None:
        """The sampling generator of ``index`` this epoch; ``None`` (deterministic) when evaluating."""
        return np.random.default_rng([self.seed, self.epoch, index]) if self.train else None

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        frames, frame_mask, frame_errors = self._frames(record, index)
        if frames is None:
            return None
        return {
            "index": index,
            "id": record.id,
            "input_ids": torch.tensor(self.text_encoder.encode(record), dtype=torch.long),
            "frames": frames,
            "frame_mask": frame_mask,
            "label": -1 if record.category_id is None else self.categories.lv2_index(record.category_id),
            "frame_errors": frame_errors,
        }

    def _frames(
        self, record: Record, index: int
    ) -> tuple[torch.Tensor | EncodedFrames | None, torch.Tensor | None, list[str]]:
        source = self.frame_source_for(index)
        if source is None:
            return torch.zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.bool), []
        try:
            clip = source.read_record(record, self.rng(index))
        except FrameError as exc:
            if self.on_error == "raise":
                raise
            self._warn(exc)
            if self.on_error == "drop":
                return None, None, [exc.kind]
            clip = source.empty()
            clip.errors = [exc.kind]
        if isinstance(clip.frames, EncodedFrames):  # decoded later, on the device: it applies the policy then
            clip.frames.on_error = self.on_error
        return clip.frames, clip.mask, list(clip.errors)

    def frame_source_for(self, index: int) -> FrameSource | None:
        """Where the frames of sample ``index`` come from (one source here; per split when splits are mixed)."""
        return self.frame_source

    def _warn(self, exc: FrameError) -> None:
        self._warnings += 1
        if self._warnings <= _MAX_WARNINGS:
            action = "dropped" if self.on_error == "drop" else "text only"
            more = " (further frame errors are only counted)" if self._warnings == _MAX_WARNINGS else ""
            logger.warning("frames unreadable, sample %s: %s%s", action, exc, more)


def collate_batch(samples: Sequence[dict[str, Any] | None], pad_token_id: int = 0) -> dict[str, Any]:
    """Stack samples into a batch; ``None`` samples (dropped) are left out and counted in ``"dropped"``.

    ``input_ids`` are right-padded with ``pad_token_id`` to the longest sample. ``frame_errors`` counts the
    error kinds of every sample (skipped frames and whole-clip failures). A batch where every sample was
    dropped has zero rows; the training loop should skip it. Frames still encoded (``data.frames.decoder: cuda``)
    are gathered in an :class:`~mmcls.data.device_decode.EncodedFrameBatch`, decoded on the device later.
    """
    kept = [s for s in samples if s is not None]
    dropped = len(samples) - len(kept)
    errors: Counter[str] = Counter()
    for sample in kept:
        errors.update(sample["frame_errors"])
    if not kept:
        return {
            "index": torch.zeros(0, dtype=torch.long),
            "ids": [],
            "input_ids": torch.zeros((0, 0), dtype=torch.long),
            "attention_mask": torch.zeros((0, 0), dtype=torch.long),
            "frames": torch.zeros(0, dtype=torch.float32),
            "frame_mask": torch.zeros((0, 0), dtype=torch.bool),
            "labels": torch.zeros(0, dtype=torch.long),
            "frame_errors": errors,
            "dropped": dropped,
        }
    input_ids = pad_sequence([s["input_ids"] for s in kept], batch_first=True, padding_value=pad_token_id)
    lengths = torch.tensor([len(s["input_ids"]) for s in kept])
    attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    return {
        "index": torch.tensor([s["index"] for s in kept], dtype=torch.long),
        "ids": [s["id"] for s in kept],
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "frames": _collate_frames([s["frames"] for s in kept]),
        "frame_mask": torch.stack([s["frame_mask"] for s in kept]),
        "labels": torch.tensor([s["label"] for s in kept], dtype=torch.long),
        "frame_errors": errors,
        "dropped": dropped,
    }


def _collate_frames(frames: list[torch.Tensor | EncodedFrames]) -> torch.Tensor | EncodedFrameBatch:
    # One frame source (one data.frames.decoder) makes every sample of a batch: all encoded or all tensors,
    # so the first sample's kind is the batch's.
    if isinstance(frames[0], EncodedFrames):
        return EncodedFrameBatch(frames)  # type: ignore[arg-type]  # all EncodedFrames (see above)
    return torch.stack(frames)  # type: ignore[arg-type]  # all tensors (see above)
