"""``mmcls pretrain CONFIG --data-root ROOT --out RUN_DIR [--set k=v] [--resume]``: pretraining on unlabeled
videos with the training loop of ``mmcls train`` (one process or under torchrun)."""

from __future__ import annotations

import argparse

from mmcls.cli.options import add_run_options
from mmcls.cli.train import print_run_result


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pretrain",
        help="pretrain the fusion model on unlabeled videos (MLM, MFM, VTM, ITC)",
        epilog=(
            "example: mmcls pretrain pretrain-tiny --data-root data/ --out runs/pre; then "
            "mmcls train tiny --data-root data/ --out runs/ft --set model.init_from=runs/pre"
        ),
    )
    p.add_argument("config", help="YAML file, or a packaged preset (pretrain-tiny, pretrain-base)")
    add_run_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    from mmcls.engine.trainer import train
    from mmcls.pretrain.config import PretrainConfig
    from mmcls.pretrain.task import PretrainingSetup

    cfg = PretrainConfig.from_yaml(args.config, args.overrides)
    result = train(
        cfg,
        args.data_root,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        setup=PretrainingSetup(cfg, args.data_root),
    )
    scores = {"best_val_loss": result.best_score, **{f"val_{k}": v for k, v in result.last_metrics.items()}}
    print_run_result(result, "pretrain", args.out, scores)
    return 0
