"""``mmcls group-finetune RUN --data-root ROOT --out DIR``: per-level-1-group fine-tunes merged by routing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmcls.cli.options import add_set_option, non_negative_int, positive_float, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "group-finetune",
        help="fine-tune a finished run per level-1 group; DIR is then an ensemble member",
        epilog="example: mmcls group-finetune runs/tiny --data-root data/ --out runs/tiny_groups --epochs 2",
    )
    p.add_argument("run_dir", type=Path, help="a finished training run directory")
    p.add_argument("--data-root", type=Path, required=True, help="data in the official layout")
    p.add_argument("--out", type=Path, required=True, help="directory for the group runs")
    p.add_argument("--epochs", type=positive_int, default=2, help="fine-tuning epochs per group (default 2)")
    p.add_argument("--lr-scale", type=positive_float, default=0.5, help="the run's learning rates times this")
    p.add_argument(
        "--min-records", type=positive_int, default=None, help="skip smaller groups (default: batch size)"
    )
    p.add_argument(
        "--groups", type=non_negative_int, nargs="+", default=None, help="only these level-1 groups"
    )
    add_set_option(p)
    return p


def run(args: argparse.Namespace) -> int:
    from mmcls.workflows.group_finetune import group_finetune

    summary = group_finetune(
        args.run_dir,
        args.data_root,
        args.out,
        epochs=args.epochs,
        lr_scale=args.lr_scale,
        min_records=args.min_records,
        groups=args.groups,
        overrides=args.overrides,
    )
    print(json.dumps(summary, indent=2))
    return 0
