"""``mmcls extract-features``: a model's frame encoder over a split, written in the official ``zip_feats`` format.

The output, ``DATA_ROOT/zip_feats/{split}.zip``, holds one member ``{id}.npy`` per video: float16 ``[n, D]``,
the frame encoder's per-frame features (nothing after it: no projection, no fusion) of up to ``max_frames``
frames taken uniformly, as the challenge's own feature zips hold up to 32 frames. A model trained with
``data.frames.source=zip_feats`` and ``model.frame_encoder.type=identity`` (the ``feats`` preset) then trains on
these features, so feature-mode training works with any frame encoder, not only the challenge's.

The zip is written to a temporary file beside the target and renamed into place when complete, so an
interrupted run never leaves a truncated zip under the name training reads; an existing file is only
replaced with ``overwrite=True``.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmcls.config import ConfigError
from mmcls.data.annotations import annotation_path, load_records
from mmcls.engine.distributed import check_frame_decoder, resolve_device, world_info_from_env
from mmcls.engine.inference import autocast
from mmcls.engine.prefetch import DevicePrefetcher
from mmcls.errors import MmclsError
from mmcls.inference.predict import model_data_loader
from mmcls.models import load_model_dir
from mmcls.names import FrameDecoder

log = logging.getLogger("mmcls.features")

#: Frames per video in the challenge's own ``zip_feats`` files.
OFFICIAL_MAX_FRAMES = 32


class OutputExistsError(MmclsError, FileExistsError):
    """The output file exists and ``--overwrite`` was not given (a user's file is never replaced silently)."""


@dataclass
class ExtractionSummary:
    out: Path
    videos: int  # members written
    without_frames: int  # videos whose frames could not be read: no member (training falls back to text)
    feature_dim: int
    seconds: float

    @property
    def videos_per_s(self) -> float:
        return (self.videos + self.without_frames) / self.seconds if self.seconds else float("nan")


@torch.no_grad()
def extract_features(
    model_dir: str | Path,
    data_root: str | Path,
    split: str,
    out: str | Path,
    *,
    max_frames: int = OFFICIAL_MAX_FRAMES,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    overwrite: bool = False,
    frame_decoder: FrameDecoder = "pil",
) -> ExtractionSummary:
    """Write the frame features of every video of ``split`` to ``out`` (see the module docstring)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: already exists; pass --overwrite to replace it")
    torch_device = resolve_device(device, world_info_from_env())
    check_frame_decoder(frame_decoder, torch_device, setting="--frame-decoder")
    loaded = load_model_dir(model_dir, device=torch_device)
    cfg = loaded.config.copy()
    encoder = loaded.model.frame_encoder
    if encoder.kind == "identity" or cfg.data.frames.source not in ("zip_frames", "video"):
        raise ConfigError(
            f"{loaded.path}: its frame encoder is {encoder.kind!r} on data.frames.source="
            f"{cfg.data.frames.source!r}; feature extraction needs an image model (zip_frames or video frames)"
        )
    cfg.data.frames.max_frames = max_frames
    records = load_records(
        annotation_path(data_root, split, cfg.data.annotations), categories=loaded.categories
    )
    loader = model_data_loader(
        dataclasses.replace(loaded, config=cfg),
        data_root,
        split,
        records,
        batch_size=batch_size,
        num_workers=num_workers,
        frame_decoder=frame_decoder,
        device=torch_device,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    start = time.perf_counter()
    written = without = 0
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for batch in DevicePrefetcher(loader, torch_device, ("frames", "frame_mask")):
                masks = batch["frame_mask"].cpu().numpy()
                # Real frames come first in every clip, so slots past the batch's longest clip are padding:
                # with max_frames=32 and 8-frame zips, encoding them would be three quarters of the work.
                longest = int(masks.sum(axis=1).max(initial=0))
                if longest == 0:
                    without += len(masks)
                    continue
                with autocast(torch_device, precision):
                    features = encoder(batch["frames"][:, :longest])  # [B, longest, D]
                features = features.float().cpu().numpy().astype(np.float16)
                for video_id, rows, mask in zip(batch["ids"], features, masks[:, :longest]):
                    if not mask.any():
                        without += 1
                        continue
                    zf.writestr(_member(f"{video_id}.npy"), _npy_bytes(rows[mask]))
                    written += 1
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    summary = ExtractionSummary(out, written, without, encoder.output_dim, time.perf_counter() - start)
    if without:
        log.warning(
            "%d of %d videos had no readable frames: no features written for them", without, len(records)
        )
    return summary


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.external_attr = 0o644 << 16  # rw-r--r-- when extracted
    return info


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
