"""``mmcls train CONFIG --data-root ROOT --out RUN_DIR``: one training run (one process, or under torchrun)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from mmcls.cli.options import add_run_options


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train a classifier (single process, or under torchrun)",
        epilog="example: mmcls train tiny --data-root data/ --out runs/tiny --set train.lr=5e-4",
    )
    p.add_argument("config", help="YAML file, or a packaged preset name (tiny, base, feats)")
    add_run_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    from mmcls.config import Config
    from mmcls.engine.trainer import train

    cfg = Config.from_yaml(args.config, args.overrides)
    result = train(cfg, args.data_root, args.out, resume=args.resume, overwrite=args.overwrite)
    print_run_result(
        result,
        "train",
        args.out,
        {f"best_{result.selection_metric}": result.best_score, **result.last_metrics},
    )
    return 0


def print_run_result(result: Any, command: str, out: Path, scores: dict[str, Any]) -> None:
    """How to resume an interrupted run (one line), or the JSON summary of a finished one (rank 0 only)."""
    if result.interrupted:
        print(
            f"stopped at step {result.global_step}; continue with: mmcls {command} ... --out {out} --resume"
        )
    elif int(os.environ.get("RANK", 0)) == 0:
        summary = {"run_dir": str(result.run_dir), "best_epoch": result.best_epoch, **scores}
        print(json.dumps(summary, indent=2))
