"""``mmcls kfold``: K training runs on stratified folds and the out-of-fold probabilities of every labeled record.

Layout of ``DIR``::

    kfold.json        the plan: num_folds, fold_seed, the config (a resume must match it)
    fold{k}/          an ordinary run directory (``mmcls train`` with data.num_folds=K, data.fold=k)
    fold{k}/oof.npy   fold k's model (best/) on fold k's validation records (+ oof.json: their ids)
    oof.npy           every labeled record's out-of-fold probabilities, rows in annotation order
    oof.json          their ids, classes, true labels, folds, the OOF scores and the per-fold scores

A fold is finished when its ``oof.npy`` exists; ``--resume`` skips finished folds and continues the
unfinished one from its newest checkpoint. Under ``torchrun`` every fold is trained and predicted by all ranks.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmcls.config import Config
from mmcls.data.annotations import annotation_path, load_records
from mmcls.data.categories import load_categories
from mmcls.data.folds import record_folds
from mmcls.data.prob_files import load_probs, save_probs, write_json
from mmcls.engine import checkpoint as ckpt
from mmcls.engine.distributed import (
    barrier,
    init_distributed,
    is_initialized,
    resolve_device,
    shutdown_distributed,
    world_info_from_env,
)
from mmcls.errors import MmclsError
from mmcls.files import RUN_MARKER
from mmcls.metrics import compute_scores_from_indices
from mmcls.names import CONFIG_FILE
from mmcls.output_guard import check_outputs, config_inputs
from mmcls.workflows.members import KFOLD_FILE, OOF_FILE, PredictOptions, fold_dir, predict_model

log = logging.getLogger("mmcls.kfold")


class KFoldError(MmclsError, ValueError):
    """The kfold output directory holds another run, or a resume does not match the saved plan."""


@dataclass
class KFoldResult:
    out_dir: Path
    scores: dict[str, float] | None  # OOF scores; None when interrupted
    fold_scores: list[float | None]
    interrupted: bool = False


def kfold_config(cfg: Config, num_folds: int, seed: int | None) -> Config:
    """``cfg`` with the fold settings (fold 0); ``seed`` sets both the fold split and training seeds."""
    cfg = cfg.copy()
    cfg.data.num_folds, cfg.data.fold = num_folds, 0
    if seed is not None:
        cfg.data.fold_seed = seed
        cfg.train.seed = seed
    return Config.from_dict(cfg.to_dict())  # validated


def run_kfold(
    cfg: Config,
    data_root: str | Path,
    out_dir: str | Path,
    num_folds: int,
    seed: int | None = None,
    resume: bool = False,
) -> KFoldResult:
    """Train every fold of ``cfg`` not yet finished in ``out_dir``, then write the out-of-fold probabilities."""
    from mmcls.engine.trainer import train  # heavy: torch, open_clip

    data_root, out_dir = Path(data_root), Path(out_dir)
    cfg = kfold_config(cfg, num_folds, seed)
    check_outputs([("--out", out_dir)], config_inputs(cfg, data_root))
    owns_process_group = not is_initialized()
    info = init_distributed(resolve_device(cfg.train.device, world_info_from_env()))
    categories = load_categories(cfg.data.categories)
    records = load_records(
        annotation_path(data_root, cfg.data.train_split, cfg.data.annotations),
        require_label=True,
        categories=categories,
    )
    if cfg.data.limit_train:
        records = records[: cfg.data.limit_train]
    if num_folds > len(records):
        raise KFoldError(
            f"--folds {num_folds}: more folds than the {len(records)} labeled records of "
            f"{cfg.data.train_split!r}; use at most {len(records)} folds"
        )
    folds = record_folds(records, cfg.data, categories)
    fresh = _check_plan(out_dir, cfg, resume)
    barrier()  # every rank has looked before rank 0 writes the plan
    if fresh and info.is_main:
        write_json(out_dir / KFOLD_FILE, _plan(cfg))
    barrier()

    options = PredictOptions(
        batch_size=max(cfg.train.eval_batch_size // info.world_size, 1),
        num_workers=cfg.data.num_workers,
        device=cfg.train.device,
        precision=cfg.train.precision,
    )
    fold_scores: list[float | None] = []
    for k in range(num_folds):
        fold_path = fold_dir(out_dir, k)
        if (fold_path / OOF_FILE).is_file():
            log.info("fold %d/%d: finished earlier, skipped", k + 1, num_folds)
        else:
            fold_cfg = cfg.copy()
            fold_cfg.data.fold = k
            log.info("fold %d/%d: training in %s", k + 1, num_folds, fold_path)
            continuing = resume and ckpt.latest_checkpoint(fold_path) is not None
            result = train(fold_cfg, data_root, fold_path, resume=continuing)
            if result.interrupted:
                _finish(owns_process_group)
                return KFoldResult(out_dir, None, fold_scores, interrupted=True)
            val_ids = [r.id for r, f in zip(records, folds) if f == k]
            ids, probs = predict_model(fold_path, data_root, cfg.data.train_split, options, val_ids)
            if info.is_main:
                save_probs(
                    fold_path / OOF_FILE, probs, ids, categories, fold=k, best_mean_f1=result.best_score
                )
            barrier()
        fold_scores.append(load_probs(fold_path / OOF_FILE)[2].get("best_mean_f1"))

    scores = None
    if info.is_main:
        scores = _write_oof(out_dir, records, folds, categories, cfg, fold_scores)
    barrier()
    _finish(owns_process_group)
    return KFoldResult(out_dir, scores, fold_scores)


def _finish(owns_process_group: bool) -> None:
    if owns_process_group:
        shutdown_distributed()


def _plan(cfg: Config) -> dict[str, Any]:
    values = cfg.to_dict()
    values["data"].pop("fold")  # the one setting that differs between folds
    return {"num_folds": cfg.data.num_folds, "fold_seed": cfg.data.fold_seed, "config": values}


def _check_plan(out_dir: Path, cfg: Config, resume: bool) -> bool:
    """A new kfold needs a fresh directory; a resumed one must have the same folds and config. True: new."""
    plan_path = out_dir / KFOLD_FILE
    plan = _plan(cfg)
    # A fold folder holding only its config (and marker) is a fold that failed before training.
    started = any(
        entry.name not in (CONFIG_FILE, RUN_MARKER)
        for fold in out_dir.glob("fold[0-9]*")
        if fold.is_dir()
        for entry in fold.iterdir()
    )
    if plan_path.is_file() and not started and not resume:
        # Only the plan: an earlier command stopped before its first fold; it is no run to protect.
        others = [p for p in out_dir.iterdir() if p.name != KFOLD_FILE and not p.name.startswith("fold")]
        if not others:
            return True
    if plan_path.is_file():
        if not resume:
            raise KFoldError(
                f"{out_dir} already holds a kfold run: pass --resume to continue it, or a new --out"
            )
        saved = json.loads(plan_path.read_text(encoding="utf-8"))
        differences = _differences(saved, plan)
        if differences:
            raise KFoldError(
                f"{plan_path}: --resume with other settings than the saved run: {', '.join(differences[:5])}"
            )
        return False
    if out_dir.exists() and any(out_dir.iterdir()):
        raise KFoldError(f"{out_dir} is not empty and holds no kfold run ({KFOLD_FILE}): choose a new --out")
    return True


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            out += _differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == current else [f"{prefix.rstrip('.')}: {saved!r} -> {current!r}"]


def _write_oof(out_dir, records, folds, categories, cfg, fold_scores) -> dict[str, float]:
    """Assemble the folds' ``oof.npy`` into ``DIR/oof.npy`` (annotation order) and score it."""
    ids = [r.id for r in records]
    probs = np.zeros((len(records), categories.num_lv2), dtype=np.float32)
    row_of = {video_id: row for row, video_id in enumerate(ids)}
    filled = np.zeros(len(records), dtype=bool)
    for k in range(cfg.data.num_folds):
        fold_ids, fold_probs, _ = load_probs(fold_dir(out_dir, k) / OOF_FILE)
        rows = [row_of[video_id] for video_id in fold_ids]
        if filled[rows].any() or (folds[rows] != k).any():
            raise KFoldError(f"{out_dir}/fold{k}/oof.npy: its records are not fold {k}'s (folds changed?)")
        probs[rows], filled[rows] = fold_probs, True
    if not filled.all():
        raise KFoldError(f"{out_dir}: {int((~filled).sum())} labeled records have no out-of-fold prediction")
    labels = np.array([categories.lv2_index(r.category_id) for r in records])
    scores = compute_scores_from_indices(labels, probs.argmax(axis=1), categories)
    save_probs(
        out_dir / OOF_FILE,
        probs,
        ids,
        categories,
        split=cfg.data.train_split,
        num_folds=cfg.data.num_folds,
        fold_seed=cfg.data.fold_seed,
        scores=scores,
        fold_scores=fold_scores,
        labels=[r.category_id for r in records],
        folds=folds.tolist(),
    )
    log.info("out-of-fold scores: %s", json.dumps(scores))
    return scores
