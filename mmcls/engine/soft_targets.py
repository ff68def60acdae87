"""Training targets beyond one hard label per record: soft labels, a teacher's probabilities, a class subset.

``ClassificationTask`` asks a :class:`TrainingTargets` for its per-sample losses when a run has any of:

- soft targets (``data.extra_train`` records with ``soft_label``): a soft cross-entropy, under which a
  one-hot target gives exactly the hard-label cross-entropy (label smoothing included);
- a teacher (``train.distill_from``): ``(1 - w) * CE + w * T^2 * KL(teacher_T || student_T)`` (Hinton et al.,
  the ``T^2`` keeps the gradient scale independent of the temperature);
- a class subset (``data.lv1_groups``): logits of the other classes are pushed out of the softmax, so the
  loss only asks the model to tell the group's classes apart.

Targets are tables with one row per training record, looked up by the batch's dataset ``index`` (the loader,
the sampler and the collate function need not know about them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmcls.config import Config
from mmcls.data.annotations import Record
from mmcls.data.categories import CategoryMap

log = logging.getLogger("mmcls.train")

_MASKED_LOGIT = -1e4  # finite, so that 0 * log_softmax stays 0 (with -inf it would be NaN)


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Per-sample ``-sum(t * log_softmax(logits))`` in float32; smoothing as ``F.cross_entropy`` applies it."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    targets = targets.float()
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / logits.shape[-1]
    return -(targets * log_probs).sum(dim=-1)


def distillation_kl(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per-sample ``T^2 * KL(teacher_T || student_T)``; the teacher is given as probabilities (an ensemble's)."""
    teacher_log = torch.log(teacher_probs.float().clamp_min(1e-8)) / temperature
    teacher_t = F.softmax(teacher_log, dim=-1)
    student_log_t = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (teacher_t * (torch.log(teacher_t.clamp_min(1e-12)) - student_log_t)).sum(dim=-1)
    return kl * temperature**2


@dataclass
class TrainingTargets:
    """Per-record target tables (CPU, rows = training dataset indices) and how the loss uses them."""

    soft: torch.Tensor | None = None  # [N, C]: every record's target distribution (one-hot for hard labels)
    teacher: torch.Tensor | None = None  # [N, C]: the teacher's probabilities
    class_mask: torch.Tensor | None = None  # [C] bool: the classes the loss may use
    distill_weight: float = 0.5
    temperature: float = 2.0

    def _restrict(self, logits: torch.Tensor) -> torch.Tensor:
        if self.class_mask is None:
            return logits
        return logits.float().masked_fill(~self.class_mask.to(logits.device), _MASKED_LOGIT)

    @staticmethod
    def _rows(table: torch.Tensor, index: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """The rows of ``table`` for the batch's samples (their training dataset indices)."""
        if index is None:
            raise ValueError(
                "soft and teacher targets are looked up by the batch's sample 'index'; it has none"
            )
        return table[index].to(device)

    def cross_entropy(
        self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None, label_smoothing: float
    ) -> torch.Tensor:
        """Per-sample cross-entropy against the soft targets (or the hard labels), within the class subset."""
        logits = self._restrict(logits)
        if self.soft is None:
            return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, reduction="none")
        return soft_cross_entropy(logits, self._rows(self.soft, index, logits.device), label_smoothing)

    def fused_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None, label_smoothing: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The fused head's loss and its logged parts."""
        ce = self.cross_entropy(logits, labels, index, label_smoothing).mean()
        if self.teacher is None:
            return ce, {"loss_fused": ce.detach()}
        teacher = self._rows(self.teacher, index, logits.device)
        kd = distillation_kl(self._restrict(logits), teacher, self.temperature).mean()
        loss = (1.0 - self.distill_weight) * ce + self.distill_weight * kd
        return loss, {"loss_fused": ce.detach(), "loss_distill": kd.detach()}


def build_training_targets(
    cfg: Config,
    data_root: str | Path,
    records: Sequence[Record],
    source_splits: Sequence[str],
    soft_rows: Sequence[np.ndarray | None],
    categories: CategoryMap,
    device: torch.device,
) -> TrainingTargets | None:
    """The targets of a run whose training records are ``records`` (frames from ``source_splits``); None when
    plain hard-label training is all it needs. ``soft_rows``: a soft target or None per record."""
    soft = teacher = class_mask = None
    if any(row is not None for row in soft_rows):
        table = np.zeros((len(records), categories.num_lv2), dtype=np.float32)
        for i, (record, row) in enumerate(zip(records, soft_rows)):
            if row is None:
                table[i, categories.lv2_index(record.category_id)] = 1.0  # type: ignore[arg-type]
            else:
                table[i] = row
        soft = torch.from_numpy(table)
    if cfg.train.distill_from:
        teacher = torch.from_numpy(teacher_probs(cfg, data_root, records, source_splits, categories, device))
    if cfg.data.lv1_groups is not None:
        groups = set(cfg.data.lv1_groups)
        class_mask = torch.tensor([lv1 in groups for lv1 in categories.lv1_of_lv2])
    if soft is None and teacher is None and class_mask is None:
        return None
    return TrainingTargets(soft, teacher, class_mask, cfg.train.distill_weight, cfg.train.distill_temperature)


def teacher_probs(
    cfg: Config,
    data_root: str | Path,
    records: Sequence[Record],
    source_splits: Sequence[str],
    categories: CategoryMap,
    device: torch.device,
) -> np.ndarray:
    """``[len(records), C]`` teacher probabilities from ``train.distill_from``: a ``.npy`` probabilities file
    (rows looked up by id), or a model folder / run directory that predicts each needed split once."""
    from mmcls.data.prob_files import rows_for
    from mmcls.inference.predict import predict_split

    source = cfg.train.distill_from
    assert source is not None
    ids = [r.id for r in records]
    if source.endswith(".npy"):
        return rows_for(source, ids, categories)
    probs = np.zeros((len(records), categories.num_lv2), dtype=np.float32)
    for split in sorted(set(source_splits)):
        rows = [i for i, s in enumerate(source_splits) if s == split]
        wanted = [ids[i] for i in rows]
        log.info("distillation: teacher %s predicts %d records of %r", source, len(wanted), split)
        split_ids, preds, _ = predict_split(
            source,
            data_root,
            split,
            batch_size=max(cfg.train.eval_batch_size // _world_size(), 1),
            num_workers=cfg.data.num_workers,
            device=str(device.type),
            precision=cfg.train.precision,
            progress=False,
            ids=wanted,
            logit_adjust=0.0,  # the teacher's own probabilities, not the prediction-time adjustment
        )
        row_of = {video_id: row for row, video_id in enumerate(split_ids)}
        order = np.argsort(preds.indices)
        split_probs = preds.probs[order]
        probs[rows] = split_probs[[row_of[video_id] for video_id in wanted]]
    return probs


def _world_size() -> int:
    from mmcls.engine.distributed import world_info_from_env

    return world_info_from_env().world_size
