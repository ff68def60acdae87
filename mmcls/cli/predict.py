"""``mmcls predict MODEL --data-root ROOT --split S --out result.csv``: the submission CSV of a split."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict",
        help="write id,category_id predictions for a split",
        epilog="example: mmcls predict runs/tiny --data-root data/ --split test --out runs/tiny/result.csv",
    )
    p.add_argument(
        "model_dir",
        type=Path,
        help="a model folder, a run directory (its best model), or an artifact folder from `mmcls export`",
    )
    p.add_argument("--data-root", type=Path, required=True, help="data in the official layout")
    p.add_argument("--split", default="test", help="annotation split to predict (default: test)")
    p.add_argument("--out", type=Path, required=True, help="submission CSV to write")
    p.add_argument("--batch-size", type=int, default=64, help="videos per batch and process")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the model's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16", "fp16"],
        help="inference precision (default: fp32, or the artifact's own)",
    )
    p.add_argument(
        "--backend",
        default=None,
        choices=["torch", "onnx", "aoti", "tensorrt"],
        help="runtime (default: torch for a model folder, the artifact's format for an artifact folder)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    if args.backend not in (None, "torch") or (args.model_dir / "export.json").is_file():
        return _run_deployed(args)
    from mmcls.engine.distributed import shutdown_distributed, world_info_from_env
    from mmcls.engine.predict import predict_split, write_submission

    ids, _, category_ids = predict_split(
        args.model_dir,
        args.data_root,
        args.split,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        precision=args.precision or "fp32",
    )
    if world_info_from_env().is_main:  # under torchrun every rank holds all predictions; one file
        write_submission(args.out, ids, category_ids)
        print(f"wrote {len(ids)} predictions to {args.out}")
    shutdown_distributed()
    return 0


def _run_deployed(args: argparse.Namespace) -> int:
    """An exported artifact (ONNX, AOTI, TensorRT) through ``mmcls.deploy``'s Predictor; one process."""
    from mmcls.deploy.predictor import Predictor
    from mmcls.engine.predict import write_submission

    predictor = Predictor.from_path(
        args.model_dir, args.backend, device=args.device, precision=args.precision
    )
    ids, preds, category_ids = predictor.predict_split(
        args.data_root, args.split, batch_size=args.batch_size, num_workers=args.num_workers
    )
    write_submission(args.out, ids, category_ids)
    print(f"wrote {len(ids)} predictions to {args.out} ({predictor.backend_name}, {predictor.precision})")
    return 0
