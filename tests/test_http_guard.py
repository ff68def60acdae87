"""`mmcls serve --validate-http`'s check of infer bodies, in-process (no server): the bodies `tritonclient` builds
pass, the malformed ones Triton's HTTP front end answers with a 500 are refused with a message naming the fault.
The pass-through itself, in front of a real Triton, is tested in test_deploy_server.py."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

from mmcls.deploy import http_guard
from mmcls.deploy.http_guard import INFER_PATH, BadRequest, check_infer_request

tritonclient_http = pytest.importorskip("tritonclient.http")


def client_body(binary: bool = True) -> tuple[bytes, str | None]:
    """An infer body as `tritonclient` sends it (binary tensors by default) and its header-length header."""
    inputs = []
    for name, values in (("title", [b"t"]), ("frames", [b"jpeg", b""])):
        tensor = tritonclient_http.InferInput(name, [1, len(values)], "BYTES")
        tensor.set_data_from_numpy(np.array([values], dtype=np.object_), binary_data=binary)
        inputs.append(tensor)
    body, json_size = tritonclient_http.InferenceServerClient.generate_request_body(inputs)
    return body, None if json_size is None else str(json_size)


def test_the_bodies_tritonclient_sends_pass():
    for binary in (True, False):
        body, length = client_body(binary)
        check_infer_request(body, length)
    body, length = client_body()
    check_infer_request(gzip.compress(body), length, "gzip")  # checked as Triton reads it: inflated
    check_infer_request(zlib.compress(body), length, "deflate")
    check_infer_request(b'{"inputs": []}', None)  # Triton's own 400 (no inputs), not a malformed body


def test_a_gzip_bomb_is_refused_without_inflating_it_whole(monkeypatch):
    monkeypatch.setattr(http_guard, "MAX_BODY_BYTES", 1000)
    body = b'{"inputs": []}' + b" " * 2000  # valid JSON, but it inflates past the bound
    check_infer_request(gzip.compress(body[:900]), None, "gzip")
    with pytest.raises(BadRequest, match="inflates to more than 1000 bytes"):
        check_infer_request(gzip.compress(body), None, "gzip")


def lying_size(body: bytes, length: str) -> bytes:
    """The body with the JSON header claiming one more binary byte for input 0 (same header length)."""
    header = json.loads(body[: int(length)])
    header["inputs"][0]["parameters"]["binary_data_size"] += 1
    return json.dumps(header).encode()


BODY, LENGTH = client_body()
CASES = {
    "not JSON": (b'{"inputs": [', None, "request body: not valid JSON"),
    "not UTF-8": (b'{"inputs": "\xff"}', None, "request body: not valid JSON"),
    "a JSON array": (b"[1, 2]", None, "request body: an array, not a JSON object"),
    "a JSON string": (b'"inputs"', None, "request body: a string, not a JSON object"),
    "no inputs list": (b'{"inputs": {"name": "title"}}', None, "'inputs' must be a list"),
    "an input without a name": (b'{"inputs": [{"shape": [1]}]}', None, "inputs[0]: must be an object"),
    "header length not a number": (BODY, "12a", "Inference-Header-Content-Length: '12a' is not"),
    "header length negative": (BODY, "-1", "Inference-Header-Content-Length: '-1' is not"),
    "header length past the body": (BODY, str(len(BODY) + 1), f"larger than the {len(BODY)}-byte body"),
    "header length cuts the JSON": (BODY, str(int(LENGTH) - 3), "request body: not valid JSON"),
    "binary bytes missing": (BODY[:-2], LENGTH, "bytes follow the"),
    "binary bytes without a header length": (BODY, None, "request body: not valid JSON"),
    "binary size too large": (None, None, "add up to"),
    "binary size not a number": (
        b'{"inputs": [{"name": "t", "parameters": {"binary_data_size": "5"}}]}',
        None,
        "inputs[0] ('t'): binary_data_size '5' is not a size",
    ),
    "gzip that is not": (BODY, LENGTH, "request body: not valid gzip data"),
    "parameters not an object": (
        b'{"inputs": [{"name": "t", "parameters": []}]}',
        None,
        "'parameters' must be",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_malformed_bodies_are_refused_with_what_is_wrong(case):
    body, length, message = CASES[case]
    if case == "binary size too large":
        header = lying_size(BODY, LENGTH)
        body, length = header + BODY[int(LENGTH) :], str(len(header))
    with pytest.raises(BadRequest) as caught:
        check_infer_request(body, length, "gzip" if case == "gzip that is not" else None)
    assert message in str(caught.value), str(caught.value)


def test_only_infer_posts_are_checked():
    for path in ("/v2/models/mmcls/infer", "/v2/models/mmcls/versions/1/infer"):
        assert INFER_PATH.fullmatch(path)
    for path in (
        "/v2/models/mmcls/ready",
        "/v2/models/mmcls",
        "/v2/models/mmcls/infer/x",
        "/v2/repository/index",
    ):
        assert not INFER_PATH.fullmatch(path)


def test_the_guard_names_a_port_taken_since_the_check_answers_without_triton_and_frees_its_port(monkeypatch):
    """In-process, no Triton behind it: a public port taken between `serve`'s port check and the guard's bind is
    the same one line; a body over its size bound gets a 413 and a malformed one a 400, before any forwarding; a
    request it cannot forward gets a
    502 in Triton's error shape; after stop the port is free again."""
    import socket
    import urllib.error
    import urllib.request

    from mmcls.deploy.ports import free_ports
    from mmcls.deploy.server import ServeError, ServeOptions, start_guard

    port, nothing_there = free_ports(2)
    upstream = ("127.0.0.1", nothing_there)
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        with pytest.raises(ServeError, match=f"--http-port {taken}: 127.0.0.1:{taken} is not free"):
            start_guard(ServeOptions(http_port=taken), upstream)

    def status(path: str, body: bytes | None = None) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body)):
                return 200, ""
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())["error"]

    monkeypatch.setattr(http_guard, "MAX_BODY_BYTES", 1000)
    guard = start_guard(ServeOptions(http_port=port), upstream)
    try:
        assert status("/v2/models/mmcls/infer", b" " * 1001) == (413, "request body: larger than 1000 bytes")
        assert status("/v2/models/mmcls/infer", b"[1, 2]") == (
            400,
            "request body: an array, not a JSON object",
        )
        code, message = status("/v2/health/ready")
        assert code == 502 and "Triton's HTTP front end did not answer" in message
    finally:
        guard.stop()
    socket.create_server(("127.0.0.1", port)).close()  # bound as Triton and the guard bind: free again
