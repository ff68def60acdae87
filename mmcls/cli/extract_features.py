"""``mmcls extract-features MODEL --data-root ROOT --split S --out ROOT/zip_feats/S.zip``: frame features."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmcls.cli.options import (
    add_device_option,
    add_frame_decoder_option,
    add_precision_option,
    non_negative_int,
    positive_int,
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "extract-features",
        help="write a model's per-frame features of a split in the official zip_feats format",
        epilog="example: mmcls extract-features runs/tiny --data-root data/ --split labeled "
        "--out data/zip_feats/labeled.zip",
    )
    p.add_argument("model_dir", type=Path, help="a model folder, or a run directory (its best model)")
    p.add_argument("--data-root", type=Path, required=True, help="data in the official layout")
    p.add_argument("--split", required=True, help="annotation split whose videos are encoded")
    p.add_argument("--out", type=Path, required=True, help="feature zip to write (e.g. ROOT/zip_feats/S.zip)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--max-frames", type=positive_int, default=32, help="frames per video, taken uniformly (default 32)"
    )
    p.add_argument("--batch-size", type=positive_int, default=32, help="videos per batch")
    p.add_argument(
        "--num-workers", type=non_negative_int, default=None, help="DataLoader workers (default: the model's)"
    )
    add_device_option(p, default="auto", help="where to run the model")
    add_precision_option(p, default="fp32", help="autocast precision")
    add_frame_decoder_option(p)
    return p


def run(args: argparse.Namespace) -> int:
    from mmcls.inference.features import extract_features
    from mmcls.output_guard import check_outputs, data_inputs, model_inputs
    from mmcls.workflows.pseudo_label import member_annotation_files

    files = member_annotation_files(args.model_dir)
    check_outputs(
        [("--out", args.out)],
        [*model_inputs(args.model_dir), *data_inputs(args.data_root, [args.split], files, features=False)],
    )

    summary = extract_features(
        args.model_dir,
        args.data_root,
        args.split,
        args.out,
        max_frames=args.max_frames,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        precision=args.precision,
        overwrite=args.overwrite,
        frame_decoder=args.frame_decoder,
    )
    report = {
        "out": str(summary.out),
        "videos": summary.videos,
        "without_frames": summary.without_frames,
        "feature_dim": summary.feature_dim,
        "seconds": round(summary.seconds, 3),
        "videos_per_s": round(summary.videos_per_s, 2),
        "train_with": f"--set data.frames.source=zip_feats --set data.frames.feature_dim={summary.feature_dim} "
        "--set model.frame_encoder.type=identity",
    }
    print(json.dumps(report, indent=2))
    return 0
