"""Clients of ``mmcls serve`` (KServe v2 over HTTP or gRPC, through ``tritonclient``).

:func:`classify_video` sends one video (its JPEG frames, or the encoded video file itself: input ``video``,
decoded and sampled on the server); :func:`predict_split_remote` sends a whole split with N requests in flight
and returns what ``mmcls predict`` returns, so the two CSVs can be compared. Frames are sent as the original
JPEG bytes (the server decodes and resizes them), chosen from each zip exactly as the zip frame source chooses
them, and padded with empty elements to the server's frame count so that Triton can batch requests.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from mmcls import names
from mmcls.config import FrameConfig
from mmcls.data.annotations import Record, annotation_path, load_records
from mmcls.data.frames import EncodedZipFramesSource, FrameError
from mmcls.deploy.ports import LOOPBACK
from mmcls.errors import MmclsError

MODEL_NAME = names.TRITON_MODEL


class ClientError(MmclsError, RuntimeError):
    """The server refused a request or could not be reached; names the video and the server's reason."""


@dataclass
class VideoResult:
    category_id: str
    lv1_id: str
    probs: np.ndarray
    errors: list[str]
    category_name: str = ""  # the taxonomy's name of category_id (the id itself where the file has none)
    frame_errors: list[str] = field(default_factory=list)  # error kinds as predict counts them (split only)


class Connection:
    """One ``tritonclient`` client (HTTP or gRPC) plus the served model's frame settings."""

    def __init__(self, url: str, protocol: str | None = None, timeout: float = 60.0):
        parsed = urlparse(url if "://" in url else f"http://{url}")
        self.protocol = protocol or ("grpc" if parsed.scheme == "grpc" else "http")
        self.timeout = timeout
        address = parsed.netloc
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self.module = module
        kwargs = (
            {"network_timeout": timeout, "connection_timeout": timeout} if self.protocol == "http" else {}
        )
        try:
            self.client = module.InferenceServerClient(address, **kwargs)
            config = self.client.get_model_config(MODEL_NAME)
        except Exception as exc:  # tritonclient raises its own exception types and socket errors
            raise ClientError(f"{url}: cannot reach model {MODEL_NAME!r}: {_one_line(exc)}") from None
        if self.protocol == "grpc":
            config = config.config
            params = {key: value.string_value for key, value in config.parameters.items()}
        else:
            params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.max_frames = int(params.get("max_frames", 8))
        self.frame_input = params.get("frame_input", "pixels")

    def infer(
        self,
        title: str,
        asr: str,
        ocr: str,
        frames: Sequence[bytes] = (),
        name: str = "video",
        *,
        video: bytes | None = None,
    ) -> VideoResult:
        """Classify one video from its JPEG ``frames`` or its encoded ``video`` file (not both); ``ocr`` is the
        annotation's JSON list or plain text; ``name`` names the video in errors."""
        inputs = [
            self._bytes_input(input_name, [text.encode("utf-8")])
            for input_name, text in zip(names.SERVED_TEXT_INPUTS, (title, asr, ocr))
        ]
        if video is not None:
            if frames:
                raise ClientError(f"video {name}: send its frames or its video file, not both")
            if self.frame_input != "pixels":
                raise ClientError(f"video {name}: the served model takes frame features, not video files")
            inputs.append(self._bytes_input(names.SERVED_VIDEO, [bytes(video)]))
        else:
            padded = list(frames) + [b""] * max(0, self.max_frames - len(frames))
            inputs.append(self._bytes_input(names.SERVED_FRAMES, padded))
        outputs = [self.module.InferRequestedOutput(n) for n in names.SERVED_OUTPUTS]
        try:
            kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
            result = self.client.infer(MODEL_NAME, inputs, outputs=outputs, **kwargs)
        except Exception as exc:
            raise ClientError(f"video {name}: the server answered: {_one_line(exc)}") from None
        return VideoResult(
            category_id=_first(result.as_numpy(names.SERVED_CATEGORY_ID)),
            category_name=_first(result.as_numpy(names.SERVED_CATEGORY_NAME)),
            lv1_id=_first(result.as_numpy(names.SERVED_LV1_ID)),
            probs=result.as_numpy(names.SERVED_PROBS)[0],
            errors=json.loads(_first(result.as_numpy(names.SERVED_ERRORS))),
        )

    def _bytes_input(self, name: str, values: list[bytes]) -> Any:
        array = np.array([values], dtype=np.object_)
        tensor = self.module.InferInput(name, list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array)
        return tensor

    def close(self) -> None:
        self.client.close()


def classify_video(
    url: str,
    *,
    title: str = "",
    asr: str = "",
    ocr: str = "",
    frames: Sequence[bytes] = (),
    video: bytes | None = None,
    timeout: float = 60.0,
) -> VideoResult:
    """One video to a running ``mmcls serve``: its text fields and its JPEG ``frames`` or its encoded ``video``
    file (e.g. an mp4's bytes, decoded and sampled on the server) -> category, name and probabilities."""
    connection = Connection(url, timeout=timeout)
    try:
        return connection.infer(title, asr, ocr, list(frames), video=video)
    finally:
        connection.close()


def frame_reader(frames_root: Path, max_frames: int) -> EncodedZipFramesSource:
    """The reader ``predict`` uses for a split's frame zips, handing on the sampled JPEGs undecoded.

    The same checks as ``predict`` (regular files only: a symlink to ``/dev/zero`` or a FIFO is refused; the
    size, member and pixel limits of ``data.frames``; members without an image suffix tried when no member has
    one) and the same frames (evaluation sampling). The server decodes what is sent.
    """
    return EncodedZipFramesSource(FrameConfig(max_frames=max_frames), frames_root)


def read_frame_bytes(source: EncodedZipFramesSource, video_id: str) -> tuple[list[bytes], list[str]]:
    """``(JPEG frames, error kinds)`` of one video: ``([], [kind])`` for a zip predict could not use either
    (the server then classifies from the text, as ``predict`` falls back to text)."""
    try:
        clip = source.read(video_id)
    except FrameError as exc:
        return [], [exc.kind]
    return list(clip.frames.data), list(clip.errors)


def frame_error_kinds(local: list[str], sent: int, server_errors: list[str]) -> list[str]:
    """The error kinds ``predict`` counts for one video: the client's (zip, member, header) and the frames the
    server could not decode (``bad_image``); a video none of whose sent frames decoded counts once, by its first
    problem, as predict's ``none of the sampled frames could be read``."""
    failed = sum(1 for error in server_errors if error.startswith(f"{names.SERVED_FRAMES}["))
    if sent and failed >= sent:
        return [local[0] if local else "bad_image"]
    return [*local, *["bad_image"] * failed]


def ocr_json(record: Record) -> str:
    """A record's OCR lines as the served input ``ocr`` takes them: the annotation's JSON list."""
    return json.dumps([{"time": t, "text": s} for t, s in record.ocr], ensure_ascii=False)


def predict_split_remote(
    url: str,
    data_root: str | Path,
    split: str = "test",
    *,
    concurrency: int = 8,
    protocol: str | None = None,
    timeout: float = 60.0,
) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """``(ids, category_ids, frame errors by id)`` for every record of ``split``, in annotation order."""
    results = classify_split_remote(
        url, data_root, split, concurrency=concurrency, protocol=protocol, timeout=timeout
    )
    errors = {r.id: res.errors for r, res in results if res.errors}
    return [r.id for r, _ in results], [res.category_id for _, res in results], errors


def classify_split_remote(
    url: str,
    data_root: str | Path,
    split: str = "test",
    *,
    concurrency: int = 8,
    protocol: str | None = None,
    timeout: float = 60.0,
) -> list[tuple[Record, VideoResult]]:
    """Every record of ``split`` with the server's answer, in annotation order (requests run concurrently)."""
    return list(
        iter_classify_split_remote(
            url, data_root, split, concurrency=concurrency, protocol=protocol, timeout=timeout
        )
    )


def iter_classify_split_remote(
    url: str,
    data_root: str | Path,
    split: str = "test",
    *,
    concurrency: int = 8,
    protocol: str | None = None,
    timeout: float = 60.0,
) -> Iterator[tuple[Record, VideoResult]]:
    """:func:`classify_split_remote` as a stream: at most ``4 * concurrency`` videos are read or in flight at
    once, so a million-video split costs the memory of a few dozen videos, whatever its size. The records are
    read and the server is asked for its model now (errors are raised here); the videos when iterated."""
    records = load_records(annotation_path(data_root, split))
    reader, _ = _served_frame_reader(url, protocol, timeout, data_root, split)
    local = threading.local()

    def classify(record: Record) -> VideoResult:
        if not hasattr(local, "connection"):
            local.connection = Connection(url, protocol, timeout)
        frames, local_errors = read_frame_bytes(reader, record.id)
        result = local.connection.infer(record.title, record.asr, ocr_json(record), frames, name=record.id)
        result.frame_errors = frame_error_kinds(local_errors, len(frames), result.errors)
        return result

    return _in_order(classify, records, concurrency)


def _served_frame_reader(
    url: str, protocol: str | None, timeout: float, data_root: str | Path, split: str
) -> tuple[EncodedZipFramesSource, str]:
    """The split's frame reader, sized to the served model's frame count, and the protocol in use (asked of the
    server once); a model that takes frame features is refused, since this client sends JPEG frames."""
    probe = Connection(url, protocol, timeout)
    try:
        if probe.frame_input != "pixels":
            raise ClientError(f"{url}: the served model takes frame features; this client sends JPEG frames")
        return frame_reader(Path(data_root) / names.FRAMES_DIR / split, probe.max_frames), probe.protocol
    finally:
        probe.close()


def _in_order(classify, records: list[Record], concurrency: int) -> Iterator[tuple[Record, VideoResult]]:
    """``(record, classify(record))`` in order, ``concurrency`` threads, a bounded window of pending videos."""
    window = 4 * max(1, concurrency)
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        pending: deque = deque()
        for record in records:
            pending.append((record, pool.submit(classify, record)))
            if len(pending) >= window:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _first(values: np.ndarray) -> str:
    value = values.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------- load generator
LOOPBACK_HOSTS = (LOOPBACK, "localhost")


def check_loopback(url: str) -> str:
    """The host of ``url`` if it is this machine's loopback; a load test never goes anywhere else."""
    host = urlparse(url if "://" in url else f"http://{url}").hostname or ""
    if host not in LOOPBACK_HOSTS:
        raise ClientError(f"{url}: --bench runs against {' or '.join(LOOPBACK_HOSTS)} only, not {host!r}")
    return host


@dataclass
class _Request:
    name: str
    title: str
    asr: str
    ocr: str
    frames: list[bytes]


def bench_split_remote(
    url: str,
    data_root: str | Path,
    split: str = "test",
    *,
    concurrency: int = 8,
    protocol: str | None = None,
    timeout: float = 60.0,
    warmup: int | None = None,
    rounds: int = 1,
) -> dict[str, Any]:
    """``mmcls client --bench``: videos/s and latency percentiles of the server under ``concurrency`` clients.

    The split's frames are read from the zips once, before timing (``read_ms_per_video`` reports that cost),
    so the figures are the server's and the request encoding's, not the disk's. ``warmup`` requests (default:
    two per client) run untimed first: connections opened, the model's first executions done. Then every
    video is sent ``rounds`` times by ``concurrency`` threads, each with its own connection, one request in
    flight per thread; latency is per request, from encoding to decoded answer.
    """
    import os
    import time

    check_loopback(url)
    records = load_records(annotation_path(data_root, split))
    if not records:
        raise ClientError(f"{data_root}: split {split!r} has no records")
    reader, protocol = _served_frame_reader(url, protocol, timeout, data_root, split)
    start = time.perf_counter()
    requests = [
        _Request(r.id, r.title, r.asr, ocr_json(r), read_frame_bytes(reader, r.id)[0]) for r in records
    ]
    read_s = time.perf_counter() - start
    warmup = 2 * concurrency if warmup is None else warmup
    timed = requests * rounds
    with _LoadPool(url, protocol, timeout, concurrency) as pool:
        pool.send_all([requests[i % len(requests)] for i in range(warmup)])
        load_before = os.getloadavg()[0]
        start, cpu_start = time.perf_counter(), time.process_time()
        latencies = pool.send_all(timed)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    p50, p90, p99 = np.percentile(np.asarray(latencies) * 1000.0, [50, 90, 99])
    return {
        "videos_per_s": round(len(timed) / wall, 2),
        "p50_ms": round(float(p50), 2),
        "p90_ms": round(float(p90), 2),
        "p99_ms": round(float(p99), 2),
        "concurrency": concurrency,
        "videos": len(timed),
        "requests": len(timed),
        "protocol": protocol,
        "warmup": warmup,
        "seconds": round(wall, 3),
        "read_ms_per_video": round(1000.0 * read_s / len(requests), 3),
        "client_cpu_ms_per_video": round(1000.0 * cpu / len(timed), 3),
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


class _LoadPool:
    """``concurrency`` threads, each with its own connection for its whole life (a ``tritonclient`` HTTP
    client belongs to the thread that made it), all connected before anything is timed."""

    def __init__(self, url: str, protocol: str, timeout: float, concurrency: int):
        self.concurrency = concurrency
        self.local = threading.local()
        self.lock = threading.Lock()

        def connect() -> None:
            self.local.connection = Connection(url, protocol, timeout)

        self.pool = ThreadPoolExecutor(max_workers=concurrency, initializer=connect)
        self._on_every_thread(lambda: None)  # all threads started (and connected) before anything is timed

    def _on_every_thread(self, action) -> None:
        """``action()`` once on each thread: every thread holds a barrier until all have run it."""
        barrier = threading.Barrier(self.concurrency)

        def run() -> None:
            action()
            barrier.wait(120)

        for future in [self.pool.submit(run) for _ in range(self.concurrency)]:
            future.result()

    def __enter__(self) -> _LoadPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._on_every_thread(lambda: self.local.connection.close())
        finally:
            self.pool.shutdown(wait=True)

    def send_all(self, requests: list[_Request]) -> list[float]:
        """Every request once, one in flight per thread; the latencies (seconds)."""
        import time

        queue = iter(requests)
        latencies: list[float] = []

        def drain() -> None:
            connection = self.local.connection
            while True:
                with self.lock:
                    request = next(queue, None)
                if request is None:
                    return
                start = time.perf_counter()
                connection.infer(request.title, request.asr, request.ocr, request.frames, name=request.name)
                elapsed = time.perf_counter() - start
                with self.lock:
                    latencies.append(elapsed)

        for future in [self.pool.submit(drain) for _ in range(self.concurrency)]:
            future.result()  # a refused request raises its ClientError here
        return latencies
