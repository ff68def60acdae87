"""``mmcls pseudo-label MODEL_OR_RUN... --data-root ROOT --split unlabeled --out labels.json --min-confidence P``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmcls.cli.ensemble import add_predict_options, predict_options
from mmcls.cli.options import probability


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pseudo-label",
        help="label a split with an ensemble's confident predictions (for data.extra_train)",
        epilog="example: mmcls pseudo-label runs/kfold --data-root data/ --split unlabeled --out labels.json "
        "--min-confidence 0.9 --soft",
    )
    p.add_argument(
        "members", nargs="+", type=Path, help="model folders, run, kfold or group-finetune directories"
    )
    p.add_argument("--data-root", type=Path, required=True, help="data in the official layout")
    p.add_argument("--split", default="unlabeled", help="annotation split to label (default: unlabeled)")
    p.add_argument("--out", type=Path, required=True, help="annotation file to write")
    p.add_argument(
        "--min-confidence",
        type=probability,
        required=True,
        help="keep records whose top probability is >= this",
    )
    p.add_argument("--soft", action="store_true", help="also write the probabilities as soft targets")
    add_predict_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    from mmcls.engine.distributed import shutdown_distributed, world_info_from_env
    from mmcls.workflows.pseudo_label import pseudo_label

    summary = pseudo_label(
        args.members,
        args.data_root,
        args.split,
        args.out,
        args.min_confidence,
        soft=args.soft,
        options=predict_options(args),
        overwrite=args.overwrite,
    )
    if world_info_from_env().is_main:
        print(json.dumps(summary, indent=2))
    shutdown_distributed()
    return 0
