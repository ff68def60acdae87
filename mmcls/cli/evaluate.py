"""``mmcls evaluate --pred P.csv --ann A.json``: the challenge's score of a submission, as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmcls.cli.options import positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate",
        help="score a submission CSV against labeled annotations (JSON)",
        epilog="example: mmcls evaluate --pred runs/tiny/result.csv --ann data/annotations/test_labels.json "
        "--report runs/tiny/report",
    )
    p.add_argument("--pred", type=Path, required=True, help="submission CSV: id,category_id lines")
    p.add_argument(
        "--ann",
        type=Path,
        required=True,
        help="ground truth: annotations JSON with category_id, or the official id,category_id CSV",
    )
    p.add_argument(
        "--categories",
        type=Path,
        metavar="PATH",
        help="taxonomy file (CSV id,name,parent) the ids belong to; default: the packaged WBDC2022 list",
    )
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="also write an HTML report with plots, per_class.csv and summary.json to DIR",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="let --report write into a folder it did not create"
    )
    # Multilabel tagging (issue #17).
    p.add_argument(
        "--task",
        choices=("multiclass", "multilabel"),
        default=None,
        help="multilabel: score an id,labels file (with OUT.probs.npy beside it) against annotations with "
        "labels: gap_at_K, map, micro_f1, macro_f1 and per label dimension; default: detected from the file",
    )
    p.add_argument(
        "--top-k",
        type=positive_int,
        default=20,
        metavar="K",
        help="multilabel: GAP over each video's top K predictions (key gap_at_K; default 20)",
    )
    return p


def _run_multilabel(args: argparse.Namespace, categories) -> int:  # noqa: ANN001 - a Taxonomy
    from mmcls.config import ConfigError
    from mmcls.metrics import multilabel_scores, read_tag_evaluation

    if args.top_k < 1:
        raise ConfigError(f"--top-k={args.top_k}: must be at least 1")
    if args.report is not None:  # refuse a foreign report folder before any work
        from mmcls.files import REPORT_MARKER, check_output_dir

        check_output_dir(args.report, REPORT_MARKER, overwrite=args.overwrite)
    truth, probs, predicted, info = read_tag_evaluation(args.pred, args.ann, categories)
    scores = multilabel_scores(truth, probs, predicted, categories, args.top_k)
    if args.report is not None:
        from mmcls.tag_report import write_tag_report

        thresholds = info.get("thresholds")
        write_tag_report(
            args.report, scores, truth, probs, predicted, categories, thresholds, overwrite=args.overwrite
        )
        print(f"report: {args.report}/per_class.csv, false_positives.csv, summary.json", file=sys.stderr)
    print(json.dumps(scores, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    from mmcls.data.categories import load_categories
    from mmcls.metrics import evaluate_files, is_tag_prediction_file, read_labels, read_predictions

    categories = load_categories(args.categories)  # a bad taxonomy is refused before any other work
    task = args.task or ("multilabel" if is_tag_prediction_file(args.pred) else "multiclass")
    if task == "multilabel":
        return _run_multilabel(args, categories)
    if args.report is not None:  # refuse a foreign report folder before any work
        from mmcls.files import REPORT_MARKER, check_output_dir

        check_output_dir(args.report, REPORT_MARKER, overwrite=args.overwrite)
    scores = evaluate_files(args.pred, args.ann, categories)  # validates both files completely
    if args.report is not None:
        from mmcls.report import load_titles, write_evaluation_report

        write_evaluation_report(
            args.report,
            read_labels(args.ann, categories),
            read_predictions(args.pred, categories),
            titles=load_titles(args.ann),
            sources={
                "predictions": str(args.pred),
                "ground truth": str(args.ann),
                "taxonomy": categories.source,
            },
            overwrite=args.overwrite,
            categories=categories,
        )
        print(f"report: {args.report / 'index.html'}", file=sys.stderr)
    print(json.dumps(scores, indent=2))
    return 0
