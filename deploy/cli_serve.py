"""``mmcls serve MODEL_OR_ARTIFACT``: the model behind NVIDIA Triton Inference Server (HTTP, gRPC, metrics)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from mmcls.cli.options import (
    add_backend_option,
    add_device_option,
    add_precision_option,
    non_negative_int,
    port,
    positive_float,
    positive_int,
)
from mmcls.deploy.ports import LOOPBACK


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="serve a model folder or artifact with Triton Inference Server (from the nvidia-pytriton wheel)",
        epilog="example: mmcls serve artifacts/tiny-onnx --http-port 8000  (stop with Ctrl-C or SIGTERM)",
    )
    p.add_argument(
        "model", type=Path, help="a model folder, a run directory, an artifact folder or a Triton repository"
    )
    add_backend_option(
        p, default=None, help="runtime (default: torch for a model folder, the artifact's own)"
    )
    add_precision_option(p, default=None, help="torch backend only")
    add_device_option(p, default="auto", help="where the served model runs")
    p.add_argument("--host", default=LOOPBACK, help="address the HTTP and gRPC endpoints listen on")
    p.add_argument("--http-port", type=port, default=8000)
    p.add_argument("--grpc-port", type=port, default=8001)
    p.add_argument("--metrics-port", type=port, default=8002)
    p.add_argument(
        "--validate-http",
        action="store_true",
        help="answer malformed HTTP infer bodies (not JSON, not an object with an inputs list, a header length "
        "that does not end the JSON) with a 400 instead of Triton's 500, through a checking pass-through on "
        "--http-port (~0.4 ms of CPU per request); gRPC is not affected",
    )
    p.add_argument(
        "--max-batch", type=positive_int, default=64, help="Triton's max_batch_size (videos per execution)"
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=non_negative_int,
        default=0,
        help="dynamic batcher's wait for a fuller batch (default 0: a busy instance's queue is its next batch)",
    )
    p.add_argument("--instances", type=positive_int, default=1, help="model instances (parallel executions)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="intra-op threads of the runtime per instance (default: its own, OMP_NUM_THREADS or all cores, shared out between instances)",
    )
    p.add_argument(
        "--decode-threads",
        type=positive_int,
        default=None,
        help="threads decoding a batch's JPEGs/videos per instance (default: the cores shared out between instances)",
    )
    p.add_argument(
        "--max-video-bytes",
        type=positive_int,
        default=32 * 1024 * 1024,
        help="input 'video' (an encoded video file) larger than this is refused (default: 32 MiB)",
    )
    p.add_argument(
        "--max-video-seconds",
        type=positive_float,
        default=600.0,
        help="input 'video' longer than this is refused before decoding (default: 600)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from mmcls.deploy.server import ServeOptions, serve

    # Every serve option with a command-line flag of the same name (the others keep their defaults).
    given = {field.name for field in dataclasses.fields(ServeOptions)} & vars(args).keys()
    options = ServeOptions(**{name: getattr(args, name) for name in given})
    return serve(args.model, options)
