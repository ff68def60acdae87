"""``mmcls tune CONFIG --data-root ROOT --out TUNE_DIR --space SPACE.yaml --trials N``: an Optuna search."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmcls.cli.options import add_set_option, int_range, positive_float, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "tune",
        help="hyperparameter search with Optuna (pruning, resumable, several processes share one study)",
        epilog="example: mmcls tune tiny --data-root data/ --out runs/tune --space space.yaml --trials 12 "
        "(space.yaml: 'train.lr: {log_uniform: [1.0e-5, 1.0e-3]}'); needs pip install 'mmcls[tune]'",
    )
    p.add_argument("config", type=Path, help="YAML file, or a packaged preset name (tiny, base, feats)")
    p.add_argument("--data-root", type=Path, required=True, help="data in the official layout")
    p.add_argument(
        "--out", type=Path, required=True, help="tune directory: trial_NNN/ runs, best.yaml, plots"
    )
    p.add_argument("--space", type=Path, required=True, help="search space YAML (config key -> distribution)")
    p.add_argument(
        "--trials", type=positive_int, required=True, help="finished trials the study should have in all"
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default: sqlite:///OUT/study.db), shared to run in parallel",
    )
    p.add_argument("--study", default=None, help="study name in the storage (default: mmcls)")
    p.add_argument(
        "--timeout", type=positive_float, default=None, help="start no new trial after this many seconds"
    )
    p.add_argument("--pruner", default="median", choices=["median", "none"], help="stop weak trials early")
    p.add_argument(
        "--stale-after",
        type=int_range(2, None),
        default=None,
        metavar="SECONDS",
        help="a trial without a heartbeat this long (its process killed) is failed and retried (default: 20)",
    )
    add_set_option(p)  # for every trial, e.g. --set train.epochs=3
    return p


def run(args: argparse.Namespace) -> int:
    from mmcls.config import Config
    from mmcls.workflows.tune import GRACE_PERIOD, run_tune

    cfg = Config.from_yaml(args.config, args.overrides)
    summary = run_tune(
        cfg,
        args.data_root,
        args.out,
        args.space,
        args.trials,
        storage=args.storage,
        study_name=args.study,
        timeout=args.timeout,
        pruner=args.pruner,
        stale_after=args.stale_after or GRACE_PERIOD,
    )
    print(json.dumps(summary, indent=2))
    return 0
