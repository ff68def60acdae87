"""``mmcls serve --validate-http``: a validating pass-through in front of Triton's own HTTP front end.

Triton's HTTP front end (2.51) answers malformed infer bodies with a 500: one that is not valid JSON, a JSON
value that is not an object, an object without an ``inputs`` list (or with a ``binary_data_size`` that is not an
integer), and binary tensors whose ``Inference-Header-Content-Length`` does not end at the end of the JSON
header; no Triton setting changes that (BENCHMARKS.md). This front end listens on the public HTTP port,
answers those with a 400 in Triton's own error shape (``{"error": "..."}``) and forwards everything else
unchanged to Triton's HTTP port on loopback, over a pool of kept-alive connections. It reads each body whole
and parses the JSON header once more, which is why it is opt-in: 0.35-0.44 ms of CPU per request on the 2-core
box (BENCHMARKS.md). gRPC does not go through it.

It runs an asyncio loop in a thread of the ``mmcls serve`` process (:class:`HttpGuard`); the validation itself
is :func:`check_infer_request`, a pure function.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from mmcls.errors import MmclsError

#: The KServe v2 infer endpoint, the one request kind whose body Triton parses.
INFER_PATH = re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?/infer")
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Request headers forwarded to Triton (the others are hop-by-hop or set by the connection pool) and response
#: headers passed back; bodies pass as they are both ways (compressed ones stay compressed).
REQUEST_HEADERS = ("Content-Type", HEADER_LENGTH, "Content-Encoding", "Accept-Encoding")
RESPONSE_HEADERS = ("Content-Type", HEADER_LENGTH, "Content-Encoding")
#: The largest body the guard reads (413 past it), and the most a compressed infer body may inflate to (400):
#: far above any real request (frames are JPEG bytes, a video is refused by the model past
#: ``--max-video-bytes``, 32 MiB by default), and a bound on what one request can make the serve process hold.
MAX_BODY_BYTES = 256 * 2**20
#: The app's pool of kept-alive connections to Triton.
SESSION = web.AppKey("session", aiohttp.ClientSession)


class BadRequest(MmclsError, ValueError):
    """A malformed infer request: the message names what is wrong (answered with a 400)."""


def check_infer_request(body: bytes, header_length: str | None, encoding: str | None = None) -> None:
    """Refuse (:class:`BadRequest`) an infer body that Triton's HTTP front end would answer with a 500.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (``None``: the whole body is JSON),
    ``encoding`` the ``Content-Encoding`` (Triton inflates a ``gzip`` or ``deflate`` body before reading it).
    Checked: the header length, the JSON header (an object with an ``inputs`` list of objects, each with a
    string ``name``), and that the inputs' ``binary_data_size`` add up to the bytes after the JSON header.
    Everything Triton refuses itself (unknown inputs, dtypes, shapes, ...) is left to Triton.
    """
    if encoding in ("gzip", "deflate"):
        body = _inflate(body, encoding)
    json_length = len(body)
    if header_length is not None:
        text = header_length.strip()
        if not (text.isascii() and text.isdigit()):
            raise BadRequest(f"{HEADER_LENGTH}: {header_length!r} is not a non-negative integer")
        json_length = int(text)
        if json_length > len(body):
            raise BadRequest(f"{HEADER_LENGTH}: {json_length} is larger than the {len(body)}-byte body")
    try:
        header = json.loads(body[:json_length])
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequest(f"request body: not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(header), "a number"
        )
        raise BadRequest(f"request body: {kind}, not a JSON object")
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise BadRequest("request body: 'inputs' must be a list of input objects")
    binary_total = sum(_binary_size(index, tensor) for index, tensor in enumerate(inputs))
    if binary_total != len(body) - json_length:
        raise BadRequest(
            f"the inputs' binary_data_size add up to {binary_total} bytes, but {len(body) - json_length} "
            f"bytes follow the {json_length}-byte JSON header"
        )


def _inflate(body: bytes, encoding: str) -> bytes:
    """The inflated copy of a compressed body, refused past :data:`MAX_BODY_BYTES` (a gzip bomb stops there)."""
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # a gzip or a zlib header, as Triton's zlib
    try:
        inflated = inflater.decompress(body, MAX_BODY_BYTES)
    except zlib.error as exc:
        raise BadRequest(f"request body: not valid {encoding} data ({exc})") from None
    if inflater.unconsumed_tail:
        raise BadRequest(f"request body: inflates to more than {MAX_BODY_BYTES} bytes ({encoding})")
    return inflated


def _binary_size(index: int, tensor: Any) -> int:
    """``binary_data_size`` of input ``index`` (0 without one), refused unless a non-negative integer."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise BadRequest(f"inputs[{index}]: must be an object with a string 'name'")
    parameters = tensor.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest(f"inputs[{index}] ({tensor['name']!r}): 'parameters' must be an object")
    size = parameters.get("binary_data_size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(f"inputs[{index}] ({tensor['name']!r}): binary_data_size {size!r} is not a size")
    return size


def _error(status: int, message: str) -> web.Response:
    """An error in the shape Triton answers its own: ``{"error": "..."}``."""
    return web.json_response({"error": message}, status=status)


def make_app(upstream: str) -> web.Application:
    """The pass-through: infer bodies checked, every request forwarded to ``upstream`` (``http://host:port``)."""

    async def open_session(app: web.Application) -> AsyncIterator[None]:
        # One pool of kept-alive connections; no timeout of its own (a client waits as long as it chooses).
        # Bodies pass as they are: no decompression of responses, no Accept-Encoding the client did not send.
        app[SESSION] = session = aiohttp.ClientSession(
            upstream, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        )  # fmt: skip
        yield
        await session.close()

    async def forward(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body: larger than {MAX_BODY_BYTES} bytes")
        if request.method == "POST" and INFER_PATH.fullmatch(request.path):
            try:
                check_infer_request(
                    body, request.headers.get(HEADER_LENGTH), request.headers.get("Content-Encoding")
                )
            except BadRequest as exc:
                return _error(400, str(exc))
        headers = {name: request.headers[name] for name in REQUEST_HEADERS if name in request.headers}
        try:
            async with request.app[SESSION].request(
                request.method, request.path_qs, data=body, headers=headers
            ) as answer:
                payload = await answer.read()
                passed = {name: answer.headers[name] for name in RESPONSE_HEADERS if name in answer.headers}
                return web.Response(status=answer.status, body=payload, headers=passed)
        except aiohttp.ClientError as exc:
            return _error(502, f"Triton's HTTP front end did not answer ({exc})")

    # aiohttp's default limit (1 MiB) would refuse real videos; Triton 2.51's HTTP front end has none at all.
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.cleanup_ctx.append(open_session)
    app.router.add_route("*", "/{path:.*}", forward)
    return app


class HttpGuard:
    """:func:`make_app` serving ``host:port`` from an asyncio loop in a daemon thread, until :meth:`stop`."""

    def __init__(self, host: str, port: int, upstream: str) -> None:
        self.host, self.port = host, port
        # auto_decompress off: a compressed body is forwarded as it came (check_infer_request inflates a copy).
        self._runner = web.AppRunner(make_app(upstream), access_log=None, auto_decompress=False)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mmcls-http-guard", daemon=True)

    def start(self) -> None:
        """Bind the port (an ``OSError`` if it is taken) and start answering."""
        self._thread.start()
        try:
            self._run(self._runner.setup())
            self._run(web.TCPSite(self._runner, self.host, self.port, shutdown_timeout=1.0).start())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Close the port and the connection pool, then end the thread (requests in flight get 1 s)."""
        if self._thread.is_alive():
            self._run(self._runner.cleanup())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()
