"""Served vs offline (issue #24): `mmcls client --bench` against `mmcls serve` beside `mmcls bench infer`.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_vs_offline.py --work /tmp/serve-bench        # tiny + base
    .venv/bin/python benchmarks/serve_vs_offline.py --work /tmp/serve-bench --presets tiny --concurrency 1 8

For each preset (random-init model: speed does not depend on the weights; synthetic test split of 224 px JPEG
zips, 8 frames per video): builds the model folder and the data once, runs ``mmcls bench infer MODEL --workers 1``
(offline end to end: zip reading, JPEG decoding, tokenizing and the model), starts ``mmcls serve MODEL`` on free
loopback ports, runs ``mmcls client URL --bench --concurrency N --json`` for every N, reads Triton's
``nv_inference_*`` counters around each run (queue time, compute input/infer/output per request, executions),
and stops the server. Every command is printed as it runs, with the box's load average (``uptime``): on a
shared machine the wall-clock figures move with the load. The last line is one JSON object with everything.

``--serve-args`` passes options to ``mmcls serve`` (e.g. ``"--instances 2"``) to compare settings,
``--infer-args`` to ``mmcls bench infer`` (e.g. ``"--batch-size 128 --workers 15"`` on a GPU host); ``--device cuda``
runs both on the GPU (benchmarks/gpu_bench.sh does that).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_throughput import build_inputs  # noqa: E402 (random-init model folder + synthetic data)

from mmcls.deploy.ports import free_ports  # noqa: E402

# Per preset: test videos, `bench infer` batch size/batches/repeats, client rounds over the split, and the
# untimed warm-up requests (per client, at most `warmup_max` in all: base runs ~0.1-0.5 videos/s on 2 cores).
PRESETS = {
    "tiny": {
        "num_test": 150,
        "batch_size": 32,
        "batches": 4,
        "repeats": 3,
        "rounds": 2,
        "warmup": 2,
        "timeout": 60,
    },
    "base": {
        "num_test": 24,
        "batch_size": 4,
        "batches": 2,
        "repeats": 1,
        "rounds": 1,
        "warmup": 1,
        "timeout": 1800,
    },
}
WARMUP_MAX = {"tiny": 1000, "base": 4}


def uptime() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())} UTC, {uptime()}] {text}", flush=True)


def mmcls(python: str, *args: str) -> list[str]:
    return [python, "-m", "mmcls", *args]


def run_json(command: list[str]) -> dict:
    log("$ " + shlex.join(command))
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def metrics(port: int) -> dict[str, float]:
    """Triton's ``nv_inference_*`` counters of the model ``mmcls`` (summed over its instances)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r'(nv_inference_\w+)\{[^}]*model="mmcls"[^}]*\} ([0-9.e+-]+)$', line)
        if match:
            totals[match[1]] = totals.get(match[1], 0.0) + float(match[2])
    return totals


def per_request(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Server-side time per request (ms) from the counter deltas, and videos per model execution."""
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    requests = delta.get("nv_inference_request_success", 0.0) or 1.0
    executions = delta.get("nv_inference_exec_count", 0.0) or 1.0
    out = {
        name: round(delta.get(f"nv_inference_{key}_duration_us", 0.0) / requests / 1000.0, 2)
        for name, key in (
            ("server_request_ms", "request"),
            ("queue_ms", "queue"),
            ("compute_input_ms", "compute_input"),
            ("compute_infer_ms", "compute_infer"),
            ("compute_output_ms", "compute_output"),
        )
    }
    out["videos_per_execution"] = round(delta.get("nv_inference_count", 0.0) / executions, 2)
    return out


def process_cpu(root: int) -> dict[str, float]:
    """CPU seconds (user + system) of ``root`` and its descendants, summed by process name (``mmcls serve``'s
    own process, ``tritonserver``: HTTP/gRPC front end and batcher, ``triton_python_``: the backend stubs)."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in Path("/proc").iterdir():
        try:
            text = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if not entry.name.isdigit():
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        table[int(entry.name)] = (name, int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    totals: dict[str, float] = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        if pid in table:
            name, _, seconds = table[pid]
            totals[name] = totals.get(name, 0.0) + seconds
        pending += [child for child, (_, parent, _) in table.items() if parent == pid]
    return totals


def cpu_per_video(before: dict[str, float], after: dict[str, float], videos: int) -> dict[str, float]:
    return {
        f"{name}_cpu_ms": round(1000.0 * (after[name] - before.get(name, 0.0)) / videos, 2) for name in after
    }


def serve(python: str, model: Path, serve_args: list[str]) -> tuple[subprocess.Popen, str, int]:
    http, grpc, metrics_port = free_ports(3)
    command = mmcls(
        python, "serve", str(model), "--http-port", str(http), "--grpc-port", str(grpc),
        "--metrics-port", str(metrics_port), *serve_args,
    )  # fmt: skip
    log("$ " + shlex.join(command))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout is not None
    for line in process.stdout:  # "serving mmcls at ..." once the model is ready
        print(line, end="", flush=True)
        if line.startswith("serving"):
            return process, f"http://127.0.0.1:{http}", metrics_port
    raise RuntimeError(f"mmcls serve exited with status {process.wait()} before serving")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def bench_preset(args: argparse.Namespace, preset: str) -> dict:
    settings = PRESETS[preset]
    work = args.work / preset
    num_test = args.num_test or settings["num_test"]
    model, data = build_inputs(argparse.Namespace(work=work, preset=preset, num_test=num_test))
    python = args.python
    offline = run_json(
        mmcls(
            python, "bench", "infer", str(model), "--data-root", str(data), "--workers", "1",
            "--batch-size", str(settings["batch_size"]), "--batches", str(settings["batches"]),
            "--repeats", str(settings["repeats"]), "--device", args.device, "--json", *args.infer_args,
        )
    )  # fmt: skip
    result: dict = {"preset": preset, "offline": offline, "served": []}
    log(f"{preset}: bench infer end to end {offline.get('e2e_videos_per_s')} videos/s")
    process, url, metrics_port = serve(python, model, ["--device", args.device, *args.serve_args])
    try:
        for concurrency in args.concurrency:
            before, cpu_before = metrics(metrics_port), process_cpu(process.pid)
            served = run_json(
                mmcls(
                    python, "client", url, "--data-root", str(data), "--bench", "--concurrency", str(concurrency),
                    "--warmup", str(min(settings["warmup"] * concurrency, WARMUP_MAX[preset])), "--rounds", str(settings["rounds"]), "--timeout", str(settings["timeout"]),
                    "--json",
                )
            )  # fmt: skip
            served["server"] = per_request(before, metrics(metrics_port))
            # per video sent (warm-up included: the counters cannot tell it apart)
            sent = served["videos"] + served["warmup"]
            served["server"].update(cpu_per_video(cpu_before, process_cpu(process.pid), sent))
            log(f"{preset}: concurrency {concurrency}: {json.dumps(served)}")
            result["served"].append(served)
        if preset == "tiny":  # the whole `mmcls client --out` command, start-up included (what a user times)
            out = work / "served.csv"
            command = mmcls(
                python, "client", url, "--data-root", str(data), "--out", str(out), "--concurrency", "8"
            )
            log("$ " + shlex.join(command))
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            result["whole_client_command"] = {
                "seconds": round(seconds, 2),
                "videos_per_s": round(num_test / seconds, 2),
            }
            log(f"{preset}: whole client command: {result['whole_client_command']}")
    finally:
        stop(process)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True, help="folder for the models and data (reused)")
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"], choices=sorted(PRESETS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="for bench infer and serve")
    parser.add_argument("--num-test", type=int, default=None, help="test videos (default: per preset)")
    parser.add_argument("--serve-args", type=shlex.split, default=[], help="extra `mmcls serve` options")
    parser.add_argument(
        "--infer-args", type=shlex.split, default=[], help="extra `mmcls bench infer` options (last one wins)"
    )
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    log(f"commit {commit.strip()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    results = [bench_preset(args, preset) for preset in args.presets]
    summary = []
    for result in results:
        offline = result["offline"].get("e2e_videos_per_s")
        for served in result["served"]:
            ratio = served["videos_per_s"] / offline if offline else None
            summary.append(
                f"{result['preset']}: concurrency {served['concurrency']}: served {served['videos_per_s']} "
                f"videos/s (p50 {served['p50_ms']} ms, p99 {served['p99_ms']} ms) vs offline {offline}: "
                f"{ratio:.0%}"
                if ratio is not None
                else ""
            )
    log("done\n" + "\n".join(summary))
    print(json.dumps({"load": uptime(), "commit": commit.strip(), "results": results}))


if __name__ == "__main__":
    main()
