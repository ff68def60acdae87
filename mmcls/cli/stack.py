"""``mmcls stack KFOLD_DIR... --data-root ROOT --split test --out result.csv``: a meta-model over members."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmcls.cli.ensemble import add_predict_options, predict_options
from mmcls.cli.options import non_negative_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "stack",
        help="a meta-model (logistic regression, or a per-class 1xM kernel) fitted on kfold members' "
        "out-of-fold probabilities",
        epilog="example: mmcls stack runs/kfold_a runs/kfold_b runs/kfold_c --data-root data/ --split test "
        "--out result.csv --method conv   (then: --stack result.stack/ applies it again without refitting)",
    )
    p.add_argument("members", nargs="+", type=Path, help="kfold directories (their oof.npy trains the stack)")
    p.add_argument("--data-root", type=Path, required=True, help="data in the official layout")
    p.add_argument("--split", default="test", help="annotation split to predict (default: test)")
    p.add_argument(
        "--out", type=Path, required=True, help="submission CSV to write (+ OUT.stack/ when fitting)"
    )
    p.add_argument(
        "--method",
        default=None,
        choices=["logreg", "conv", "lgbm"],
        help="meta-model: logreg (scikit-learn, default), conv (a 1xM kernel per class, torch) or lgbm "
        "(LightGBM: pip install 'mmcls[lgbm]')",
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the nested folds and the fit (default: 0)"
    )
    p.add_argument(
        "--stack",
        type=Path,
        default=None,
        metavar="RESULT.stack/",
        help="apply this fitted stack without refitting (same members, same order)",
    )
    add_predict_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    from mmcls.engine.distributed import shutdown_distributed, world_info_from_env
    from mmcls.workflows.stack import run_stack

    summary = run_stack(
        args.members,
        args.data_root,
        args.split,
        args.out,
        method=args.method,
        seed=args.seed,
        stack_dir=args.stack,
        options=predict_options(args),
        overwrite=args.overwrite,
    )
    if world_info_from_env().is_main:
        print(json.dumps(summary, indent=2))
        oof = summary.get("oof")
        if oof:
            print(
                f"OOF mean_f1: stack {oof['stack_mean_f1']:.4f} (nested folds) | best member "
                f"{oof['best_member_mean_f1']:.4f} | mean {oof['mean_mean_f1']:.4f} | hill-climb "
                f"{oof['hill_climb_mean_f1']:.4f} (fitted on the same rows)"
            )
        print(f"wrote {args.out}")
    shutdown_distributed()
    return 0
