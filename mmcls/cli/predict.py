"""``mmcls predict MODEL --data-root ROOT --split S --out result.csv``: the submission CSV of a split."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmcls import names
from mmcls.cli.options import (
    add_backend_option,
    add_device_option,
    add_frame_decoder_option,
    add_precision_option,
)


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
    p.add_argument("--batch-size", type=positive_int, default=64, help="videos per batch and process")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the model's)")
    add_device_option(p, default="auto", help="where to run the model")
    add_precision_option(p, default=None, help="inference precision (default: fp32, or the artifact's own)")
    add_backend_option(
        p,
        default=None,
        help="runtime (default: torch for a model folder, the artifact's format for an artifact folder)",
    )
    add_frame_decoder_option(p)
    p.add_argument(
        "--logit-adjust",
        type=float,
        default=0.0,
        metavar="TAU",
        help="predict argmax(logit - TAU * log prior), the prior being the training split's class counts "
        "saved in the model folder; favours rare classes (macro F1). Default 0: off",
    )
    return p


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--batch-size 0`` is refused before anything is loaded)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def error_report_path(out: Path) -> Path:
    """Where the problem totals of a prediction go: ``result.csv`` -> ``result.data_errors.json``."""
    return out.with_name(f"{out.stem}.data_errors.json")


def run(args: argparse.Namespace) -> int:
    from mmcls.engine.distributed import shutdown_distributed, world_info_from_env
    from mmcls.inference.predict import check_submission_path, predict_split

    inputs = [_split_annotation_path(args), args.model_dir]
    check_submission_path(args.out, inputs)
    check_submission_path(error_report_path(args.out), inputs)
    if args.backend not in (None, "torch") or (args.model_dir / names.EXPORT_FILE).is_file():
        if args.logit_adjust:
            from mmcls.config import ConfigError

            raise ConfigError(
                "--logit-adjust: only for model folders predicted with the torch backend (the class prior is "
                f"read from the folder's {names.CATEGORIES_FILE}); leave out --backend or the exported artifact"
            )
        return _run_deployed(args)
    ids, preds, category_ids = predict_split(
        args.model_dir,
        args.data_root,
        args.split,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        precision=args.precision or "fp32",
        logit_adjust=args.logit_adjust,
        frame_decoder=args.frame_decoder,
    )
    if world_info_from_env().is_main:  # under torchrun every rank holds all predictions; one file
        _write_outputs(args.out, ids, category_ids, dict(preds.frame_errors))
    shutdown_distributed()
    return 0


def _split_annotation_path(args: argparse.Namespace) -> Path:
    """The file ``--split`` names under the model's ``data.annotations`` (the default layout when the folder's
    config cannot be read here: loading the model then reports why)."""
    from mmcls.config import Config
    from mmcls.data.annotations import annotation_path
    from mmcls.errors import MmclsError
    from mmcls.models.model_dir import CONFIG_FILE, resolve_model_dir

    try:
        files = Config.from_yaml(resolve_model_dir(args.model_dir) / CONFIG_FILE).data.annotations
    except (OSError, MmclsError):
        files = None
    return annotation_path(args.data_root, args.split, files)


def _write_outputs(out: Path, ids: list[str], category_ids: list[str], errors: dict[str, int]) -> None:
    """The submission CSV and the data-problem totals beside it (both atomically), and one summary line."""
    from mmcls.inference.predict import write_error_report, write_submission

    write_submission(out, ids, category_ids)
    write_error_report(error_report_path(out), errors)
    print(f"wrote {len(ids)} predictions to {out}")
    if errors:
        totals = ", ".join(f"{kind}: {count}" for kind, count in sorted(errors.items()))
        print(f"data problems (predicted from the text alone where frames were unreadable): {totals}")


def _run_deployed(args: argparse.Namespace) -> int:
    """An exported artifact (ONNX, AOTI, TensorRT) through ``mmcls.deploy``'s Predictor; one process."""
    from mmcls.deploy.predictor import Predictor

    predictor = Predictor.from_path(
        args.model_dir, args.backend, device=args.device, precision=args.precision
    )
    ids, preds, category_ids = predictor.predict_split(
        args.data_root,
        args.split,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        frame_decoder=args.frame_decoder,
    )
    print(f"backend {predictor.backend_name}, precision {predictor.precision}")
    _write_outputs(args.out, ids, category_ids, dict(preds.frame_errors))
    return 0
