"""``mmcls kfold CONFIG --data-root ROOT --out DIR --folds K``: K runs on stratified folds + out-of-fold probs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmcls.cli.options import add_set_option, int_range, non_negative_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "kfold",
        help="train K folds (stratified by level-2 class) and score their out-of-fold predictions",
        epilog="example: mmcls kfold tiny --data-root data/ --out runs/kfold --folds 5",
    )
    p.add_argument("config", help="YAML file, or a packaged preset name (tiny, base, feats)")
    p.add_argument("--data-root", type=Path, required=True, help="data in the official layout")
    p.add_argument(
        "--out", type=Path, required=True, help="kfold directory (fold{k}/ run dirs, oof.npy/json)"
    )
    p.add_argument("--folds", type=int_range(2), default=5, help="number of folds (default 5)")
    p.add_argument(
        "--seed", type=non_negative_int, default=None, help="seed of the fold split and of training"
    )
    add_set_option(p)
    p.add_argument("--resume", action="store_true", help="skip finished folds, continue the unfinished one")
    return p


def run(args: argparse.Namespace) -> int:
    from mmcls.config import Config
    from mmcls.engine.distributed import world_info_from_env
    from mmcls.workflows.kfold import run_kfold

    cfg = Config.from_yaml(args.config, args.overrides)
    result = run_kfold(cfg, args.data_root, args.out, args.folds, seed=args.seed, resume=args.resume)
    if result.interrupted:
        print(f"stopped; continue with: mmcls kfold ... --out {args.out} --resume")
    elif world_info_from_env().is_main:
        summary = {"out": str(args.out), "fold_best_mean_f1": result.fold_scores, "oof": result.scores}
        print(json.dumps(summary, indent=2))
    return 0
