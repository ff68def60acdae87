"""`mmcls serve` as a real process on loopback, started twice for the whole module.

One server over an ONNX artifact (a tiny model over the 12-class taxonomy with Chinese names) answers a split over
HTTP and gRPC with `mmcls predict`'s labels and names, batches, classifies an encoded video as `predict --video`
does, refuses bad input with a 400 and keeps serving, and stops cleanly on SIGTERM. The second server, on the
same ports, serves the repository `mmcls export --format triton` writes for a tagging model (outputs `tags`,
`tag_names`), with `--validate-http`: malformed bodies that Triton's own HTTP front end answers with a 500 get a
400 from the checking pass-through (the check itself is unit-tested in test_http_guard.py). The int8 artifact
is checked in-process through the served model's code (test_quantize.py).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest

from mmcls.data.categories import read_taxonomy

from commands import child_env, free_ports, mmcls_command, run_main
from deploy_fixtures import tiny_model_dir

tritonclient_http = pytest.importorskip("tritonclient.http")
pytest.importorskip("pytriton")


class Server:
    """`mmcls serve MODEL` in a child process; its own PYTRITON_HOME shows what it leaves behind."""

    def __init__(self, model, ports, home, *options):
        self.ports = ports
        self.home = home
        http, grpc, metrics = ports
        args = ["serve", str(model), "--http-port", str(http), "--grpc-port", str(grpc)]
        args += [
            "--metrics-port",
            str(metrics),
            "--max-batch",
            "16",
            "--max-queue-delay-us",
            "20000",
            *options,
        ]
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


def read_rows(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def served(two_level, tmp_path_factory):
    """The module's server over an ONNX artifact, with the model folder it came from, a data split and
    `mmcls predict`'s CSV of that split for the artifact. The last test stops it; stopped here otherwise."""
    from mmcls.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("served")
    tax = read_taxonomy(two_level)
    model = tiny_model_dir(root / "model", categories=two_level)
    artifact = root / "onnx"
    run_main("export", str(model), "--format", "onnx", "--out", str(artifact))
    data = root / "data"
    make_synthetic_dataset(data, 8, 0, 32, seed=2, num_frames=3, image_size=40, categories=tax)
    predicted = root / "predict.csv"
    run_main(
        "predict", str(artifact), "--data-root", str(data), "--out", str(predicted), "--num-workers", "0"
    )
    ports = free_ports(3)
    server = Server(artifact, ports, root / "home")
    try:
        server.wait_ready()
        yield SimpleNamespace(
            server=server,
            ports=ports,
            model=model,
            artifact=artifact,
            data=data,
            predicted=predicted,
            tax=tax,
        )
    finally:
        if server.process.poll() is None:
            server.stop()


@pytest.mark.slow
def test_a_split_over_http_and_grpc_gets_predicts_labels_and_names(served, tmp_path):
    """A whole split with 8 requests in flight, over HTTP and over gRPC: the same labels as `mmcls predict`,
    the class names with --with-names, and requests batched by Triton."""
    before = served.server.metrics()
    grpc_url = f"grpc://127.0.0.1:{served.ports[1]}"
    for protocol, url in (("http", served.server.url), ("grpc", grpc_url)):
        out = tmp_path / f"client_{protocol}.csv"
        run_main(
            "client",
            url,
            "--data-root",
            str(served.data),
            "--out",
            str(out),
            "--concurrency",
            "8",
            "--with-names",
        )
        rows = read_rows(out)
        assert [row[:2] for row in rows] == read_rows(served.predicted)
        assert all(row[2] == served.tax.name(row[1]) for row in rows)
    after = served.server.metrics()
    count = after["nv_inference_count"] - before["nv_inference_count"]
    assert count == 64
    executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    assert executions < count  # requests were batched
    # The load test: one JSON object with the figures (timed after the warm-up; no speed is asserted).
    args = ["--data-root", str(served.data), "--bench", "--concurrency", "4", "--warmup", "2", "--json"]
    figures = json.loads(run_main("client", served.server.url, *args)[0])
    assert figures["videos"] == 32 and figures["concurrency"] == 4 and figures["warmup"] == 2
    assert 0 < figures["p50_ms"] <= figures["p90_ms"] <= figures["p99_ms"] and figures["videos_per_s"] > 0


@pytest.mark.slow
def test_frames_and_an_encoded_video_are_classified_as_predict_does(served, shared_data):
    """JPEG frames: a distribution over the 12 classes, the level-1 parent of the class; input ``video``: the
    probabilities `predict --video` gives for the same bytes (torch and ONNX agree), `client --video` too."""
    from mmcls.deploy.client import classify_video

    tax, url, city = served.tax, served.server.url, shared_data / "cityCC0.mpg"
    answer = classify_video(url, title="标题", ocr="字幕", frames=[jpeg(), jpeg()])
    assert answer.probs.shape == (12,)
    assert abs(float(answer.probs.sum()) - 1.0) < 1e-4
    assert answer.lv1_id == tax.lv1_id(answer.category_id)  # the parent of the predicted category
    assert answer.errors == []

    title = ["--title", "城市街景", "--top-k", "12", "--json", "--device", "cpu"]
    by_backend = {}
    for name, path in (("torch", served.model), ("onnx", served.artifact)):
        [result] = json.loads(run_main("predict", str(path), "--video", str(city), *title)[0])
        by_backend[name] = {row["category_id"]: row["prob"] for row in result["top"]}
    torch_probs, onnx_probs = (np.array([p[c] for c in tax.category_ids]) for p in by_backend.values())
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)
    top = tax.category_ids[int(onnx_probs.argmax())]

    answer = classify_video(url, title="城市街景", video=city.read_bytes())
    assert answer.errors == [] and answer.category_id == top
    assert answer.category_name == tax.name(top) and answer.lv1_id == tax.lv1_id(top)
    np.testing.assert_allclose(answer.probs, onnx_probs, atol=1e-4)
    broken = classify_video(url, title="城市街景", video=b"not a video")
    assert broken.errors == ["video: undecodable video"]
    shown = run_main("client", url, "--video", str(city), "--title", "城市街景")[0]
    assert shown.split("\t")[:2] == [str(city), top] and tax.name(top) in shown


@pytest.mark.slow
def test_bad_requests_get_their_own_400_and_the_server_keeps_serving(served):
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{served.ports[0]}", concurrency=3)
    try:
        good = jpeg()
        answer = client.infer("mmcls", request(frames=[good, b"not a jpeg", b""]))
        assert answer.as_numpy("probs").shape == (1, 12)
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
        # Sent together (the test server waits 20 ms to batch): the bad one is refused, the good ones answered.
        pending = [
            client.async_infer("mmcls", inputs) for inputs in (request(), request(title=b"\xff"), request())
        ]
        with pytest.raises(tritonclient_http.InferenceServerException, match="not valid UTF-8"):
            pending[1].get_result()
        for result in (pending[0], pending[2]):
            assert result.get_result().as_numpy("category_id").shape == (1, 1)
        assert client.infer("mmcls", request(frames=[good])).as_numpy("category_id").shape == (1, 1)
    finally:
        client.close()


def post_infer(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    """Status and JSON answer of a raw POST to the model's infer endpoint (the bodies tritonclient cannot send)."""
    sent = urllib.request.Request(f"{url}/v2/models/mmcls/infer", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(sent, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def malformed_bodies() -> dict[str, tuple[bytes, dict[str, str], str]]:
    """The three bodies Triton's own HTTP front end answers with a 500: (body, headers, what the 400 names)."""
    tensors = request(drop="frames")  # title, asr, ocr as binary tensors
    body, json_size = tritonclient_http.InferenceServerClient.generate_request_body(tensors)
    return {
        "not JSON": (b'{"inputs": [', {}, "request body: not valid JSON"),
        "a JSON array": (b"[1, 2]", {}, "request body: an array, not a JSON object"),
        "a lying binary size": (
            body[:-1],  # one byte of the binary tensors missing
            {"Inference-Header-Content-Length": str(json_size)},
            "binary_data_size add up to",
        ),
    }


def port_is_free(port: int) -> bool:
    try:
        socket.create_server(("127.0.0.1", port)).close()  # SO_REUSEADDR, as the server binds
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_stop_is_clean_and_an_exported_tagging_repository_serves_on_the_same_ports_with_validate_http(
    served, two_level, tmp_path
):
    """SIGTERM: exit 0, the workspace and shared memory gone, the ports free: the repository `mmcls export
    --format triton` writes for a tagging model then loads there as it is, and answers `tags`/`tag_names`.
    That second server runs with `--validate-http`: the three malformed bodies get a 400 naming the fault, a
    gzip body and answer pass through, valid requests are answered after them, and its stop frees both ports."""
    from mmcls.config import Config
    from mmcls.data.categories import load_categories
    from mmcls.data.text import load_tokenizer
    from mmcls.deploy.artifact import load_assets
    from mmcls.models import build_model, save_model_dir
    from mmcls.tagging import choose_thresholds, model_tags, tag_lists

    server = served.server
    status = server.stop()
    assert status == 0, server.output()
    assert "stopped" in server.output()
    assert list(server.home.iterdir()) == []  # the workspace is gone
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(f"mmcls{server.process.pid}_")]

    config = Config.from_yaml("tiny", overrides=["data.task=multilabel", f"data.categories={two_level}"])
    tokenizer = load_tokenizer(config.data.text.tokenizer)
    tagging = tmp_path / "tagging"
    model = build_model(config, vocab_size=len(tokenizer)).eval()
    save_model_dir(tagging, model, config, tokenizer, load_categories(two_level))
    rng = np.random.default_rng(0)  # thresholds as training chooses them (on made-up validation scores)
    probs = rng.random((50, 12))
    choose_thresholds(probs, probs > 0.3, list(read_taxonomy(two_level).category_ids)).save(tagging)
    repo = tmp_path / "repo"
    run_main("export", str(tagging), "--format", "triton", "--out", str(repo))
    again = Server(repo, served.ports, tmp_path / "home", "--validate-http")  # the ports the first server had
    try:
        again.wait_ready()
        for case, (body, headers, message) in malformed_bodies().items():
            status, answer = post_infer(again.url, body, headers)
            assert status == 400 and message in answer["error"], (case, status, answer)
        client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{served.ports[0]}")
        wanted = [tritonclient_http.InferRequestedOutput(name) for name in ("probs", "tags", "tag_names")]
        result = client.infer("mmcls", request(title="城市街景".encode(), frames=[jpeg()]), outputs=wanted)
        compressed = client.infer(
            "mmcls",
            request(title="城市街景".encode(), frames=[jpeg()]),
            outputs=wanted,
            request_compression_algorithm="gzip",
            response_compression_algorithm="gzip",
        )
        client.close()
    finally:
        assert again.stop() == 0, again.output()
    triton_http = re.search(r"Triton's HTTP at 127\.0\.0\.1:(\d+)", again.output())
    assert triton_http, again.output()
    assert port_is_free(served.ports[0]) and port_is_free(int(triton_http[1]))
    np.testing.assert_allclose(compressed.as_numpy("probs"), result.as_numpy("probs"), atol=1e-6)
    assets = load_assets(repo / "mmcls" / "1" / "model")
    ids = list(assets.categories.category_ids)
    probs = result.as_numpy("probs")
    tags = model_tags(assets.folder, assets.config, ids, probs)
    expected_ids, expected_names = tag_lists(tags, ids, [assets.categories.name(c) for c in ids])
    assert tags.any()  # there is something to compare
    assert result.as_numpy("tags").tolist() == expected_ids.tolist()
    assert result.as_numpy("tag_names").tolist() == expected_names.tolist()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["http://10.0.0.1:8000", "--data-root", "{tmp}", "--bench"],
            "runs against 127.0.0.1 or localhost only",
        ),
        (["grpc://example.com:8001", "--data-root", "{tmp}", "--bench"], "not 'example.com'"),
        (
            ["http://127.0.0.1:9", "--data-root", "{tmp}", "--bench", "--out", "{tmp}/x.csv"],
            "writes no predictions",
        ),
        (["http://127.0.0.1:9", "--bench"], "--bench needs --data-root"),
        (
            ["http://127.0.0.1:9", "--data-root", "{tmp}", "--out", "{tmp}/x.csv", "--json"],
            "--json: only with --bench",
        ),
    ],
)
def test_client_bench_settings_are_checked_before_any_request(tmp_path, args, message):
    """A load test never leaves the machine, and its options are refused elsewhere: one line, before work."""
    _, err = run_main("client", *[a.format(tmp=tmp_path) for a in args], expect=2)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
