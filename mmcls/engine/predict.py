"""``mmcls predict``: a model folder + a data split -> the challenge's submission CSV.

Under ``torchrun`` every rank predicts its share of the split; the predictions are gathered so that each
rank returns the whole split, and only rank 0 writes the file (see ``mmcls.cli.predict``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mmcls.data.annotations import annotation_path, load_records
from mmcls.data.builders import build_dataset, build_eval_loader
from mmcls.engine.distributed import init_distributed, resolve_device, world_info_from_env
from mmcls.engine.inference import Predictions, gather_predictions, predict_loader
from mmcls.models import load_model_dir


def predict_split(
    model_dir: str | Path,
    data_root: str | Path,
    split: str = "test",
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = True,
) -> tuple[list[str], Predictions, list[str]]:
    """Predict every record of ``split``; returns (ids in annotation order, predictions, category ids).

    ``batch_size`` is per process.
    """
    torch_device = resolve_device(device, world_info_from_env())
    dist_info = init_distributed(torch_device)
    loaded = load_model_dir(model_dir, device=torch_device)
    cfg = loaded.config
    records = load_records(annotation_path(data_root, split), categories=loaded.categories)
    dataset = build_dataset(
        cfg, data_root, split, records, loaded.tokenizer, loaded.categories, train=False, on_error="text_only"
    )
    loader = build_eval_loader(
        dataset,
        batch_size,
        cfg.data.num_workers if num_workers is None else num_workers,
        loaded.tokenizer.pad_token_id or 0,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
    )
    preds = predict_loader(
        loaded.model, loader, torch_device, precision, progress=progress and dist_info.is_main
    )
    preds = gather_predictions(preds)  # all ranks' shares, each record once (a no-op in one process)
    order = np.argsort(preds.indices)
    if not np.array_equal(preds.indices[order], np.arange(len(records))):
        raise RuntimeError(f"prediction covered {len(preds.indices)} of {len(records)} records of {split!r}")
    category_ids = [loaded.categories.category_id(int(i)) for i in preds.pred[order]]
    return [r.id for r in records], preds, category_ids


def write_submission(path: str | Path, ids: list[str], category_ids: list[str]) -> None:
    """``id,category_id`` lines, no header, in annotation order (the challenge's submission format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(zip(ids, category_ids))
