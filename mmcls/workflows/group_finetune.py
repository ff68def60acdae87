"""``mmcls group-finetune RUN``: a short fine-tune of a finished run per level-1 group, merged by routing.

For each level-1 group with enough training records, an ordinary run ``DIR/group{g:02d}/`` starts from RUN's
model (``model.init_from``) and trains a few epochs on that group's records only, with the loss restricted
to the group's level-2 classes (``data.lv1_groups``). The validation split is RUN's own (the group filter
applies after the split), so nothing RUN validated on is trained on. ``DIR/group_finetune.json`` makes DIR an
ensemble member: RUN routes each record to its level-1 argmax and that group's model splits the group's
probability among its classes (``mmcls.workflows.members.GroupFinetuned``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmcls.config import Config, apply_overrides
from mmcls.data.annotations import annotation_path, load_records
from mmcls.data.categories import official_categories
from mmcls.data.folds import split_labeled
from mmcls.data.prob_files import write_json
from mmcls.engine import checkpoint as ckpt
from mmcls.errors import MmclsError
from mmcls.files import atomic_write_text
from mmcls.metrics import compute_scores_from_indices
from mmcls.models import resolve_model_dir
from mmcls.models.model_dir import load_model_categories
from mmcls.names import BEST_DIR, CONFIG_FILE
from mmcls.output_guard import check_outputs, data_inputs, model_inputs
from mmcls.workflows.members import GROUPS_FILE, GroupFinetuned, PredictOptions, predict_model

log = logging.getLogger("mmcls.group_finetune")
TAXONOMY_FILE = "categories.csv"  # RUN's taxonomy, for the group runs' data.categories


class GroupFinetuneError(MmclsError, ValueError):
    """RUN is not a finished run directory, or the output directory holds something else."""


def group_finetune(
    run_dir: str | Path,
    data_root: str | Path,
    out_dir: str | Path,
    *,
    epochs: int = 2,
    lr_scale: float = 0.5,
    min_records: int | None = None,
    groups: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Fine-tune RUN per level-1 group into ``out_dir``; returns (and saves) RUN's and the merged model's
    validation scores. Groups already fine-tuned in ``out_dir`` (a ``last/`` model) are not trained again."""
    from mmcls.engine.trainer import train

    run_dir, data_root, out_dir = Path(run_dir).resolve(), Path(data_root), Path(out_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / BEST_DIR).is_dir():
        raise GroupFinetuneError(
            f"{run_dir}: not a finished training run directory ({CONFIG_FILE} and {BEST_DIR}/)"
        )
    check_outputs([("--out", out_dir)], [*model_inputs(run_dir), *data_inputs(data_root, [])])
    started = (
        (out_dir / GROUPS_FILE).is_file()
        or (out_dir / TAXONOMY_FILE).is_file()
        or any(out_dir.glob("group[0-9][0-9]"))
    )
    if out_dir.exists() and any(out_dir.iterdir()) and not started:
        raise GroupFinetuneError(f"{out_dir} is not empty and holds no group fine-tune: choose a new --out")
    # The best/ model's config rebuilds the architecture without downloads; train.* and data.* are RUN's.
    base = Config.from_yaml(resolve_model_dir(run_dir) / CONFIG_FILE)
    cfg = Config.from_dict(apply_overrides(base.to_dict(), list(overrides)))
    # The groups are the parents of RUN's taxonomy (its model folder's categories.json).
    categories = load_model_categories(run_dir)
    unknown = sorted({g for g in groups or () if not 0 <= g < categories.num_lv1})
    if unknown:
        raise GroupFinetuneError(
            f"--groups {' '.join(map(str, unknown))}: no such level-1 group in {run_dir}'s taxonomy "
            f"(groups 0..{categories.num_lv1 - 1})"
        )
    if categories != official_categories():
        # The group runs train over the same taxonomy: a copy in out_dir, as config.yaml cannot carry it.
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / TAXONOMY_FILE, categories.to_csv())
        cfg.data.categories = str((out_dir / TAXONOMY_FILE).resolve())
    records = load_records(
        annotation_path(data_root, cfg.data.train_split, cfg.data.annotations),
        require_label=True,
        categories=categories,
    )
    if cfg.data.limit_train:
        records = records[: cfg.data.limit_train]
    train_records, val_records = split_labeled(records, cfg.data, cfg.train.seed, categories)
    # Loaded with require_label=True: every record has its category_id.
    counts = Counter(categories.lv1_index(r.category_id) for r in train_records)  # type: ignore[arg-type]
    needed = min_records or cfg.train.batch_size
    wanted = sorted(counts) if groups is None else list(groups)
    done: dict[int, str] = {}
    skipped: dict[int, str] = {}
    for group in wanted:
        if counts.get(group, 0) < needed:
            skipped[group] = f"{counts.get(group, 0)} training records (< {needed})"
            continue
        group_dir = out_dir / f"group{group:02d}"
        if not (group_dir / "last").is_dir():
            group_cfg = cfg.copy()
            group_cfg.data.lv1_groups = [group]
            group_cfg.model.init_from = str(run_dir)
            group_cfg.train.epochs = epochs
            for name in ("lr", "frame_encoder_lr", "head_lr"):
                if getattr(group_cfg.train, name) is not None:
                    setattr(group_cfg.train, name, getattr(group_cfg.train, name) * lr_scale)
            log.info("group %02d: %d training records -> %s", group, counts[group], group_dir)
            train(group_cfg, data_root, group_dir, resume=ckpt.latest_checkpoint(group_dir) is not None)
        done[group] = group_dir.name
    write_json(out_dir / GROUPS_FILE, {"base": str(run_dir), "groups": done, "skipped": skipped})

    summary: dict[str, Any] = {"base": str(run_dir), "groups": sorted(done), "skipped": skipped}
    if val_records:
        summary.update(_validate(out_dir, data_root, cfg, val_records, categories))
    write_json(out_dir / GROUPS_FILE, {**summary, "groups": done})
    return summary


def _validate(out_dir, data_root, cfg, val_records, categories) -> dict[str, Any]:
    """RUN's and the merged model's scores on RUN's validation records."""
    options = PredictOptions(
        cfg.train.eval_batch_size, cfg.data.num_workers, cfg.train.device, cfg.train.precision
    )
    member = GroupFinetuned(out_dir, categories)
    ids, base = predict_model(
        member.base, data_root, cfg.data.train_split, options, [r.id for r in val_records]
    )
    merged = member.merge(data_root, cfg.data.train_split, options, ids, base)
    label_of = {r.id: categories.lv2_index(r.category_id) for r in val_records}
    labels = np.array([label_of[i] for i in ids])
    return {
        "val_records": len(ids),
        "val_base": compute_scores_from_indices(labels, base.argmax(axis=1), categories),
        "val_merged": compute_scores_from_indices(labels, merged.argmax(axis=1), categories),
    }
