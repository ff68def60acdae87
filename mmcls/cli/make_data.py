"""``mmcls make-data OUT``: a synthetic dataset in the official WBDC2022 layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmcls.cli.options import float_range, non_negative_int, positive_int, probability


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "make-data",
        help="write a synthetic dataset in the official WBDC2022 layout",
        epilog="example: mmcls make-data data/ --num-labeled 3000 --num-unlabeled 200 --num-test 600; "
        "a long-tailed set with wrong labels: mmcls make-data data_lt/ --long-tail 1.0 --label-noise 0.15",
    )
    p.add_argument("out", type=Path, help="data root to create")
    p.add_argument(
        "--num-labeled", type=non_negative_int, default=2000, help="records in annotations/labeled.json"
    )
    p.add_argument(
        "--num-unlabeled", type=non_negative_int, default=500, help="records in annotations/unlabeled.json"
    )
    p.add_argument("--num-test", type=non_negative_int, default=500, help="records in annotations/test.json")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (same seed, same data)")
    p.add_argument("--num-frames", type=positive_int, default=8, help="most frames per video")
    p.add_argument("--image-size", type=positive_int, default=64, help="frame size in pixels")
    p.add_argument(
        "--categories",
        type=Path,
        metavar="FILE",
        help="taxonomy file (CSV id,name,parent) whose classes label the videos; default: the packaged WBDC2022 "
        "list (its labeled_count column, if any, sets the class frequencies)",
    )
    # Multilabel tagging (issue #17).
    p.add_argument(
        "--task",
        choices=("multiclass", "multilabel"),
        default="multiclass",
        help="multiclass: one category_id per video; multilabel: a tagging set (labels: lists of class ids, "
        "long tail, co-occurring tags), for data.task=multilabel",
    )
    p.add_argument(
        "--label-noise",
        type=probability,
        default=None,
        help="wrong annotations in labeled.json (test labels stay clean). multiclass: chance that a video's "
        "category_id is a random other class (default 0); multilabel: chance that a tag is dropped, and "
        "again that a wrong tag is added (default 0.05)",
    )
    p.add_argument(
        "--modality-noise",
        type=probability,
        default=0.1,
        help="chance that a video's text, and independently its frames, carry the code of a random class "
        "instead of its own (the annotation stays right; default 0.1)",
    )
    p.add_argument(
        "--long-tail",
        type=float_range(0.0, 10.0),
        default=None,
        metavar="EXPONENT",
        help="class frequencies 1/(i+1)^EXPONENT for the i-th class in taxonomy file order, instead of the "
        "taxonomy's labeled_count column (1.0: a steep Zipf tail; 0: balanced)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty folder that make-data did not create (files of the same names are replaced)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from mmcls.data.categories import load_categories
    from mmcls.data.synthetic import make_synthetic_dataset
    from mmcls.output_guard import check_outputs

    check_outputs([("out", args.out)], [args.categories])
    categories = load_categories(args.categories)  # a bad taxonomy is refused before anything is written
    summary = make_synthetic_dataset(
        args.out,
        num_labeled=args.num_labeled,
        num_unlabeled=args.num_unlabeled,
        num_test=args.num_test,
        seed=args.seed,
        num_frames=args.num_frames,
        image_size=args.image_size,
        overwrite=args.overwrite,
        categories=categories,
        task=args.task,
        label_noise=args.label_noise,
        long_tail=args.long_tail,
        text_noise=args.modality_noise,
        visual_noise=args.modality_noise,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0
