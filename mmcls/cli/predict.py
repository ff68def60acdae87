"""``mmcls predict MODEL --data-root ROOT --split S --out result.csv``: the submission CSV of a split;
``mmcls predict MODEL --video PATH [PATH...]``: the likeliest classes of video files or frame zips."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmcls import names
from mmcls.cli.options import (
    add_backend_option,
    add_device_option,
    add_frame_decoder_option,
    add_precision_option,
    logit_adjust_value,
    non_negative_int,
    positive_int,
)

VIDEO_TOP_K = 5  # classes shown per file by ``predict --video`` without --top-k


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict",
        help="write id,category_id predictions for a split, or classify video files (--video)",
        epilog="examples: mmcls predict runs/tiny --data-root data/ --split test --out runs/tiny/result.csv\n"
        "          mmcls predict runs/tiny --video clip.mp4 --title '...' --top-k 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model_dir",
        type=Path,
        help="a model folder, a run directory (its best model), or an artifact folder from `mmcls export`",
    )
    p.add_argument("--data-root", type=Path, help="data in the official layout (not with --video)")
    p.add_argument("--split", default=None, help="annotation split to predict (default: test)")
    p.add_argument("--out", type=Path, help="submission CSV to write (required with --data-root)")
    p.add_argument(
        "--overwrite", action="store_true", help="let --out replace an existing file that is not a CSV"
    )
    videos = p.add_argument_group("one video at a time (instead of --data-root/--split/--out)")
    videos.add_argument(
        "--video",
        type=Path,
        nargs="+",
        metavar="PATH",
        help="video files (decoded with decord) or frame zips (*.zip) to classify, preprocessed as the "
        "model's eval loader does",
    )
    videos.add_argument("--title", default="", help="title text of the video(s)")
    videos.add_argument("--asr", default="", help="speech transcript of the video(s)")
    videos.add_argument(
        "--ocr", default="", help='on-screen text: plain text or [{"time": t, "text": s}, ...]'
    )
    videos.add_argument(
        "--json", action="store_true", help='print [{"video", "top": [{"category_id", "name", "prob"}]}]'
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="videos per batch and process")
    p.add_argument(
        "--num-workers", type=non_negative_int, default=None, help="DataLoader workers (default: the model's)"
    )
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
        type=logit_adjust_value,
        default="auto",
        metavar="TAU",
        help="predict argmax(logit - TAU * log prior), the prior being the training split's class counts "
        "saved in the model folder; favours rare classes (macro F1). Default auto: the TAU the training run "
        "chose on validation (saved in the model folder; 0 for folders without it); 0: the plain argmax. An "
        "exported artifact has its TAU baked in (auto, or that number)",
    )
    p.add_argument(
        "--top-k",
        type=positive_int,
        default=None,
        metavar="K",
        help=f"with --video: the classes shown per video (default: {VIDEO_TOP_K}); with a multilabel model: at "
        "most K tags per video",
    )
    _add_tagging_options(p)
    return p


# ------------------------------------------------------------------ multilabel tagging (issue #17)
def _add_tagging_options(p: argparse.ArgumentParser) -> None:
    """Options of a tagging model (``data.task: multilabel``); a single-label model refuses them."""
    group = p.add_argument_group("multilabel models (data.task=multilabel)")
    group.add_argument(
        "--threshold",
        default=None,
        metavar="global|per-class|P",
        help="tag a class when its probability reaches: its own threshold chosen on validation (per-class, "
        "the default), the global one, or the probability P; the CSV is id,labels with OUT.probs.npy/.json",
    )
    group.add_argument(
        "--min-tags",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="at least N tags per video, the most probable (default: the model's train.thresholds.min_tags)",
    )


def _is_tagging_model(args: argparse.Namespace) -> bool:
    from mmcls.config import Config
    from mmcls.errors import MmclsError
    from mmcls.models.model_dir import CONFIG_FILE, resolve_model_dir

    try:
        deployed = (args.model_dir / names.EXPORT_FILE).is_file()  # an artifact: its config is beside it
        folder = args.model_dir if deployed else resolve_model_dir(args.model_dir)
        return Config.from_yaml(folder / CONFIG_FILE).data.task == "multilabel"
    except (OSError, MmclsError):
        return False  # loading the model reports why


def _check_tagging_options(args: argparse.Namespace, tagging: bool) -> None:
    from mmcls.config import ConfigError

    options = (("--threshold", args.threshold), ("--top-k", args.top_k), ("--min-tags", args.min_tags))
    given = [option for option, value in options if value is not None]
    if given and not tagging:
        raise ConfigError(f"{given[0]}: only for a multilabel model (data.task=multilabel)")
    if tagging and args.logit_adjust not in ("auto", 0):
        raise ConfigError("--logit-adjust: single-label only; this model tags (data.task=multilabel)")
    if args.min_tags is not None and args.min_tags < 0:
        raise ConfigError(f"--min-tags={args.min_tags}: must be at least 0")


def _run_tagging(args: argparse.Namespace) -> int:
    from mmcls.engine.distributed import shutdown_distributed, world_info_from_env
    from mmcls.inference.predict import check_submission_path, predict_tags, write_error_report, write_tags
    from mmcls.metrics import tag_probs_path
    from mmcls.models.model_dir import load_model_categories, resolve_model_dir
    from mmcls.tagging import model_thresholds

    inputs = [_split_annotation_path(args), args.model_dir]
    for path in (tag_probs_path(args.out), tag_probs_path(args.out).with_suffix(".json")):
        check_submission_path(path, inputs)
    deployed = args.backend not in (None, "torch") or (args.model_dir / names.EXPORT_FILE).is_file()
    folder = args.model_dir if deployed else resolve_model_dir(args.model_dir)
    if deployed:
        ids, probs, tags, preds, categories = _deployed_tags(args)
    else:
        categories = load_model_categories(args.model_dir)
        ids, probs, tags, preds = predict_tags(
            args.model_dir,
            args.data_root,
            args.split,
            threshold=args.threshold or "per-class",
            top_k=args.top_k,
            min_tags=args.min_tags,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=args.device,
            precision=args.precision or "fp32",
            frame_decoder=args.frame_decoder,
        )
    if world_info_from_env().is_main:
        thresholds = model_thresholds(folder, list(categories.category_ids), args.threshold or "per-class")
        write_tags(args.out, ids, probs, tags, categories, thresholds)
        write_error_report(error_report_path(args.out), dict(preds.frame_errors))
        print(
            f"wrote {len(ids)} tag predictions ({int(tags.sum())} tags) to {args.out}, {tag_probs_path(args.out)}"
        )
    shutdown_distributed()
    return 0


def _deployed_tags(args: argparse.Namespace):  # noqa: ANN202 - (ids, probs, tags, predictions, categories)
    """A tagging artifact (ONNX, AOTI, TensorRT) through ``mmcls.deploy``'s Predictor; thresholds from the
    artifact (export copies the model folder's ``thresholds.json``)."""
    import numpy as np

    from mmcls.tagging import model_tags

    predictor, (ids, preds, _) = _predict_with_artifact(args)
    assets = predictor.assets
    probs = preds.probs[np.argsort(preds.indices)]
    category_ids = list(assets.categories.category_ids)
    threshold = args.threshold or "per-class"
    tags = model_tags(assets.folder, assets.config, category_ids, probs, threshold, args.top_k, args.min_tags)
    print(f"backend {predictor.backend_name}, precision {predictor.precision}")
    return ids, probs, tags, preds, assets.categories


def error_report_path(out: Path) -> Path:
    """Where the problem totals of a prediction go: ``result.csv`` -> ``result.data_errors.json``."""
    return out.with_name(f"{out.stem}.data_errors.json")


def run(args: argparse.Namespace) -> int:
    from mmcls.engine.distributed import shutdown_distributed, world_info_from_env
    from mmcls.inference.predict import check_replaceable, check_submission_path, predict_split
    from mmcls.output_guard import check_outputs, data_inputs, model_inputs

    _check_mode(args)
    if args.video:
        return _run_videos(args)
    args.split = args.split or "test"
    inputs = [_split_annotation_path(args), *model_inputs(args.model_dir), *data_inputs(args.data_root, [])]
    check_outputs([("--out", args.out), ("--out", error_report_path(args.out))], inputs)
    check_replaceable(args.out, overwrite=args.overwrite)
    check_submission_path(args.out, inputs)
    check_submission_path(error_report_path(args.out), inputs)
    tagging = _is_tagging_model(args)
    _check_tagging_options(args, tagging)
    if tagging:
        return _run_tagging(args)
    if args.backend not in (None, "torch") or (args.model_dir / names.EXPORT_FILE).is_file():
        _check_deployed_logit_adjust(args)
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


def _check_deployed_logit_adjust(args: argparse.Namespace) -> None:
    """An artifact's TAU was baked into its classifier at export (``export.json``: ``logit_adjust``): ``auto``
    or that same number predicts with it; any other TAU needs another export, and is refused rather than
    silently replaced by the baked one (a number on a model folder with a non-torch backend: the same rule,
    with TAU 0, as such a folder fails to load anyway)."""
    from mmcls.config import ConfigError

    if args.logit_adjust == "auto":
        return
    baked = 0.0
    if (args.model_dir / names.EXPORT_FILE).is_file():
        from mmcls.deploy.artifact import read_export_info

        baked = float((read_export_info(args.model_dir).get("logit_adjust") or {}).get("tau", 0.0))
    if float(args.logit_adjust) != baked:
        raise ConfigError(
            f"--logit-adjust {args.logit_adjust:g}: {args.model_dir} is an exported artifact with TAU {baked:g} "
            f"baked into its classifier ({names.EXPORT_FILE}); export the model folder again with "
            f"--logit-adjust {args.logit_adjust:g}, or predict the model folder itself"
        )


def _check_mode(args: argparse.Namespace) -> None:
    """A split (``--data-root`` + ``--out``) or files (``--video``), each with its own options, never both."""
    from mmcls.config import ConfigError

    split_options = {
        "--data-root": args.data_root,
        "--split": args.split,
        "--out": args.out,
        "--overwrite": args.overwrite,
    }
    video_options = {
        "--title": args.title,
        "--asr": args.asr,
        "--ocr": args.ocr,
        "--json": args.json,
    }
    if args.video:
        given = [name for name, value in split_options.items() if value]
        if given:
            raise ConfigError(f"--video and {'/'.join(given)}: give files with --video or a split, not both")
        if args.frame_decoder != "pil":
            raise ConfigError(
                "--frame-decoder cuda: decodes the frame zips of a split; --video reads on the CPU"
            )
        return
    given = [name for name, value in video_options.items() if value]
    if given:
        raise ConfigError(f"{'/'.join(given)}: only with --video")
    missing = [name for name in ("--data-root", "--out") if not split_options[name]]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} required (or --video PATH to classify files)")


def _run_videos(args: argparse.Namespace) -> int:
    """``--video``: the top classes of each file, as a table or JSON; any backend (torch, or an artifact's)."""
    import numpy as np

    from mmcls.inference.predict import predict_videos, top_classes, video_loader, video_records

    records = video_records(args.video, args.title, args.asr, args.ocr)
    if args.backend not in (None, "torch") or (args.model_dir / names.EXPORT_FILE).is_file():
        from mmcls.deploy.predictor import Predictor

        _check_deployed_logit_adjust(args)
        predictor = Predictor.from_path(
            args.model_dir, args.backend, device=args.device, precision=args.precision
        )
        assets = predictor.assets
        loader = video_loader(assets.config, assets.tokenizer, assets.categories, records, args.batch_size)
        preds = predictor.predict_loader(loader)
        categories, probs = assets.categories, preds.probs[np.argsort(preds.indices)]
    else:
        categories, probs = predict_videos(
            args.model_dir,
            records,
            batch_size=args.batch_size,
            device=args.device,
            precision=args.precision or "fp32",
            logit_adjust=args.logit_adjust,
        )
    results = top_classes(args.video, probs, categories, args.top_k or VIDEO_TOP_K)
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        print(format_top_classes(results))
    return 0


def format_top_classes(results: list[dict]) -> str:
    """The terminal table of ``predict --video``: per video, rank, class id, probability and name."""
    lines = []
    for result in results:
        width = max(len("category_id"), *(len(row["category_id"]) for row in result["top"]))
        lines.append(f"{result['video']}")
        lines.append(f"  rank  {'category_id':<{width}}  prob    name")
        for rank, row in enumerate(result["top"], 1):
            lines.append(f"  {rank:<4}  {row['category_id']:<{width}}  {row['prob']:.4f}  {row['name']}")
    return "\n".join(lines)


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


def _predict_with_artifact(args: argparse.Namespace):  # noqa: ANN202 - (Predictor, predict_split's tuple)
    """The split predicted by ``mmcls.deploy``'s Predictor over the model the options name (an exported
    artifact, or a model folder with ``--backend``), as the command's options say."""
    from mmcls.deploy.predictor import Predictor

    predictor = Predictor.from_path(
        args.model_dir, args.backend, device=args.device, precision=args.precision
    )
    split = predictor.predict_split(
        args.data_root,
        args.split,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        frame_decoder=args.frame_decoder,
    )
    return predictor, split


def _run_deployed(args: argparse.Namespace) -> int:
    """An exported artifact (ONNX, AOTI, TensorRT) through ``mmcls.deploy``'s Predictor; one process."""
    predictor, (ids, preds, category_ids) = _predict_with_artifact(args)
    print(f"backend {predictor.backend_name}, precision {predictor.precision}")
    _write_outputs(args.out, ids, category_ids, dict(preds.frame_errors))
    return 0
