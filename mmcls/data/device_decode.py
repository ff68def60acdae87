"""JPEG frames decoded on the device, a whole batch per call (``data.frames.decoder: cuda``).

Why: at 1,000+ videos/s and 8 frames per video a GPU needs 8,000+ decoded JPEGs per second, more than the
DataLoader workers of a 16-core machine decode with PIL. With ``decoder: cuda`` the workers only read, check
and sample the zips (:class:`~mmcls.data.frames.EncodedZipFramesSource`); the batch's JPEGs are decoded by
nvJPEG in one ``torchvision.io.decode_jpeg(list, device="cuda")`` call, then centre-cropped and resized on
the device.

The flow: a worker's :class:`~mmcls.data.frames.EncodedFrames` per sample -> ``collate_batch`` ->
:class:`EncodedFrameBatch` under ``"frames"`` -> :func:`decode_batch` in the main process (called by
``mmcls.engine.prefetch``, on the copy stream) -> the usual uint8 ``[B, T, 3, S, S]`` on the device.

Same as the PIL path: frame sampling, the zip safety checks and the header pixel limit (both in the worker),
shorter side to ``S`` then centre crop, an undecodable frame skipped and counted as ``bad_image``, the
``on_error`` policy when no frame of a video decodes. Different: the resampling is torch's antialiased
bicubic (pixels differ from PIL's by a few levels), and JPEGs are decoded at full size (no reduced-DCT draft).
A frame nvJPEG refuses (a PNG in the zip, a CMYK JPEG) is decoded by PIL on the host instead.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmcls.data.frames import EncodedFrames, FrameError

__all__ = ["EncodedFrameBatch", "decode_batch", "fit_square"]


@dataclass
class EncodedFrameBatch:
    """What ``collate_batch`` puts under ``"frames"`` when the samples' frames are still encoded."""

    videos: list[EncodedFrames]

    def __len__(self) -> int:
        return len(self.videos)


def decode_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with its :class:`EncodedFrameBatch` decoded: ``frames`` uint8 ``[B, T, 3, S, S]`` on ``device``.

    ``frame_mask`` keeps only the frames that decoded (the decoded ones first, as the PIL path packs them),
    ``frame_errors`` counts one ``bad_image`` per skipped frame. A video none of whose frames decode follows its
    ``on_error``: ``text_only`` (empty mask, counted once), ``drop`` (its row leaves every per-sample entry of
    the batch; counted in ``dropped``) or ``raise`` (:class:`FrameError` naming the zip).
    """
    encoded: EncodedFrameBatch = batch["frames"]
    videos = encoded.videos
    size = videos[0].image_size if videos else 1
    max_frames = videos[0].max_frames if videos else 0
    flat = [(row, data) for row, video in enumerate(videos) for data in video.data]
    images = _decode_all([data for _, data in flat], device)

    frames = torch.zeros((len(videos), max_frames, 3, size, size), dtype=torch.uint8, device=device)
    mask = torch.zeros((len(videos), max_frames), dtype=torch.bool)
    errors = Counter(batch["frame_errors"])
    slots: list[tuple[int, int, torch.Tensor]] = []  # (row, slot, decoded image)
    next_slot = [0] * len(videos)
    for (row, _), image in zip(flat, images):
        if image is None:
            errors["bad_image"] += 1
            continue
        slots.append((row, next_slot[row], image))
        next_slot[row] += 1
    _write_fitted(frames, slots, size)
    for row, count in enumerate(next_slot):
        mask[row, :count] = True

    failed = [row for row, video in enumerate(videos) if len(video) and not next_slot[row]]
    keep = _apply_on_error(videos, failed, errors)
    out = {**batch, "frames": frames, "frame_mask": mask, "frame_errors": errors}
    if len(keep) < len(videos):
        out = _select_rows(out, keep, len(videos))
        out["dropped"] = batch.get("dropped", 0) + len(videos) - len(keep)
    return out


def fit_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> uint8 ``[N, 3, size, size]``: centre crop to a square, antialiased bicubic resize.

    The device counterpart of :func:`mmcls.data.frames.fit_image`; an ``S x S`` input is returned as
    it is, as the PIL path takes such frames without resampling.
    """
    height, width = images.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = images[..., top : top + side, left : left + side]
    if side == size:
        return square
    resized = F.interpolate(
        square.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------------ helpers
def _decode_all(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """Every image decoded to uint8 ``[3, H, W]`` on ``device`` (``None`` where it cannot be decoded).

    One batched call first; ``decode_jpeg`` returns nothing when any image of the list fails, so a failed batch
    is retried image by image to find the culprits.
    """
    if not datas:
        return []
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    try:
        return list(_decode_jpeg(tensors, device))
    except RuntimeError:
        return [_decode_one(tensor, data, device) for tensor, data in zip(tensors, datas)]


def _decode_one(tensor: torch.Tensor, data: bytes, device: torch.device) -> torch.Tensor | None:
    try:
        return _decode_jpeg(tensor, device)
    except RuntimeError:
        pass
    try:  # not a JPEG nvJPEG takes (a PNG frame, CMYK): PIL on the host
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.array(image.convert("RGB"))  # writable: torch.from_numpy warns on read-only
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return torch.from_numpy(pixels).permute(2, 0, 1).to(device)


def _decode_jpeg(tensors: Any, device: torch.device) -> Any:
    from torchvision.io import ImageReadMode, decode_jpeg

    # torchvision 0.29 deprecates its image codecs (for TorchCodec) and warns on every call; decode_jpeg is still
    # the batched nvJPEG entry point this setting is about.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)


def _write_fitted(frames: torch.Tensor, slots: list[tuple[int, int, torch.Tensor]], size: int) -> None:
    """Fit the decoded images into their ``(row, slot)`` of ``frames``, one resize per distinct image shape."""
    by_shape: dict[tuple[int, ...], list[tuple[int, int, torch.Tensor]]] = {}
    for item in slots:
        by_shape.setdefault(tuple(item[2].shape), []).append(item)
    for group in by_shape.values():
        rows = torch.tensor([row for row, _, _ in group], device=frames.device)
        cols = torch.tensor([slot for _, slot, _ in group], device=frames.device)
        frames[rows, cols] = fit_square(torch.stack([image for _, _, image in group]), size)


def _apply_on_error(videos: list[EncodedFrames], failed: list[int], errors: Counter) -> list[int]:
    """The rows to keep after the ``on_error`` policy of every video with no decodable frame."""
    dropped = set()
    for row in failed:
        video = videos[row]
        # As on the PIL path, a video none of whose frames could be read counts as one error (of the first kind
        # the worker found, else bad_image): take back its per-frame counts, the worker's and the device's.
        errors["bad_image"] -= len(video)
        errors.subtract(video.worker_errors)
        kind = video.worker_errors[0] if video.worker_errors else "bad_image"
        if video.on_error == "raise":
            tried = len(video) + len(video.worker_errors)
            raise FrameError(kind, video.path, f"none of the {tried} sampled frames could be read")
        if video.on_error == "drop":
            dropped.add(row)
        else:
            errors[kind] += 1
    errors += Counter()  # drops zero counts
    return [row for row in range(len(videos)) if row not in dropped]


def _select_rows(batch: dict[str, Any], keep: list[int], num_rows: int) -> dict[str, Any]:
    """``batch`` restricted to the rows ``keep``: every tensor or list with one entry per sample."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == num_rows:
            value = value[torch.tensor(keep, dtype=torch.long, device=value.device)]
        elif isinstance(value, list) and len(value) == num_rows:
            value = [value[i] for i in keep]
        out[key] = value
    return out
