"""The one output-path guard: no command writes over, or into, its own inputs.

Every command that writes calls :func:`check_outputs` with all its output paths and all its inputs before it
loads a model or reads a record, so a refused output costs nothing and leaves nothing behind. An output is
refused when it *is* an input (the same path, or the same file through a symlink or hard link), lies *inside*
an input folder (a model folder, an artifact folder, the data root's ``zip_frames/``), or *contains* an input
(``train --out data/`` when ``data/`` is the data root). ``--overwrite`` does not lift this: it lets a command
replace its own earlier outputs, never what it reads.

The helpers below name what a command reads: :func:`model_inputs` (a model folder, a training run's files, an
artifact or kfold/group folder) and :func:`data_inputs` (a split's annotation file and the frame/feature
folders of the data root's layout).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmcls import names
from mmcls.files import OutputError, same_file

# What a training run directory holds besides its best model: a command given the run reads these (config,
# checkpoints to resume, the last weights), so none of them may be an output. Kept as names (not imported from
# mmcls.engine.run_dir) so that the guard stays importable without torch.
_RUN_FILES = (
    names.CONFIG_FILE,
    "metrics.csv",
    "data_errors.json",
    "checkpoints",
    "tensorboard",
    names.BEST_DIR,
    names.LAST_DIR,
)


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute with symlinks of its existing part resolved (a missing tail is kept as given)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and child.is_relative_to(parent)


def input_conflict(output: str | Path, item: str | Path) -> str | None:
    """Why ``output`` may not be written when ``item`` is an input (None if it may)."""
    out, inp = _absolute(output), _absolute(item)
    if out == inp or same_file(output, item):
        return "is"
    if _inside(out, inp):
        return "is inside"
    if _inside(inp, out):
        return "contains"
    return None


def check_outputs(
    outputs: Iterable[tuple[str, str | Path | None]], inputs: Iterable[str | Path | None]
) -> None:
    """Raise :class:`~mmcls.files.OutputError` if an output is, is inside or contains an input.

    ``outputs`` are ``(option, path)`` pairs (the option names the output in the message; a None path is
    skipped), ``inputs`` the paths the command reads (files or folders; None skipped). Nothing is written.
    """
    items = [Path(p) for p in inputs if p is not None]
    for option, path in outputs:
        if path is None:
            continue
        for item in items:
            relation = input_conflict(path, item)
            if relation is not None:
                raise OutputError(
                    f"{option} {path}: {relation} an input of this command ({item}); write the output "
                    "elsewhere (--overwrite never replaces a command's own inputs)"
                )


def model_inputs(path: str | Path) -> list[Path]:
    """What a command given ``path`` (a model folder, run, artifact, kfold or group-finetune folder) reads.

    A model folder or an artifact folder is read whole. A training run directory: its ``best/`` model and the
    run's own files (config, checkpoints, last weights), not the rest of the folder, so
    ``predict runs/t1 --out runs/t1/result.csv`` stays allowed. Any other folder (kfold, group-finetune) is
    read whole; an empty one not at all.
    """
    path = Path(path)
    if not path.is_dir():
        return [path]
    if not any(path.iterdir()):
        return []  # an empty folder holds nothing to protect (loading it reports what is missing)
    if (path / names.WEIGHTS_FILE).is_file() or (path / names.EXPORT_FILE).is_file():
        return [path]
    if (path / names.BEST_DIR).is_dir() or (path / names.CONFIG_FILE).is_file():
        return [path / name for name in _RUN_FILES]
    return [path]


def data_inputs(
    data_root: str | Path | None,
    splits: Iterable[str],
    files: dict[str, str] | None = None,
    *,
    features: bool = True,
) -> list[Path]:
    """The data root's inputs of a command reading ``splits``: their annotation files (``data.annotations``
    resolved by :func:`mmcls.data.annotations.annotation_path`), ``zip_frames/`` and, unless ``features`` is
    False (``extract-features`` writes there), ``zip_feats/``."""
    if data_root is None:
        return []
    from mmcls.data.annotations import annotation_path

    root = Path(data_root)
    found = [annotation_path(root, split, files) for split in splits]
    found.append(root / names.FRAMES_DIR)
    if features:
        found.append(root / names.FEATURES_DIR)
    return found


def config_inputs(cfg: Any, data_root: str | Path | None) -> list[Path]:
    """What a training run of ``cfg`` reads: its splits' annotation files and ``data.extra_train``, the data
    root's frame and feature folders, the taxonomy file, ``model.init_from`` and ``train.distill_from``."""
    data = cfg.data
    found = data_inputs(data_root, [data.train_split], data.annotations)
    found += [Path(extra) for extra in data.extra_train]
    if data.categories:
        found.append(Path(data.categories))
    for source in (getattr(cfg.model, "init_from", None), getattr(cfg.train, "distill_from", None)):
        if source:
            found += model_inputs(source)
    return found
