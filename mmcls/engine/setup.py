"""What a kind of training run needs besides its loss: datasets, evaluation, model selection, model folder.

The loop in ``trainer.py`` is the same for every kind of run (resume, signals, DDP/FSDP, AMP, checkpoints).
A :class:`TaskSetup` tells it what differs: which records it trains and validates on, which model to build
and which :class:`~mmcls.engine.task.TrainingTask` computes the loss, how a validation pass is scored and
which score selects ``best/``, and how a model folder is written. :class:`ClassificationSetup` is the
fine-tuning run (labelled records, ``mean_f1``); ``mmcls.pretrain`` provides the pretraining one.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmcls.config import Config, ConfigError
from mmcls.data.annotations import AnnotationError, annotation_path, count_duplicate_ids, load_records
from mmcls.data.builders import TrainingSet, build_dataset
from mmcls.data.categories import load_categories
from mmcls.data.dataset import VideoTextDataset
from mmcls.data.extra_train import ConcatTrainingSets, load_extra_train
from mmcls.data.folds import split_labeled
from mmcls.data.switch import Phase, build_phases, extra_confidences, phase_of
from mmcls.data.text import load_tokenizer
from mmcls.engine.inference import gather_predictions, predict_loader
from mmcls.engine.soft_targets import build_training_targets
from mmcls.engine.task import ClassificationTask, TrainingTask
from mmcls.engine.tau import grid_scores, tau_record, write_tau
from mmcls.metrics import compute_scores_from_indices
from mmcls.models import build_model, save_model_dir
from mmcls.models.fusion import MultimodalClassifier, check_model_config
from mmcls.report import per_class_scores

log = logging.getLogger("mmcls.train")


@dataclass(frozen=True)
class Selection:
    """Which validation score picks the ``best/`` model folder."""

    metric: str
    higher_is_better: bool

    def improves(self, score: float, best: float | None) -> bool:
        if best is None:
            return True
        return score > best if self.higher_is_better else score < best


@dataclass
class TaskData:
    train_set: TrainingSet
    val_set: VideoTextDataset | None  # None: no validation, ``best/`` is the last model


class TaskSetup(ABC):
    """The parts of a training run that depend on what is trained (see the module docstring)."""

    selection: Selection
    #: Per-class scores (id, name, F1...) of the last evaluation, for the run's summary.md; None where the kind
    #: of run has no classes (pretraining) or before the first evaluation.
    class_scores: list[dict[str, Any]] | None = None

    def __init__(self, cfg: Config, data_root: str | Path) -> None:
        self.cfg = cfg
        self.data_root = Path(data_root)
        self.tokenizer = load_tokenizer(cfg.data.text.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id or 0

    def check_config(self) -> None:
        """Refuse settings that only this kind of run cannot use (raise :class:`ConfigError`).

        Called by the trainer after the generic checks and before any data is read or any file written, on
        every rank. The base accepts everything.
        """
        return None

    @abstractmethod
    def datasets(self) -> TaskData:
        """The training and validation datasets (identical on every rank)."""

    def train_indices(self, epoch: int) -> np.ndarray | None:
        """The samples of ``datasets().train_set`` that epoch ``epoch`` (0-based) trains on; None: all of them.

        The trainer asks before every epoch (and once per epoch up front, to size the schedule). It must
        depend on the epoch alone, so a resumed run trains on what an uninterrupted one did. The base trains
        on everything; classification follows ``data.switch``.
        """
        return None

    def annotation_problems(self) -> dict[str, int]:
        """Problems found in the annotations by :meth:`datasets` (``{kind: count}``, nothing if none): the
        trainer records them under ``"annotations"`` in ``RUN_DIR/data_errors.json``. The base finds none."""
        return {}

    def build_model(self) -> MultimodalClassifier:
        """A freshly initialised model (also used to gather FSDP shards into one copy for saving)."""
        return build_model(self.cfg, vocab_size=len(self.tokenizer))

    @abstractmethod
    def build_task(self, model: MultimodalClassifier, device: torch.device) -> TrainingTask:
        """The training task around ``model`` (not yet wrapped for distributed training)."""

    @property
    def find_unused_parameters(self) -> bool:
        """For DDP: without frames (``data.frames.source=none``) the frame encoder and projection get no gradient."""
        return self.cfg.data.frames.source == "none"

    @abstractmethod
    def evaluate(
        self, task: TrainingTask, loader: DataLoader, device: torch.device, progress: bool
    ) -> tuple[dict[str, float], Counter]:
        """Scores of ``task.eval_model`` on this rank's shard ``loader``, combined over all ranks (every rank
        calls it and gets the same result), and the frame problems of the whole validation split."""

    @abstractmethod
    def save_model(self, path: Path, model: nn.Module) -> None:
        """Write ``model`` (plain, unwrapped, full weights) as a model folder at ``path`` (rank 0 only)."""


class ClassificationSetup(TaskSetup):
    """Fine-tuning: labelled records of ``data.train_split`` with a seeded hold-out, selected on ``mean_f1``."""

    selection = Selection("mean_f1", higher_is_better=True)
    #: ``{TAU: mean_f1}`` of the last evaluation's logit-adjustment grid; None before it (or without counts).
    tau_scores: dict[float, float] | None = None

    def __init__(self, cfg: Config, data_root: str | Path) -> None:
        super().__init__(cfg, data_root)
        self.categories = load_categories(cfg.data.categories)
        # Per-class counts of the training split (set by datasets()): class-balanced loss weights, and saved
        # with every released model folder as the class prior of ``mmcls predict --logit-adjust``.
        self.class_counts: np.ndarray | None = None
        self.duplicate_ids = 0  # records repeating an earlier id (set by datasets())
        self._phases: list[Phase] = []  # data.switch's training subsets (set by datasets())

    def check_config(self) -> None:
        """The model predicts one score per category, and ``data.frames`` fits the model (frame count, features
        vs. encoder): found here rather than when the model is built."""
        num_classes = self.categories.num_lv2
        if self.cfg.model.num_classes != num_classes:
            raise ConfigError(
                f"model.num_classes={self.cfg.model.num_classes} does not match the {num_classes} classes of "
                f"{self.categories.source}"
            )
        check_model_config(self.cfg)

    def datasets(self) -> TaskData:
        cfg = self.cfg
        records = load_records(
            annotation_path(self.data_root, cfg.data.train_split, cfg.data.annotations),
            require_label=True,
            categories=self.categories,
        )
        if cfg.data.limit_train:
            records = records[: cfg.data.limit_train]
        path = annotation_path(self.data_root, cfg.data.train_split, cfg.data.annotations)
        if not records:
            raise AnnotationError(path, "no labeled records to train on")
        # Kept (each is a training sample) but counted: the trainer reports them in data_errors.json.
        self.duplicate_ids = count_duplicate_ids(records)
        if self.duplicate_ids:
            log.warning("%s: %d records repeat an earlier id", path, self.duplicate_ids)
        train_records, val_records = split_labeled(records, cfg.data, cfg.train.seed, self.categories)
        # Per-class counts of the labeled training records: class-balanced loss weights, and saved with every
        # released model folder as the class prior of ``mmcls predict --logit-adjust``.
        self.class_counts = np.bincount(
            # Loaded with require_label=True: every record has its category_id.
            [self.categories.lv2_index(r.category_id) for r in train_records],  # type: ignore[arg-type]
            minlength=self.categories.num_lv2,
        )
        split = cfg.data.train_split
        labeled_set = build_dataset(
            cfg, self.data_root, split, train_records, self.tokenizer, self.categories, train=True
        )
        train_set: TrainingSet = labeled_set
        # data.extra_train (pseudo-labels): appended to the training records, frames from their own split.
        extra = load_extra_train(cfg.data.extra_train, self.categories, {r.id for r in records})
        if len(extra):
            log.info("data.extra_train: %d extra training records", len(extra))
            train_set = ConcatTrainingSets(
                [labeled_set]
                + [
                    build_dataset(cfg, self.data_root, s, recs, self.tokenizer, self.categories, train=True)
                    for s, recs in extra.by_split()
                ]
            )
        # Row i of the loss's soft/teacher targets is training sample i: remember the records in that order.
        self._train_records = [*train_records, *extra.records]
        self._train_splits = [split] * len(train_records) + extra.source_splits
        self._soft_rows: list[np.ndarray | None] = [None] * len(train_records)
        self._soft_rows.extend(extra.soft_targets)
        if cfg.data.switch:
            self._phases = self._switch_phases(len(train_records), extra)
        val_set = (
            build_dataset(
                cfg, self.data_root, split, val_records, self.tokenizer, self.categories, train=False
            )
            if val_records
            else None
        )
        return TaskData(train_set, val_set)

    def _switch_phases(self, num_labeled: int, extra) -> list[Phase]:
        """``data.switch``'s subsets of the training records (see :mod:`mmcls.data.switch`)."""
        stated = extra_confidences(self.cfg.data.extra_train)
        confidences = [1.0] * num_labeled + [
            stated.get(r.id, float(soft.max()) if soft is not None else 1.0)
            for r, soft in zip(extra.records, extra.soft_targets)
        ]
        phases = build_phases(self.cfg.data.switch, self._train_records, self._train_splits, confidences)
        for phase in phases:
            log.info("data.switch: %s", phase.describe(len(self._train_records)))
        return phases

    def train_indices(self, epoch: int) -> np.ndarray | None:
        return phase_of(self._phases, epoch).indices if self._phases else None

    def annotation_problems(self) -> dict[str, int]:
        return {"duplicate_ids": self.duplicate_ids} if self.duplicate_ids else {}

    def build_task(self, model: MultimodalClassifier, device: torch.device) -> TrainingTask:
        # datasets() runs first and records the training records in dataset order.
        targets = build_training_targets(
            self.cfg,
            self.data_root,
            self._train_records,
            self._train_splits,
            self._soft_rows,
            self.categories,
            device,
        )
        return ClassificationTask(
            model,
            self.cfg.train,
            device,
            targets=targets,
            class_counts=self.class_counts,
            lv2_to_lv1=self.categories.lv2_to_lv1_matrix(),
        )

    def evaluate(
        self, task: TrainingTask, loader: DataLoader, device: torch.device, progress: bool
    ) -> tuple[dict[str, float], Counter]:
        local = predict_loader(
            task.eval_model, loader, device, self.cfg.train.precision, progress=progress, desc="evaluate"
        )
        preds = gather_predictions(local)
        scores = compute_scores_from_indices(preds.labels, preds.pred, self.categories)
        # Per-class scores of this validation, by id and name: the run's summary.md lists the weakest classes.
        ids = np.asarray(self.categories.category_ids, dtype=object)
        self.class_scores = per_class_scores(list(ids[preds.labels]), list(ids[preds.pred]), self.categories)
        # Cross-entropy of the gathered probabilities, and how many samples were scored: both show at once
        # whether a multi-process evaluation saw each validation sample exactly once.
        known = np.flatnonzero(preds.labels >= 0)
        true_probs = preds.probs[known, preds.labels[known]]
        scores["loss"] = float(-np.log(np.clip(true_probs, 1e-12, None)).mean()) if len(known) else math.nan
        scores["num_samples"] = len(preds.indices)
        # The logit-adjustment grid on these same probabilities: the model folder saved after this evaluation
        # (best/ when it improved) records the TAU that predict --logit-adjust auto applies (mmcls.engine.tau).
        if self.class_counts is not None and len(known):
            self.tau_scores = grid_scores(preds.probs, preds.labels, self.class_counts, self.categories)
        return scores, preds.frame_errors

    def save_model(self, path: Path, model: nn.Module) -> None:
        counts = self.class_counts.tolist() if self.class_counts is not None else None
        save_model_dir(path, model, self.cfg, self.tokenizer, self.categories, train_counts=counts)
        if self.tau_scores is not None:
            write_tau(path, tau_record(self.tau_scores))


def build_setup(cfg: Config, data_root: str | Path) -> TaskSetup:
    """The setup of an ``mmcls train`` run: classification, or tagging with ``data.task: multilabel``. Other
    kinds of run (``mmcls pretrain``) pass their own :class:`TaskSetup` to the trainer; the core does not know
    them."""
    if cfg.data.task == "multilabel":
        from mmcls.engine.multilabel import MultiLabelSetup  # it subclasses this module's classes

        return MultiLabelSetup(cfg, data_root)
    return ClassificationSetup(cfg, data_root)
