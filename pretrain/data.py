"""Pretraining samples: records of several splits (labels unused), whole-word-masked text, frames.

The dataset is the fine-tuning :class:`~mmcls.data.dataset.VideoTextDataset` (same frame sampling, same
handling of unreadable frames, same per-sample RNG) over a :class:`~mmcls.pretrain.records.RecordIndex`, with
frames read from each record's own split and the text masked for MLM. Masking draws from the sample's own
generator, ``default_rng([seed, epoch, index, 1])`` while training and ``[seed, index, 1]`` (the same every
epoch) for the held-out loss, so a resumed run and any number of workers see the same masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from mmcls.data.annotations import annotation_path
from mmcls.data.categories import load_categories
from mmcls.data.dataset import VideoTextDataset, collate_batch
from mmcls.data.frames import FrameSource, build_frame_source
from mmcls.pretrain.config import PretrainConfig
from mmcls.pretrain.masking import IGNORE_INDEX, WordTextEncoder, special_token_ids, whole_word_mask
from mmcls.pretrain.records import RecordIndex, Subset


class PretrainDataset(VideoTextDataset):
    """``positions`` of ``index`` (records of ``splits``, in that order) as pretraining samples."""

    records: Subset
    text_encoder: WordTextEncoder

    def __init__(
        self,
        cfg: PretrainConfig,
        index: RecordIndex,
        positions: np.ndarray,
        splits: Sequence[str],
        frame_sources: dict[str, FrameSource | None],
        tokenizer: Any,
        *,
        train: bool,
    ) -> None:
        text_encoder = WordTextEncoder(tokenizer, cfg.data.text)
        super().__init__(
            Subset(index, positions),
            text_encoder,
            None,
            load_categories(cfg.data.categories),  # labeled records' ids are checked against the taxonomy
            train=train,
            seed=cfg.train.seed,
            on_error=cfg.data.frames.on_error if train else "text_only",
        )
        self.index, self.splits, self.frame_sources = index, list(splits), frame_sources
        self.mlm_probability = cfg.pretrain.mlm_probability
        self.mask_id = int(tokenizer.mask_token_id)
        self.vocab_size = len(tokenizer)
        self.special_ids = special_token_ids(tokenizer)

    def frame_source_for(self, index: int) -> FrameSource | None:
        file_index = int(self.index.file_of[self.records.source_position(index)])
        return self.frame_sources[self.splits[file_index]]

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        frames, frame_mask, frame_errors = self._frames(record, index)
        if frames is None:
            return None
        words = self.text_encoder.encode_words(record)
        rng = np.random.default_rng(
            [self.seed, self.epoch, index, 1] if self.train else [self.seed, index, 1]
        )
        ids, labels = whole_word_mask(
            words, rng, self.mlm_probability, self.mask_id, self.vocab_size, self.special_ids
        )
        return {
            "index": index,
            "id": record.id,
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "mlm_labels": torch.tensor(labels, dtype=torch.long),
            "frames": frames,
            "frame_mask": frame_mask,
            "label": -1,  # labels are not used in pretraining
            "frame_errors": frame_errors,
        }

    @staticmethod
    def collate_fn(samples: list[dict[str, Any] | None], pad_token_id: int = 0) -> dict[str, Any]:
        batch = collate_batch(samples, pad_token_id)
        kept = [s for s in samples if s is not None]
        batch["mlm_labels"] = (
            pad_sequence([s["mlm_labels"] for s in kept], batch_first=True, padding_value=IGNORE_INDEX)
            if kept
            else torch.zeros((0, 0), dtype=torch.long)
        )
        return batch


def build_pretrain_datasets(
    cfg: PretrainConfig, data_root: str | Path, tokenizer: Any
) -> tuple[PretrainDataset, PretrainDataset | None]:
    """Training and held-out datasets over the records of ``pretrain.splits`` (seeded hold-out of ``val_size``)."""
    p = cfg.pretrain
    index = RecordIndex(
        [annotation_path(data_root, split, cfg.data.annotations) for split in p.splits],
        load_categories(cfg.data.categories),
    )
    count = min(len(index), p.limit_records) if p.limit_records else len(index)
    order = np.random.default_rng(cfg.train.seed).permutation(count)
    num_val = min(p.val_size, count // 2)
    train_positions, val_positions = np.sort(order[num_val:]), np.sort(order[:num_val])
    sources = {split: build_frame_source(cfg.data.frames, data_root, split) for split in p.splits}
    train_set = PretrainDataset(cfg, index, train_positions, p.splits, sources, tokenizer, train=True)
    val_set = (
        PretrainDataset(cfg, index, val_positions, p.splits, sources, tokenizer, train=False)
        if num_val
        else None
    )
    return train_set, val_set
