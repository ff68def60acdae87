"""``mmcls evaluate --pred P.csv --ann A.json``: the challenge's score of a submission, as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate",
        help="score a submission CSV against labeled annotations (JSON)",
        epilog="example: mmcls evaluate --pred runs/tiny/result.csv --ann data/annotations/test_labels.json",
    )
    p.add_argument("--pred", type=Path, required=True, help="submission CSV: id,category_id lines")
    p.add_argument("--ann", type=Path, required=True, help="annotations with category_id")
    return p


def run(args: argparse.Namespace) -> int:
    from mmcls.metrics import evaluate_files

    print(json.dumps(evaluate_files(args.pred, args.ann), indent=2))
    return 0
