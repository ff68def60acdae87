"""Multilabel tagging runs (``data.task: multilabel``): the setup and the task.

Why a setup and a task of their own rather than a mode of :class:`~mmcls.engine.setup.ClassificationSetup` /
:class:`~mmcls.engine.task.ClassificationTask`: every loss term of the classification task (cross-entropy,
label smoothing, class weights by the single label, the level-1 NLL of a softmax, soft F1, R-Drop's KL of two
softmaxes, soft/teacher targets) assumes one label per video, and so do its splits (stratified by the class),
its scores (``mean_f1``) and its model folder (class counts). A mode would put a branch in each; a subclass of
the shared bases keeps what is the same (the loop, EMA, SWA, AMP, DDP/FSDP, resume, adversarial passes,
multi-sample dropout, the video-only auxiliary head) and states what differs in one place.

Settings that cannot apply to tags are refused in :meth:`MultiLabelSetup.check_config`, before any work.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmcls.config import Config, ConfigError
from mmcls.data.annotations import AnnotationError, annotation_path, count_duplicate_ids, load_records
from mmcls.data.categories import CategoryMap
from mmcls.data.folds import split_train_val
from mmcls.data.multilabel import MultiLabelDataset, build_multilabel_dataset, label_matrix
from mmcls.engine import losses
from mmcls.engine.inference import gather_predictions, predict_loader
from mmcls.engine.setup import ClassificationSetup, Selection, TaskData
from mmcls.engine.task import TrainingTask
from mmcls.metrics import multilabel_scores
from mmcls.models import save_model_dir
from mmcls.models.fusion import MultimodalClassifier
from mmcls.names import LOGITS, MODEL_INPUTS, VIDEO_LOGITS
from mmcls.tagging import Thresholds, choose_thresholds, decide_tags

log = logging.getLogger("mmcls.train")

#: Settings of single-label training that have no multilabel meaning, with what to do instead.
_REFUSED = {
    "train.label_smoothing": "0",
    "train.class_weight_alpha": "0",
    "train.lv1_loss_weight": "0",
    "train.soft_f1_weight": "0",
    "train.rdrop_alpha": "0",
}


class MultiLabelTask(TrainingTask):
    """Per-class sigmoid loss (BCE or ASL) on the fused logits + the weighted video-only auxiliary loss.

    Both are per-sample sums over the classes, averaged over the samples that have labels (the auxiliary one
    over those with frames too, by a 0/1 mask so the video head stays in the graph under DDP).
    """

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        outputs = self.train_model(**{k: batch[k] for k in MODEL_INPUTS})
        targets = batch["labels"]
        labeled = (targets >= 0).all(dim=1)
        targets = targets.clamp(min=0)
        fused = losses.weighted_mean(self.per_sample(outputs[LOGITS], targets), targets, None, mask=labeled)
        parts = {"loss_fused": fused.detach()}
        loss = fused
        if self.cfg.aux_loss_weight > 0:
            has_video = batch["frame_mask"].any(dim=1) & labeled
            video = losses.weighted_mean(
                self.per_sample(outputs[VIDEO_LOGITS], targets), targets, None, mask=has_video
            )
            loss = loss + self.cfg.aux_loss_weight * video
            parts["loss_video"] = video.detach()
        return loss, parts

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.cfg.multilabel_loss == "asl":
            asl = self.cfg.asl
            return losses.asymmetric_loss(logits, targets, asl.gamma_pos, asl.gamma_neg, asl.clip)
        return losses.multilabel_bce(logits, targets)


class MultiLabelSetup(ClassificationSetup):
    """Multilabel fine-tuning: records with ``labels``, a seeded random hold-out, selected on ``gap_at_20``;
    after every validation the per-class thresholds are chosen (:mod:`mmcls.tagging`) and saved with the model.

    It inherits the taxonomy and the model check of :class:`ClassificationSetup`; datasets, task, scores and
    the model folder are its own.
    """

    selection = Selection("gap_at_20", higher_is_better=True)

    def __init__(self, cfg: Config, data_root: str | Path) -> None:
        super().__init__(cfg, data_root)
        self.thresholds: Thresholds | None = None  # chosen by the last evaluate()

    def check_config(self) -> None:
        super().check_config()
        cfg = self.cfg
        for key, off in _REFUSED.items():
            section, name = key.split(".")
            if getattr(getattr(cfg, section), name):
                raise ConfigError(f"{key}: single-label only; set it to {off} with data.task=multilabel")
        if cfg.train.distill_from is not None:
            raise ConfigError("train.distill_from: distillation is single-label only (data.task=multiclass)")
        if cfg.data.extra_train:
            raise ConfigError("data.extra_train: pseudo-labels are single-label only (data.task=multiclass)")
        if cfg.data.lv1_groups is not None:
            raise ConfigError(
                "data.lv1_groups: group fine-tuning is single-label only (data.task=multiclass)"
            )

    def datasets(self) -> TaskData:
        cfg = self.cfg
        path = annotation_path(self.data_root, cfg.data.train_split, cfg.data.annotations)
        records = load_records(path, require_labels=True, categories=self.categories)
        if cfg.data.limit_train:
            records = records[: cfg.data.limit_train]
        if not records:
            raise AnnotationError(path, "no labeled records to train on")
        self.duplicate_ids = count_duplicate_ids(records)
        if self.duplicate_ids:
            log.warning("%s: %d records repeat an earlier id", path, self.duplicate_ids)
        train_records, val_records = split_train_val(records, cfg.data.val_fraction, cfg.train.seed)
        self.train_labels = label_matrix(train_records, self.categories)
        self.class_counts = self.train_labels.sum(axis=0).astype(np.int64)

        train_set = self._dataset(train_records, train=True)
        return TaskData(train_set, self._dataset(val_records, train=False) if val_records else None)

    def _dataset(self, records: list, *, train: bool) -> MultiLabelDataset:
        """Records of ``data.train_split`` with multi-hot labels (frames from that split)."""
        cfg = self.cfg
        split = cfg.data.train_split
        return build_multilabel_dataset(
            cfg, self.data_root, split, records, self.tokenizer, self.categories, train=train
        )

    def build_model(self) -> MultimodalClassifier:
        """The classifier; with ``model.label_embedding: pmi`` its class vectors come from the training split's
        label co-occurrence (:mod:`mmcls.models.label_embedding`; datasets() has run)."""
        model = super().build_model()
        if self.cfg.model.label_embedding == "pmi":
            from mmcls.models.label_embedding import LabelDot, pmi_embedding

            vectors = pmi_embedding(self.train_labels, self.cfg.model.label_embedding_dim)
            # With a label embedding the classifier is label_embedding_head's: item 2 is its LabelDot.
            cast(LabelDot, model.get_submodule("classifier.2")).set_vectors(vectors)
            log.info("label embedding: PMI vectors of %d classes, dim %d", *vectors.shape)
        return model

    def build_task(self, model: MultimodalClassifier, device: torch.device) -> TrainingTask:
        model.head_samples = self.cfg.train.multi_dropout
        return MultiLabelTask(model, self.cfg.train, device)

    def evaluate(
        self, task: TrainingTask, loader: DataLoader, device: torch.device, progress: bool
    ) -> tuple[dict[str, float], Counter]:
        local = predict_loader(
            task.eval_model,
            loader,
            device,
            self.cfg.train.precision,
            progress=progress,
            desc="evaluate",
            multilabel=True,
        )
        preds = gather_predictions(local)
        probs, targets = preds.probs, preds.labels > 0
        limits = self.cfg.train.thresholds
        self.thresholds = choose_thresholds(
            probs, targets, list(self.categories.category_ids), limits.floor, limits.min_positives
        )
        tags = decide_tags(probs, self.thresholds.per_class, min_tags=limits.min_tags)
        scores = multilabel_scores(targets, probs, tags, self.categories)
        self.class_scores = class_rows(targets, probs, tags, self.thresholds, self.categories)
        clipped = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
        bce = -(targets * np.log(clipped) + (~targets) * np.log1p(-clipped)).sum(axis=1)
        scores["loss"] = float(bce.mean()) if len(bce) else math.nan
        scores["num_samples"] = len(preds.indices)
        return scores, preds.frame_errors

    def save_model(self, path: Path, model: nn.Module) -> None:
        counts = self.class_counts.tolist() if self.class_counts is not None else None
        save_model_dir(path, model, self.cfg, self.tokenizer, self.categories, train_counts=counts)
        if self.thresholds is not None:
            self.thresholds.save(path)


def class_rows(
    targets: np.ndarray, probs: np.ndarray, tags: np.ndarray, thresholds: Thresholds, categories: CategoryMap
) -> list[dict]:
    """Per class of the validation split: AP, F1 at its threshold, the threshold and whether it is the class's
    own; the keys of the single-label rows (``support``, ``precision``, ``recall``, ``f1``) for summary.md."""
    from sklearn.metrics import average_precision_score

    rows = []
    for c, cid in enumerate(categories.category_ids):
        truth, pred = targets[:, c], tags[:, c]
        hits = int((truth & pred).sum())
        precision = hits / pred.sum() if pred.sum() else 0.0
        recall = hits / truth.sum() if truth.sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        ap = float(average_precision_score(truth, probs[:, c])) if truth.any() else math.nan
        rows.append(
            {
                "category_id": cid,
                "name": categories.name(cid),
                "lv1_id": categories.lv1_id(cid),
                "support": int(truth.sum()),
                "predicted": int(pred.sum()),
                "correct": hits,
                "precision": round(float(precision), 6),
                "recall": round(float(recall), 6),
                "f1": round(float(f1), 6),
                "ap": round(ap, 6),
                "threshold": round(float(thresholds.per_class[c]), 6),
                "own_threshold": bool(thresholds.own[c]),
            }
        )
    return rows
