"""``mmcls ensemble MODEL_OR_RUN... --data-root ROOT --split test --out result.csv``: blended predictions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmcls.cli.options import add_device_option, add_precision_option, non_negative_int, positive_int


def add_predict_options(p: argparse.ArgumentParser) -> None:
    """The options of running members (shared with ``mmcls pseudo-label``)."""
    p.add_argument("--batch-size", type=positive_int, default=64, help="videos per batch and process")
    p.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=None,
        help="DataLoader workers (default: each model's)",
    )
    add_device_option(p, default="auto", help="where to run the members")
    add_precision_option(p, default="fp32", help="inference precision")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def predict_options(args: argparse.Namespace):
    from mmcls.workflows.members import PredictOptions

    return PredictOptions(args.batch_size, args.num_workers, args.device, args.precision, progress=True)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "ensemble",
        help="blend several models' probabilities (mean, or weights hill-climbed on out-of-fold predictions)",
        epilog="example: mmcls ensemble runs/kfold_a runs/kfold_b --data-root data/ --split test "
        "--out result.csv --weights hill-climb",
    )
    p.add_argument(
        "members",
        nargs="+",
        type=Path,
        help="model folders, run directories, kfold or group-finetune directories",
    )
    p.add_argument("--data-root", type=Path, required=True, help="data in the official layout")
    p.add_argument("--split", default="test", help="annotation split to predict (default: test)")
    p.add_argument("--out", type=Path, required=True, help="submission CSV to write (+ OUT.ensemble.json)")
    p.add_argument(
        "--weights", default="mean", choices=["mean", "hill-climb"], help="how members are weighted"
    )
    p.add_argument(
        "--oof",
        nargs="+",
        default=None,
        metavar="KFOLD_DIR",
        help="out-of-fold predictions, one per member (a kfold directory or its oof.npy); "
        "default: the members' own when all are kfold directories",
    )
    p.add_argument(
        "--tune-bias",
        action="store_true",
        help="per-class biases on the blend's log-probabilities, tuned on the out-of-fold predictions (coordinate "
        "search, shrunk toward 0) and applied only if nested folds, scoring every OOF row with biases tuned "
        "without it, show a gain on every fold; OUT.ensemble.json reports that gain (default: off)",
    )
    p.add_argument(
        "--save-probs", type=Path, default=None, metavar="P.npy", help="also save the blend (+ P.json)"
    )
    add_predict_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    from mmcls.engine.distributed import shutdown_distributed, world_info_from_env
    from mmcls.workflows.ensemble import run_ensemble

    summary = run_ensemble(
        args.members,
        args.data_root,
        args.split,
        args.out,
        method=args.weights,
        oof_sources=args.oof,
        save_probs_to=args.save_probs,
        options=predict_options(args),
        overwrite=args.overwrite,
        tune_bias=args.tune_bias,
    )
    if world_info_from_env().is_main:
        print(json.dumps(summary, indent=2))
        print(f"wrote {args.out}")
    shutdown_distributed()
    return 0
