"""`mmcls serve` as a real process on loopback: Triton answers tritonclient over HTTP and gRPC, batches, refuses
bad input with a 400 and keeps serving, stops cleanly on SIGTERM and starts again on the same ports."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import time
import urllib.request

import numpy as np
import pytest

from commands import child_env, free_ports, mmcls_command, run_main
from deploy_fixtures import make_data, tiny_model_dir

tritonclient_http = pytest.importorskip("tritonclient.http")
pytest.importorskip("pytriton")

pytestmark = pytest.mark.slow


class Server:
    """`mmcls serve MODEL` in a child process; its own PYTRITON_HOME shows what it leaves behind."""

    def __init__(self, model, ports, home):
        self.ports = ports
        self.home = home
        http, grpc, metrics = ports
        args = ["serve", str(model), "--http-port", str(http), "--grpc-port", str(grpc)]
        args += ["--metrics-port", str(metrics), "--max-batch", "16", "--max-queue-delay-us", "20000"]
        env = {**child_env(), "PYTRITON_HOME": str(home)}
        self.log_path = home.parent / f"{home.name}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            mmcls_command(*args), env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{http}"

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                with urllib.request.urlopen(f"{self.url}/v2/models/mmcls/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.output()}")

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[2]}/metrics", timeout=10) as response:
            text = response.read().decode()
        values = {}
        for name in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success"):
            match = re.search(rf'^{name}{{model="mmcls",version="1"}} (\S+)$', text, re.MULTILINE)
            values[name] = float(match.group(1))
        return values

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=120)
        finally:
            self.log.close()

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()[-4000:]


def infer_input(name, values):
    array = np.array([values], dtype=np.object_)
    tensor = tritonclient_http.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def request(title=b"t", asr=b"", ocr=b"", frames=(b"",), drop=None):
    inputs = {"title": [title], "asr": [asr], "ocr": [ocr], "frames": list(frames)}
    return [infer_input(name, values) for name, values in inputs.items() if name != drop]


def jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (30, 90, 150)).save(buffer, format="JPEG")
    return buffer.getvalue()


def read_csv(path):
    with open(path, newline="") as handle:
        return dict(csv.reader(handle))


def test_server_end_to_end(tmp_path):
    model = tiny_model_dir(tmp_path / "model")
    data = make_data(tmp_path / "data", num_test=32)
    predicted = tmp_path / "predict.csv"
    run_main("predict", str(model), "--data-root", str(data), "--out", str(predicted), "--num-workers", "0")

    ports = free_ports(3)
    home = tmp_path / "pytriton_home"
    server = Server(model, ports, home)
    try:
        server.wait_ready()
        # A whole split with 8 requests in flight, over HTTP and over gRPC: the same labels as `mmcls predict`.
        for protocol, url in (("http", server.url), ("grpc", f"grpc://127.0.0.1:{ports[1]}")):
            out = tmp_path / f"client_{protocol}.csv"
            run_main("client", url, "--data-root", str(data), "--out", str(out), "--concurrency", "8")
            assert read_csv(out) == read_csv(predicted)
        metrics = server.metrics()
        assert metrics["nv_inference_count"] == 64
        assert metrics["nv_inference_exec_count"] < metrics["nv_inference_count"]  # requests were batched

        client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        good = jpeg()
        answer = client.infer("mmcls", request(frames=[good, b"not a jpeg", b""]))
        assert answer.as_numpy("probs").shape == (1, 200)
        assert b"frames[1]: undecodable image" in answer.as_numpy("errors")[0, 0]
        bad_requests = {
            "not valid UTF-8": request(title=b"\xff\xfe"),
            "at most 4 per video": request(frames=[good] * 5),
            "empty request": request(title=b""),
            "missing required input": request(drop="ocr"),
            "'ocr': not a JSON list": request(ocr=b'[{"time": 1}]'),
        }
        for expected, inputs in bad_requests.items():
            with pytest.raises(tritonclient_http.InferenceServerException) as caught:
                client.infer("mmcls", inputs)
            assert caught.value.status() == "400", (expected, caught.value)
            assert expected in caught.value.message()
            assert "Traceback" not in caught.value.message()
        assert client.infer("mmcls", request(frames=[good])).as_numpy("category_id").shape == (1, 1)
        client.close()
    finally:
        status = server.stop()
    assert status == 0, server.output()
    assert "stopped" in server.output()
    assert list(home.iterdir()) == []  # the workspace is gone
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(f"mmcls{server.process.pid}_")]

    # The ports are free again: a second server starts on them.
    again = Server(model, ports, tmp_path / "pytriton_home2")
    try:
        again.wait_ready()
    finally:
        assert again.stop() == 0


def test_triton_repository_from_export_loads_in_tritonserver(tmp_path):
    """`mmcls export --format triton` -> a repository that the wheel's tritonserver loads as it is and answers."""
    from mmcls.deploy.client import classify_video

    model = tiny_model_dir(tmp_path / "model")
    repo = tmp_path / "repo"
    run_main("export", str(model), "--format", "triton", "--out", str(repo))
    server = Server(repo, free_ports(3), tmp_path / "home")
    try:
        server.wait_ready()
        answer = classify_video(server.url, title="标题", ocr="字幕", frames=[jpeg(), jpeg()])
        assert answer.probs.shape == (200,)
        assert abs(float(answer.probs.sum()) - 1.0) < 1e-4
        assert answer.category_id[:2] == answer.lv1_id  # the parent of the predicted category
        assert answer.errors == []
    finally:
        assert server.stop() == 0
