"""``mmcls bench data|infer|train``: throughput and memory of the data path, the model and both together.

The measurements live in :mod:`mmcls.bench` (what each key means is documented there).
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from mmcls import names
from mmcls.cli.options import (
    add_backend_option,
    add_device_option,
    add_frame_decoder_option,
    add_precision_option,
    add_set_option,
    non_negative_int,
    positive_float,
    positive_int,
)

#: ``bench infer --backend`` name -> ``module:factory`` (see :func:`mmcls.bench.torch_backend` for the
#: factory's signature): the core's own model for torch, the deploy Predictor for every exported backend
#: (:data:`mmcls.names.BACKENDS`, the records of ``mmcls.deploy.backends``; imported only when run).
INFER_BACKENDS: dict[str, str] = {
    name: "mmcls.bench:torch_backend" if name == "torch" else "mmcls.deploy.predictor:bench_backend"
    for name in names.BACKENDS
}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help="measure data-loading, model and end-to-end throughput",
        epilog="example: mmcls bench data tiny --data-root data/ --workers 2 --json",
    )
    what = p.add_subparsers(dest="bench_target", required=True, metavar="{data,infer,train}")
    data = what.add_parser("data", help="DataLoader alone and one-process cost per video")
    data.add_argument("config", help="YAML file or preset name (tiny, base, feats)")
    infer = what.add_parser("infer", help="inference: model alone, loader alone, predict end to end")
    infer.add_argument(
        "model", type=Path, nargs="?", help="a model folder or a run directory (its best model)"
    )
    infer.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        metavar="MODEL",
        help="instead of MODEL: several model/artifact folders side by side, each on its own backend "
        "(agreement: labels equal to the first's)",
    )
    add_backend_option(
        infer, default=None, help="inference backend (default: torch for a model folder, an artifact's own)"
    )
    add_frame_decoder_option(infer)
    train = what.add_parser("train", help="training: optimizer step alone and training end to end")
    train.add_argument("config", help="YAML file or preset name (tiny, base, feats)")
    for q in (data, infer, train):
        _common(q, config=q is not infer)
    return p


def _common(p: argparse.ArgumentParser, config: bool) -> None:
    p.add_argument("--data-root", type=Path, required=True, help="data in the official layout")
    p.add_argument("--split", default=None, help="annotation split (default: labeled; infer: test)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="videos per batch")
    p.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader worker processes")
    add_device_option(p, default="cpu", help="where the model runs", auto=False)
    add_precision_option(p, default="fp32", help="autocast precision")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed runs; the median is reported")
    p.add_argument("--warmup", type=non_negative_int, default=1, help="untimed runs before them")
    p.add_argument("--batches", type=positive_int, default=4, help="batches per timed run")
    p.add_argument(
        "--limit", type=positive_int, default=None, help="use only the first N records of the split"
    )
    p.add_argument(
        "--peak-tflops", type=positive_float, default=None, help="device peak for MFU (default: by name)"
    )
    p.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="clock of the one-process/model-alone figures; cpu = process CPU time, steadier on a shared machine",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    if config:
        add_set_option(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from mmcls import bench
    from mmcls.config import Config, ConfigError

    opts = bench.BenchOptions(
        split=args.split or ("test" if args.bench_target == "infer" else "labeled"),
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        repeats=args.repeats,
        warmup=args.warmup,
        batches=args.batches,
        limit=args.limit,
        peak_tflops=args.peak_tflops,
        clock=args.clock,
        frame_decoder=getattr(args, "frame_decoder", "pil"),
    )
    if args.bench_target == "infer" and (args.compare is None) == (args.model is None):
        raise ConfigError("bench infer: give one MODEL, or --compare A B ... (not both)")
    if args.bench_target == "infer" and args.compare:
        return _compare(args, opts)
    if args.bench_target == "infer":
        module, _, factory = INFER_BACKENDS[_single_backend(Path(args.model), args.backend)].partition(":")
        backend = getattr(importlib.import_module(module), factory)
        result = bench.bench_infer(args.model, args.data_root, opts, backend=backend)
    else:
        cfg = Config.from_yaml(args.config, args.overrides)
        measure = bench.bench_data if args.bench_target == "data" else bench.bench_train
        result = measure(cfg, args.data_root, opts)
    report = {
        "bench": args.bench_target,
        **result,
        "device": torch.cuda.get_device_name() if opts.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "options": vars(opts),
    }
    if args.json:
        print(json.dumps(report))
    else:
        width = max(map(len, report))
        for key, value in report.items():
            shown = f"{value:,.3f}" if isinstance(value, float) else value
            print(f"{key:<{width}}  {shown}")
    return 0


def _compare(args: argparse.Namespace, opts) -> int:
    """``bench infer --compare A B C``: one table (or one JSON object) of every model, each on its own backend."""
    import torch

    from mmcls import bench

    kinds = {path: _kind(path, opts.precision) for path in args.compare}
    models = [(str(path), INFER_BACKENDS[kinds[path][0]]) for path in args.compare]
    rows = bench.bench_compare(models, args.data_root, opts)
    for row, path in zip(rows, args.compare):
        row["backend"], row["precision"] = kinds[path]
    if args.json:
        print(
            json.dumps({"bench": "infer", "compare": rows, "torch": torch.__version__, "options": vars(opts)})
        )
        return 0
    columns = [
        ("model", "model"),
        ("backend", "backend"),
        ("precision", "precision"),
        ("model_videos_per_s", "model videos/s"),
        ("e2e_videos_per_s", "e2e videos/s"),
        ("peak_memory_gib", "peak GiB"),
        ("agreement", "agreement"),
    ]
    table = [[title for _, title in columns]]
    for row in rows:
        table.append(
            [f"{row[key]:,.3f}" if isinstance(row[key], float) else str(row[key]) for key, _ in columns]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    print(
        f"device {opts.device}, clock {opts.clock}, batch {opts.batch_size}, torch threads {torch.get_num_threads()}"
    )
    return 0


def _single_backend(path: Path, chosen: str | None) -> str:
    """The backend of ``bench infer MODEL``: what ``--backend`` says for a model folder (torch without it), the
    artifact's own format for an exported artifact (which no other backend can run)."""
    if not (path / names.EXPORT_FILE).is_file():
        return chosen or "torch"
    from mmcls.config import ConfigError

    own = _kind(path, "")[0]
    if chosen not in (None, own):
        raise ConfigError(
            f"{path}: an exported {own} artifact, which --backend {chosen} cannot run; leave it out"
        )
    return own


def _kind(path: Path, precision: str) -> tuple[str, str]:
    """``(backend, precision)`` of a compared folder: an artifact's own (``export.json``), else torch."""
    info_path = path / names.EXPORT_FILE
    if not info_path.is_file():
        return "torch", precision
    info = json.loads(info_path.read_text(encoding="utf-8"))
    mode = (info.get("quantization") or {}).get("mode")
    return info["format"], info.get("precision", "") + (f" {mode}" if mode else "")
