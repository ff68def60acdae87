"""``mmcls client URL --data-root ROOT --split test --out result.csv``: predict a split through a running server."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "client",
        help="send a data split to a running `mmcls serve` and write the submission CSV",
        epilog="example: mmcls client http://127.0.0.1:8000 --data-root data/ --split test --out result.csv",
    )
    p.add_argument("url", help="http://HOST:PORT or grpc://HOST:PORT of the server")
    p.add_argument("--data-root", type=Path, required=True, help="data in the official layout")
    p.add_argument("--split", default="test", help="annotation split (default: test)")
    p.add_argument("--out", type=Path, required=True, help="submission CSV to write")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    p.add_argument("--protocol", choices=["http", "grpc"], default=None, help="default: from the URL")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one answer")
    return p


def run(args: argparse.Namespace) -> int:
    from mmcls.deploy.client import predict_split_remote
    from mmcls.inference.predict import write_submission

    ids, category_ids, errors = predict_split_remote(
        args.url,
        args.data_root,
        args.split,
        concurrency=args.concurrency,
        protocol=args.protocol,
        timeout=args.timeout,
    )
    write_submission(args.out, ids, category_ids)
    note = f", {len(errors)} videos with frame errors" if errors else ""
    print(f"wrote {len(ids)} predictions to {args.out}{note}")
    return 0
