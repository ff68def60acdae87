"""Ensemble members: anything that turns a data split into level-2 probabilities.

A member is named on the command line by a path; :func:`load_member` asks each entry of :data:`MEMBER_TYPES`
in turn whether it recognises that path. Three kinds exist in the core:

- a model folder or a training run directory (its ``best/``): torch, through ``predict_split``;
- a ``mmcls kfold`` directory: the mean of its fold models, with its out-of-fold probabilities;
- a ``mmcls group-finetune`` directory: its base model, with each level-1 group's fine-tuned model replacing
  the base's distribution inside the group it routes a record to.

An exported artifact (ONNX, AOTInductor, TensorRT; ``mmcls export``) is the last entry,
``mmcls.deploy.ensemble_member.ExportedArtifact``, named as a string: it is imported only when a path is none of
the kinds above, so the workflows do not import ``mmcls.deploy`` otherwise. Another backend slots in the same
way: a class with ``accepts(path)``, ``predict(...)`` and ``oof_path()``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from mmcls.data.categories import CategoryMap, Taxonomy
from mmcls.errors import MmclsError
from mmcls.names import EXPORT_FILE

KFOLD_FILE = "kfold.json"
GROUPS_FILE = "group_finetune.json"
OOF_FILE = "oof.npy"  # out-of-fold probabilities: a kfold directory's, each fold's, a stack's


def fold_dir(kfold_dir: Path, k: int) -> Path:
    """Where ``mmcls kfold`` trains fold ``k`` (the kfold workflow, its members and pseudo-labels read it)."""
    return kfold_dir / f"fold{k}"


class MemberError(MmclsError, ValueError):
    """A path given as an ensemble member is not a model, run, kfold or group-finetune directory."""


@dataclass
class PredictOptions:
    """How members run (per process): batch size, DataLoader workers, device, precision, progress bars."""

    batch_size: int = 64
    num_workers: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    progress: bool = False


class Member(Protocol):
    name: str

    def predict(
        self, data_root: str | Path, split: str, options: PredictOptions, ids: Collection[str] | None = None
    ) -> tuple[list[str], np.ndarray]:
        """``(ids in annotation order, [N, num_classes] probabilities)`` of ``split`` (or of ``ids`` only)."""
        ...

    def oof_path(self) -> Path | None:
        """Its out-of-fold probabilities file, if it has one."""
        ...


class MemberKind(Protocol):
    """An entry of :data:`MEMBER_TYPES` once imported: a class that recognises its folders and loads one."""

    def accepts(self, path: Path) -> bool: ...

    def __call__(self, path: Path) -> Member: ...


def predict_model(
    model_dir: str | Path,
    data_root: str | Path,
    split: str,
    options: PredictOptions,
    ids: Collection[str] | None = None,
) -> tuple[list[str], np.ndarray]:
    """One torch model's probabilities, rows in annotation order (``predict_split`` orders them by index)."""
    from mmcls.inference.predict import predict_split

    split_ids, preds, _ = predict_split(
        model_dir,
        data_root,
        split,
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        device=options.device,
        precision=options.precision,
        progress=options.progress,
        ids=ids,
        # Members give plain probabilities: blending weights are fitted on plain out-of-fold probabilities, and
        # a model's saved TAU was chosen on the validation rows that kfold's OOF view predicts.
        logit_adjust=0.0,
    )
    return split_ids, preds.probs[np.argsort(preds.indices)]


class FolderMember:
    """What every member kind shares: the folder it reads and its name in summaries (the path as given).

    A kind adds ``accepts(path)`` (a staticmethod: is this folder of my kind?), ``predict`` and ``oof_path``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    def oof_path(self) -> Path | None:
        return None

    def model_folder(self) -> Path:
        """A folder whose ``config.yaml`` (directly, or in its ``best/``) describes the member's models."""
        return self.path


class TorchModel(FolderMember):
    """A model folder, or a training run directory (its ``best/`` model)."""

    @staticmethod
    def accepts(path: Path) -> bool:
        from mmcls.models.model_dir import find_model_dir

        return find_model_dir(path) is not None

    def predict(self, data_root, split, options, ids=None):
        return predict_model(self.path, data_root, split, options, ids)


class KFoldMean(FolderMember):
    """The fold models of a ``mmcls kfold`` directory, averaged; its ``oof.npy`` is their out-of-fold view."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        plan = json.loads((path / KFOLD_FILE).read_text(encoding="utf-8"))
        self.fold_dirs = [fold_dir(path, k) for k in range(plan["num_folds"])]
        missing = [str(d) for d in self.fold_dirs if not TorchModel.accepts(d)]
        if missing:
            raise MemberError(f"{path}: unfinished kfold run, no model in {missing} (rerun with --resume)")

    @staticmethod
    def accepts(path: Path) -> bool:
        return (path / KFOLD_FILE).is_file()

    def predict(self, data_root, split, options, ids=None):
        total, split_ids = None, None
        for fold_dir in self.fold_dirs:
            fold_ids, probs = predict_model(fold_dir, data_root, split, options, ids)
            split_ids = split_ids or fold_ids
            total = probs if total is None else total + probs
        return split_ids, total / len(self.fold_dirs)

    def oof_path(self) -> Path | None:
        return self.path / OOF_FILE

    def model_folder(self) -> Path:
        return self.fold_dirs[0]


class GroupFinetuned(FolderMember):
    """A ``mmcls group-finetune`` directory: the base model routes each record to a level-1 group (its
    level-1 argmax); where that group has a fine-tuned model, the group's total probability stays the base
    model's and its split among the group's classes comes from the group model."""

    def __init__(self, path: Path, categories: CategoryMap | None = None) -> None:
        super().__init__(path)
        info = json.loads((path / GROUPS_FILE).read_text(encoding="utf-8"))
        self.base = Path(info["base"])
        self.group_dirs = {int(g): path / d for g, d in info["groups"].items()}
        # The groups are level-1 indices of the base model's taxonomy.
        self.categories = categories or _folder_categories(self.base)

    @staticmethod
    def accepts(path: Path) -> bool:
        return (path / GROUPS_FILE).is_file()

    def model_folder(self) -> Path:
        return self.base  # the group models are fine-tuned copies of it (same task and classes)

    def predict(self, data_root, split, options, ids=None):
        split_ids, base = predict_model(self.base, data_root, split, options, ids)
        return split_ids, self.merge(data_root, split, options, split_ids, base)

    def merge(self, data_root, split, options, split_ids: Sequence[str], base: np.ndarray) -> np.ndarray:
        """``base`` probabilities with each routed record's in-group distribution from its group's model."""
        lv1_of_lv2 = np.asarray(self.categories.lv1_of_lv2)
        group_mass = base @ self.categories.lv2_to_lv1_matrix()
        route = group_mass.argmax(axis=1)
        merged = base.copy()
        for group, group_dir in self.group_dirs.items():
            rows = np.flatnonzero(route == group)
            if len(rows) == 0:
                continue
            routed_ids, probs = predict_model(
                group_dir, data_root, split, options, [split_ids[i] for i in rows]
            )
            assert routed_ids == [split_ids[i] for i in rows]  # both in annotation order
            in_group = lv1_of_lv2 == group
            within = probs[:, in_group] / probs[:, in_group].sum(axis=1, keepdims=True)
            merged[np.ix_(rows, np.flatnonzero(in_group))] = group_mass[rows, group, None] * within
        return merged


# Tried in order; the first whose ``accepts(path)`` is true loads the member. A "module:Class" string is
# imported only when reached: the exported-artifact member lives in mmcls.deploy, which the core never imports.
MEMBER_TYPES: list[MemberKind | str] = [
    KFoldMean,
    GroupFinetuned,
    TorchModel,
    "mmcls.deploy.ensemble_member:ExportedArtifact",
]


def member_categories(member: Member) -> CategoryMap:
    """The taxonomy a member predicts over: the ``categories.json`` of its (first) model folder."""
    held = getattr(member, "categories", None)  # a group-finetune member holds its base model's
    if isinstance(held, Taxonomy):
        return held
    folder = getattr(member, "fold_dirs", [None])[0] or getattr(member, "path", None)
    if folder is None:
        raise MemberError(f"{member.name}: no model folder to read its categories.json from")
    return _folder_categories(Path(folder))


def same_categories(members: Sequence[Member]) -> CategoryMap:
    """The members' common taxonomy; members trained over different class lists cannot be blended."""
    for member in members:  # blending and pseudo-labels pick one class per record
        _refuse_tagging_model(member)
    first = member_categories(members[0])
    for member in members[1:]:
        if member_categories(member).category_ids != first.category_ids:
            raise MemberError(
                f"{member.name}: predicts other classes than {members[0].name} (another taxonomy)"
            )
    return first


def _refuse_tagging_model(member: Member) -> None:
    """A multilabel model (``data.task: multilabel``) cannot be a member: ensembles and pseudo-labels are
    single-label (one class per record, scored by mean_f1)."""
    from mmcls.config import Config
    from mmcls.models.model_dir import CONFIG_FILE, resolve_model_dir

    if not isinstance(member, FolderMember):
        return
    folder = member.model_folder()
    config = (
        folder / CONFIG_FILE if (folder / CONFIG_FILE).is_file() else resolve_model_dir(folder) / CONFIG_FILE
    )
    if Config.from_yaml(config).data.task == "multilabel":
        raise MemberError(
            f"{member.name}: a multilabel (tagging) model; ensemble and pseudo-label are single-label only"
        )


def _folder_categories(path: Path) -> CategoryMap:
    """``categories.json`` of a model folder, a run directory (``best/``) or an exported artifact folder."""
    from mmcls.models.model_dir import CATEGORIES_FILE, load_model_categories

    if TorchModel.accepts(path):
        return load_model_categories(path)
    source = path / CATEGORIES_FILE  # an exported artifact keeps the model folder's copy
    return Taxonomy.from_dict(json.loads(source.read_text(encoding="utf-8")), str(source))


def load_member(path: str | Path) -> Member:
    path = Path(path)
    if not path.exists():
        raise MemberError(f"{path}: no such model folder, run directory or kfold directory")
    for entry in MEMBER_TYPES:
        kind = _resolve(entry)
        if kind.accepts(path):
            return kind(path)
    raise MemberError(
        f"{path}: not a model folder, a run directory (best/), a kfold directory ({KFOLD_FILE}), "
        f"a group-finetune directory ({GROUPS_FILE}) or an exported artifact ({EXPORT_FILE})"
    )


def _resolve(entry: MemberKind | str) -> MemberKind:
    if not isinstance(entry, str):  # a class
        return entry
    module_name, _, class_name = entry.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
