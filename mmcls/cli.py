"""The ``mmcls`` command line (also ``python -m mmcls``, which is what ``torchrun -m mmcls`` runs).

Heavy imports (torch, transformers, open_clip) happen inside the sub-command that needs them, so
``mmcls --help`` and ``mmcls evaluate`` stay quick.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _add_make_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-data", help="write a synthetic dataset in the official WBDC2022 layout")
    p.add_argument("out", type=Path)
    p.add_argument("--num-labeled", type=int, default=2000)
    p.add_argument("--num-unlabeled", type=int, default=500)
    p.add_argument("--num-test", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-frames", type=int, default=8, help="most frames per video")
    p.add_argument("--image-size", type=int, default=64)
    p.set_defaults(func=_cmd_make_data)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a classifier (single process, or under torchrun)")
    p.add_argument("config", type=Path, help="YAML preset, e.g. configs/tiny.yaml")
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.set_defaults(func=_cmd_train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a submission CSV against labeled annotations (JSON)")
    p.add_argument("--pred", type=Path, required=True)
    p.add_argument("--ann", type=Path, required=True)
    p.set_defaults(func=_cmd_evaluate)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="write id,category_id predictions for a split")
    p.add_argument("model_dir", type=Path, help="a model folder, or a run directory (its best model)")
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.set_defaults(func=_cmd_predict)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic data -> train tiny on the CPU -> predict -> evaluate")
    p.add_argument("--out", type=Path, default=Path("demo_runs"))
    p.add_argument("--ablations", action="store_true", help="also train text-only and frames-only models")
    p.add_argument("--num-labeled", type=int, default=3000)
    p.add_argument("--num-test", type=int, default=600)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)


# ---------------------------------------------------------------------------------------------- commands
def _cmd_make_data(args: argparse.Namespace) -> int:
    from mmcls.data.synthetic import make_synthetic_dataset

    summary = make_synthetic_dataset(
        args.out,
        num_labeled=args.num_labeled,
        num_unlabeled=args.num_unlabeled,
        num_test=args.num_test,
        seed=args.seed,
        num_frames=args.num_frames,
        image_size=args.image_size,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mmcls.config import Config
    from mmcls.engine.trainer import train

    cfg = Config.from_yaml(args.config, args.overrides)
    result = train(cfg, args.data_root, args.out, resume=args.resume)
    if result.interrupted:
        print(
            f"stopped at step {result.global_step}; continue with: mmcls train ... --out {args.out} --resume"
        )
    elif int(os.environ.get("RANK", 0)) == 0:
        print(
            json.dumps(
                {
                    "run_dir": str(result.run_dir),
                    "best_epoch": result.best_epoch,
                    "best_mean_f1": result.best_score,
                    **result.last_metrics,
                },
                indent=2,
            )
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mmcls.metrics import evaluate_files

    print(json.dumps(evaluate_files(args.pred, args.ann), indent=2))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from mmcls.engine.distributed import shutdown_distributed, world_info_from_env
    from mmcls.predict import predict_split, write_submission

    ids, _, category_ids = predict_split(
        args.model_dir,
        args.data_root,
        args.split,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        precision=args.precision,
    )
    if world_info_from_env().is_main:  # under torchrun every rank holds all predictions; one file
        write_submission(args.out, ids, category_ids)
        print(f"wrote {len(ids)} predictions to {args.out}")
    shutdown_distributed()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mmcls.demo import run_demo

    run_demo(
        args.out,
        ablations=args.ablations,
        num_labeled=args.num_labeled,
        num_test=args.num_test,
        epochs=args.epochs,
        seed=args.seed,
    )
    return 0


# ---------------------------------------------------------------------------------------------- entry
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmcls", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_make_data, _add_train, _add_evaluate, _add_predict, _add_demo):
        add(sub)
    return parser


def _setup_logging(verbose: bool) -> None:
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None else ""
    # Libraries (open_clip logs to the root logger) speak at WARNING; mmcls's own progress at INFO.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("mmcls").setLevel(logging.DEBUG if verbose else logging.INFO)
    # DataLoader workers fork after the fast tokenizer has run; its thread pool must not be inherited.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from mmcls.errors import USER_ERRORS

    try:
        return args.func(args)
    except USER_ERRORS as exc:
        # Bad input (a malformed record, a missing file, a wrong config key): one clear line, no traceback.
        print(f"mmcls {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
