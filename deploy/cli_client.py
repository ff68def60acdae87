"""``mmcls client URL --data-root ROOT --split test --out result.csv``: predict a split through a running server;
``mmcls client URL --video PATH [PATH...]``: send video files, decoded on the server (input ``video``);
``mmcls client URL --data-root ROOT --bench --concurrency N --json``: a load test of a local server."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmcls.cli.options import non_negative_int, positive_float, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "client",
        help="send a data split (or video files) to a running `mmcls serve` and write the submission CSV",
        epilog="examples: mmcls client http://127.0.0.1:8000 --data-root data/ --split test --out result.csv\n"
        "          mmcls client http://127.0.0.1:8000 --video clip.mp4 --title '...'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", help="http://HOST:PORT or grpc://HOST:PORT of the server")
    p.add_argument("--data-root", type=Path, help="data in the official layout (not with --video)")
    p.add_argument("--split", default=None, help="annotation split (default: test)")
    p.add_argument("--out", type=Path, help="submission CSV to write (required with --data-root)")
    p.add_argument(
        "--overwrite", action="store_true", help="let --out replace an existing file that is not a CSV"
    )
    p.add_argument(
        "--with-names", action="store_true", help="a third CSV column: the name of each predicted class"
    )
    p.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight at once")
    p.add_argument("--protocol", choices=["http", "grpc"], default=None, help="default: from the URL")
    p.add_argument("--timeout", type=positive_float, default=60.0, help="seconds to wait for one answer")
    bench = p.add_argument_group("load test (instead of --out; 127.0.0.1/localhost only)")
    bench.add_argument(
        "--bench",
        action="store_true",
        help="time the split's videos through the server: videos/s and p50/p90/p99 latency (writes nothing)",
    )
    bench.add_argument(
        "--warmup", type=non_negative_int, default=None, help="untimed requests first (default: 2 per client)"
    )
    bench.add_argument("--rounds", type=positive_int, default=1, help="timed passes over the split")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    videos = p.add_argument_group("video files (instead of --data-root/--split/--out)")
    videos.add_argument(
        "--video", type=Path, nargs="+", metavar="PATH", help="encoded video files (mp4, ...) to classify"
    )
    videos.add_argument("--title", default="", help="title text of the video(s)")
    videos.add_argument("--asr", default="", help="speech transcript of the video(s)")
    videos.add_argument(
        "--ocr", default="", help='on-screen text: plain text or [{"time": t, "text": s}, ...]'
    )
    return p


def run(args: argparse.Namespace) -> int:
    from mmcls.config import ConfigError

    if args.video:
        if args.bench:
            raise ConfigError("--video and --bench: --bench times a split (--data-root/--split)")
        given = [
            name
            for name, value in (
                ("--data-root", args.data_root),
                ("--split", args.split),
                ("--out", args.out),
                ("--overwrite", args.overwrite),
                ("--with-names", args.with_names),
            )
            if value
        ]
        if given:
            raise ConfigError(f"--video and {'/'.join(given)}: give files with --video or a split, not both")
        return _run_videos(args)
    given = [
        name for name, value in (("--title", args.title), ("--asr", args.asr), ("--ocr", args.ocr)) if value
    ]
    if given:
        raise ConfigError(f"{'/'.join(given)}: only with --video")
    bench_only = [
        name
        for name, value in (
            ("--warmup", args.warmup is not None),
            ("--rounds", args.rounds != 1),
            ("--json", args.json),
        )
        if value
    ]
    if args.bench:
        return _run_bench(args)
    if bench_only:
        raise ConfigError(f"{'/'.join(bench_only)}: only with --bench")
    missing = [name for name, value in (("--data-root", args.data_root), ("--out", args.out)) if not value]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} required (or --video PATH to send files)")
    return _run_split(args)


def _run_bench(args: argparse.Namespace) -> int:
    import json

    from mmcls.config import ConfigError
    from mmcls.deploy.client import bench_split_remote

    if args.out or args.with_names or args.overwrite:
        raise ConfigError("--out/--with-names/--overwrite and --bench: a load test writes no predictions")
    if not args.data_root:
        raise ConfigError("--bench needs --data-root (the split whose videos are sent)")
    result = bench_split_remote(
        args.url,
        args.data_root,
        args.split or "test",
        concurrency=args.concurrency,
        protocol=args.protocol,
        timeout=args.timeout,
        warmup=args.warmup,
        rounds=args.rounds,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['videos']} videos, {result['concurrency']} clients ({result['protocol']}): "
            f"{result['videos_per_s']} videos/s, latency p50 {result['p50_ms']} ms, p90 {result['p90_ms']} ms, "
            f"p99 {result['p99_ms']} ms"
        )
    return 0


def _run_split(args: argparse.Namespace) -> int:
    import csv
    from collections import Counter

    from mmcls.cli.predict import error_report_path
    from mmcls.deploy.client import iter_classify_split_remote
    from mmcls.files import atomic_writer
    from mmcls.inference.predict import check_replaceable, check_submission_path, write_error_report
    from mmcls.output_guard import check_outputs, data_inputs

    inputs = data_inputs(args.data_root, [args.split or "test"])
    report = error_report_path(args.out)
    check_outputs([("--out", args.out), ("--out", report)], inputs)
    check_replaceable(args.out, overwrite=args.overwrite)
    check_submission_path(args.out, inputs)
    check_submission_path(report, inputs)
    results = iter_classify_split_remote(
        args.url,
        args.data_root,
        args.split or "test",
        concurrency=args.concurrency,
        protocol=args.protocol,
        timeout=args.timeout,
    )
    totals: Counter[str] = Counter()
    count = 0
    with atomic_writer(args.out, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        for record, result in results:  # a stream: rows are written as the answers come
            row = [record.id, result.category_id]
            writer.writerow([*row, result.category_name] if args.with_names else row)
            totals.update(result.frame_errors)
            count += 1
    write_error_report(report, dict(totals))  # predict's format: the same totals on the same data
    print(f"wrote {count} predictions to {args.out}")
    if totals:
        listed = ", ".join(f"{kind}: {count}" for kind, count in sorted(totals.items()))
        print(f"data problems (predicted from the text alone where frames were unreadable): {listed}")
    return 0


def _run_videos(args: argparse.Namespace) -> int:
    """One request per file (its bytes as input ``video``); one line per file: id, probability, name."""
    from mmcls.deploy.client import ClientError, Connection
    from mmcls.files import InputFileError, check_regular_file

    connection = Connection(args.url, args.protocol, args.timeout)
    try:
        for path in args.video:
            try:
                check_regular_file(path, what="video file")
                data = path.read_bytes()
            except InputFileError as exc:  # a folder, a FIFO
                raise ClientError(f"--video {path}: {exc.problem}") from None
            except OSError as exc:
                raise ClientError(f"--video {path}: {exc.strerror or exc}") from None
            result = connection.infer(args.title, args.asr, args.ocr, name=str(path), video=data)
            prob = float(result.probs.max())
            errors = f"  ({'; '.join(result.errors)})" if result.errors else ""
            print(f"{path}\t{result.category_id}\t{prob:.4f}\t{result.category_name}{errors}")
    finally:
        connection.close()
    return 0
