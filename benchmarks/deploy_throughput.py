"""Deployment throughput: model-only and end-to-end videos/s per backend, server latency under concurrency.

    OMP_NUM_THREADS=1 python benchmarks/deploy_throughput.py --work /tmp/bench --threads 1
    python benchmarks/deploy_throughput.py --work /tmp/bench --preset base --device cuda --backends torch,onnx,aoti \\
        --torch-precision fp16 --fp16 --num-test 3000 --batch-size 128 --workers 8 --no-server   # on a GPU

What is measured (numbers go to BENCHMARKS.md with the machine and date):

* model-only: one pre-collated batch of ``--batch-size`` test videos run ``--repeats`` times through the
  backend (inputs copied to the device every time, as the Predictor does); videos/s.
* end-to-end: ``Predictor.predict_split`` over the whole test split, JPEG decoding and tokenizing included
  (``--workers`` DataLoader workers); videos/s.
* server: ``mmcls serve`` on loopback, ``--server-requests`` single-video requests from 1, 8 and 32 concurrent
  tritonclient HTTP clients (JPEG bytes in the request, decoded by the server); p50/p99 latency and videos/s.

The model is a freshly built (random-init) ``--preset`` model: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mmcls.deploy.ports import free_ports


def build_inputs(args) -> tuple[Path, Path]:
    from mmcls.config import Config
    from mmcls.data.categories import official_categories
    from mmcls.data.synthetic import make_synthetic_dataset
    from mmcls.data.text import load_tokenizer
    from mmcls.models import build_model, save_model_dir

    model_dir, data = args.work / f"model_{args.preset}", args.work / "data"
    if not model_dir.exists():
        overrides = []
        if args.preset != "tiny":  # random init, nothing downloaded: speed does not depend on the weights
            overrides = [
                "model.text_encoder=null",
                "model.frame_encoder.pretrained=null",
                "data.text.tokenizer=builtin:bert-base-chinese",
            ]
        config = Config.from_yaml(args.preset, overrides=overrides)
        tokenizer = load_tokenizer("builtin:bert-base-chinese")
        torch.manual_seed(0)
        model = build_model(config, vocab_size=len(tokenizer)).eval()
        save_model_dir(model_dir, model, config, tokenizer, official_categories())
    if not data.exists():
        make_synthetic_dataset(
            data, num_labeled=10, num_unlabeled=0, num_test=args.num_test, seed=1, image_size=224
        )
    return model_dir, data


def artifact(args, model_dir: Path, backend: str) -> Path:
    from mmcls.deploy.export import export_model

    if backend == "torch":
        return model_dir
    fmt = backend.removesuffix("-fp16")
    fp16 = backend.endswith("-fp16") or (args.fp16 and fmt != "onnx")
    out = args.work / f"{model_dir.name}_{backend}_{args.device}"
    if not out.exists():
        export_model(model_dir, out, fmt, fp16=fp16, device=args.device, max_batch=args.batch_size)
    return out


def model_only(predictor, batch, repeats: int) -> float:
    predictor(batch)  # warm-up (lazy initialisation, autotuning)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        predictor(batch)
    return repeats * len(batch["index"]) / (time.perf_counter() - start)


def one_batch(predictor, data: Path, batch_size: int):
    from mmcls.data.annotations import annotation_path, load_records
    from mmcls.data.builders import build_dataset, build_eval_loader

    assets = predictor.assets
    records = load_records(annotation_path(data, "test"))[:batch_size]
    dataset = build_dataset(
        assets.config, data, "test", records, assets.tokenizer, assets.categories, train=False
    )
    return next(iter(build_eval_loader(dataset, batch_size, 0, assets.tokenizer.pad_token_id or 0)))


def end_to_end(predictor, data: Path, batch_size: int, workers: int) -> float:
    start = time.perf_counter()
    ids, _, _ = predictor.predict_split(
        data, "test", batch_size=batch_size, num_workers=workers, progress=False
    )
    return len(ids) / (time.perf_counter() - start)


def server_latency(args, model: Path, data: Path) -> dict[str, dict[str, float]]:
    """Start `mmcls serve`, fire single-video requests at 1/8/32 concurrency; latency percentiles in ms."""
    from mmcls.data.annotations import annotation_path, load_records
    from mmcls.deploy.client import Connection, read_frame_bytes

    http, grpc, metrics = free_ports(3)
    command = [sys.executable, "-m", "mmcls", "serve", str(model), "--http-port", str(http)]
    command += ["--grpc-port", str(grpc), "--metrics-port", str(metrics), "--device", args.device]
    command += ["--max-batch", str(args.batch_size)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v2/models/mmcls/ready", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("server did not start") from None
                time.sleep(1)
        records = load_records(annotation_path(data, "test"))
        probe = Connection(url)
        videos = [
            (r, read_frame_bytes(data / "zip_frames" / "test" / r.id[-3:] / f"{r.id}.zip", probe.max_frames))
            for r in records
        ]
        results = {}
        for concurrency in (1, 8, 32):
            results[str(concurrency)] = _latencies(url, videos, concurrency, args.server_requests)
        return results
    finally:
        server.terminate()
        server.wait(timeout=120)


def _latencies(url: str, videos: list, concurrency: int, total: int) -> dict[str, float]:
    """``concurrency`` threads, each with its own connection, send ``total`` single-video requests in all."""
    from mmcls.deploy.client import Connection

    def worker(k: int) -> list[float]:
        connection = Connection(url)
        times = []
        for i in range(k, total + concurrency, concurrency):  # the first request of each thread is a warm-up
            record, frames = videos[i % len(videos)]
            start = time.perf_counter()
            connection.infer(record.title, record.asr, "", frames)
            times.append(time.perf_counter() - start)
        connection.close()
        return times[1:]

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [t for part in pool.map(worker, range(concurrency)) for t in part]
    elapsed = time.perf_counter() - start
    return {
        "requests": len(latencies),
        "p50_ms": float(np.percentile(latencies, 50) * 1000),
        "p99_ms": float(np.percentile(latencies, 99) * 1000),
        "videos_per_s": len(latencies) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True, help="folder for the model, data and artifacts")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--backends", default="torch,onnx,onnx-fp16,aoti")
    parser.add_argument("--server-backends", default="torch,onnx")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-precision", default="fp32")
    parser.add_argument("--fp16", action="store_true", help="FP16 AOTI artifact (GPU)")
    parser.add_argument("--num-test", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch/onnxruntime intra-op threads")
    parser.add_argument("--server-requests", type=int, default=256)
    parser.add_argument("--no-server", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: WORK/results.json)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mmcls.deploy.predictor import Predictor

    model_dir, data = build_inputs(args)
    results = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "backends": {},
        "server": {},
    }
    for backend in args.backends.split(","):
        path = artifact(args, model_dir, backend)
        precision = args.torch_precision if backend == "torch" else None
        predictor = Predictor.from_path(path, device=args.device, precision=precision, threads=args.threads)
        batch = one_batch(predictor, data, args.batch_size)
        results["backends"][backend] = {
            "precision": predictor.precision,
            "model_only_videos_per_s": model_only(predictor, batch, args.repeats),
            "end_to_end_videos_per_s": end_to_end(predictor, data, args.batch_size, args.workers),
        }
        print(backend, json.dumps(results["backends"][backend]), flush=True)
    if not args.no_server:
        for backend in args.server_backends.split(","):
            results["server"][backend] = server_latency(args, artifact(args, model_dir, backend), data)
            print("server", backend, json.dumps(results["server"][backend]), flush=True)
    out = args.out or args.work / "results.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
