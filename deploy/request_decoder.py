"""Server-side preprocessing: one inference request (text fields + JPEG bytes or a video file) -> one sample.

The text goes through the core's :class:`~mmcls.data.text.TextEncoder` with a :class:`Record` built from the
request, the frames through :func:`mmcls.data.frames.decode_image_clip`, and an encoded video (input ``video``,
e.g. an mp4's bytes) through the video file source's own sampling and resizing
(:meth:`~mmcls.data.frames.VideoFileSource.read_video`), so the server feeds the model exactly what
``mmcls predict`` (``--video``) would for the same video. Problems the client must fix (non-UTF-8 text, too many
frames, frames and a video together, a video over the size or duration limit, an empty request, a malformed
OCR list, wrong feature shape) raise :class:`RequestError`, which the server answers with a 400 naming the
input; an undecodable JPEG or video is not fatal: the video is classified from its other frames (or its text
alone), and the response's ``errors`` output names the frame or the video.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmcls import names
from mmcls.data.annotations import Record
from mmcls.data.frames import FrameError, VideoFileSource, decode_image_clip, open_video, video_seconds
from mmcls.data.text import TextEncoder
from mmcls.deploy.artifact import Assets
from mmcls.errors import MmclsError

TEXT_INPUTS = names.SERVED_TEXT_INPUTS


class RequestError(MmclsError, ValueError):
    """A request the server refuses (HTTP 400): the message names the input and the problem."""


@dataclass(frozen=True)
class VideoLimits:
    """What the server accepts as input ``video`` (``mmcls serve --max-video-bytes/--max-video-seconds``).

    The bytes are checked before decoding; the duration (frames / frame rate, from the container) after
    opening and before any frame is decoded, so a long video costs no decoding time.
    """

    max_bytes: int = 32 * 1024 * 1024
    max_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise RequestError(f"max_video_bytes={self.max_bytes}: must be at least 1")
        if not self.max_seconds > 0:
            raise RequestError(f"max_video_seconds={self.max_seconds}: must be above 0")


class RequestDecoder:
    """Turns the per-request input arrays into the sample dicts that ``collate_batch`` stacks.

    :meth:`decode` may run in several threads at once (the server decodes a batch's videos in a pool): the
    tokenizer, which changes its own truncation state on every call, is used by one thread at a time.
    """

    def __init__(self, assets: Assets, video_limits: VideoLimits | None = None):
        frames = assets.config.data.frames
        self.text_encoder = TextEncoder(assets.tokenizer, assets.config.data.text)
        self._tokenizer_lock = threading.Lock()
        self.pad_token_id = self.text_encoder.pad_token_id
        self.frame_input = assets.frame_input
        self.max_frames = frames.max_frames
        self.image_size = frames.image_size
        self.feature_dim = frames.feature_dim
        self.video_limits = video_limits or VideoLimits()
        self.video_source = VideoFileSource(frames, video_dir=None)

    @property
    def frames_input_name(self) -> str:
        return names.SERVED_FRAME_FEATS if self.frame_input == "features" else names.SERVED_FRAMES

    @property
    def required_inputs(self) -> tuple[str, ...]:
        """The inputs every request must carry: the text fields, and the features of a feature model."""
        return (*TEXT_INPUTS, names.SERVED_FRAME_FEATS) if self.frame_input == "features" else TEXT_INPUTS

    @property
    def input_names(self) -> tuple[str, ...]:
        """The inputs a request may carry: text, then frames (or features); a pixel model also takes a video."""
        frames = (
            (self.frames_input_name,)
            if self.frame_input == "features"
            else (names.SERVED_FRAMES, names.SERVED_VIDEO)
        )
        return (*TEXT_INPUTS, *frames)

    def decode(self, inputs: dict[str, np.ndarray], index: int = 0) -> dict[str, Any]:
        """One request's inputs (without the batch dimension) -> a sample; raises :class:`RequestError`."""
        texts = {name: _text(inputs.get(name), name) for name in TEXT_INPUTS}
        ocr = _parse_ocr(texts["ocr"])
        video = _video_bytes(inputs.get(names.SERVED_VIDEO))
        if self.frame_input == "features":
            frames, mask, errors, count = self._features(inputs.get(names.SERVED_FRAME_FEATS))
        elif video is not None:
            if _images(inputs.get(names.SERVED_FRAMES)):
                raise RequestError("inputs 'frames' and 'video': send the frames or the video file, not both")
            frames, mask, errors, count = self._video(video)
        else:
            frames, mask, errors, count = self._images(inputs.get(names.SERVED_FRAMES))
        if count == 0 and not (texts["title"].strip() or texts["asr"].strip() or ocr):
            raise RequestError("empty request: no title, asr, ocr text and no frames")
        record = Record(id=f"request-{index}", title=texts["title"], asr=texts["asr"], ocr=ocr)
        with self._tokenizer_lock:
            input_ids = self.text_encoder.encode(record)
        return {
            "index": index,
            "id": record.id,
            names.INPUT_IDS: torch.tensor(input_ids, dtype=torch.long),
            names.FRAMES: frames,
            names.FRAME_MASK: mask,
            "label": -1,
            "frame_errors": errors,
        }

    def _video(self, data: bytes) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
        """An encoded video file: opened from memory, checked against the limits, sampled as the model's
        config says (frame count, evaluation sampling, size); undecodable -> no frames and an error."""
        limits = self.video_limits
        if len(data) > limits.max_bytes:
            raise RequestError(f"input 'video': {len(data)} bytes, at most {limits.max_bytes}")
        try:
            reader = open_video(data, names.SERVED_VIDEO)
            seconds = video_seconds(reader)
            if seconds > limits.max_seconds:
                raise RequestError(f"input 'video': {seconds:.1f} s long, at most {limits.max_seconds:g} s")
            clip = self.video_source.read_video(reader, names.SERVED_VIDEO)
        except FrameError:
            clip = self.video_source.empty()
            clip.errors = [f"{names.SERVED_VIDEO}: undecodable video"]
        assert isinstance(clip.frames, torch.Tensor)  # a video source decodes: never encoded JPEG bytes
        return clip.frames, clip.mask, list(clip.errors), 1

    def _images(self, values: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
        images = _images(values)
        if len(images) > self.max_frames:
            raise RequestError(f"input 'frames': {len(images)} frames, at most {self.max_frames} per video")
        pixels, failed = decode_image_clip(images, self.image_size)
        frames = torch.zeros((self.max_frames, 3, self.image_size, self.image_size), dtype=torch.uint8)
        mask = torch.zeros(self.max_frames, dtype=torch.bool)
        frames[: len(pixels)] = pixels
        mask[: len(pixels)] = True
        errors = [f"frames[{i}]: undecodable image" for i in failed]
        return frames, mask, errors, len(images)

    def _features(self, values: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
        frames = torch.zeros((self.max_frames, self.feature_dim), dtype=torch.float32)
        mask = torch.zeros(self.max_frames, dtype=torch.bool)
        if values is None or values.size == 0:
            return frames, mask, [], 0
        values = np.asarray(values, dtype=np.float32).reshape(-1, values.shape[-1])
        if values.shape[1] != self.feature_dim:
            raise RequestError(f"input 'frame_feats': width {values.shape[1]}, expected {self.feature_dim}")
        if len(values) > self.max_frames:
            raise RequestError(
                f"input 'frame_feats': {len(values)} frames, at most {self.max_frames} per video"
            )
        if not np.isfinite(values).all():
            raise RequestError("input 'frame_feats': non-finite values")
        frames[: len(values)] = torch.from_numpy(values)
        mask[: len(values)] = True
        return frames, mask, [], len(values)


def _images(values: np.ndarray | None) -> list[bytes]:
    """The JPEG elements of input ``frames``; empty elements are padding (clients pad to a common frame count
    so that Triton can batch requests)."""
    return [bytes(v) for v in (values.reshape(-1) if values is not None else []) if len(v)]


def _video_bytes(value: np.ndarray | None) -> bytes | None:
    """The encoded video of input ``video`` (one BYTES element); None when absent or empty."""
    if value is None or value.size == 0:
        return None
    raw = value.reshape(-1)[0]
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    return data or None


def _text(value: np.ndarray | None, name: str) -> str:
    if value is None or value.size == 0:
        return ""
    raw = value.reshape(-1)[0]
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"input {name!r}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _parse_ocr(text: str) -> list[tuple[float, str]]:
    """The annotation's OCR JSON list (``[{"time": t, "text": s}, ...]``) or plain text (one line at time 0)."""
    stripped = text.strip()
    if not stripped:
        return []
    if not stripped.startswith("["):
        return [(0.0, stripped)]
    try:
        lines = json.loads(stripped)
        pairs = [(float(line.get("time", 0.0)), str(line["text"])) for line in lines]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RequestError(f"input 'ocr': not a JSON list of {{'time', 'text'}} objects: {exc}") from None
    return sorted(pairs, key=lambda pair: pair[0])  # stable, as the annotation reader keeps equal times
