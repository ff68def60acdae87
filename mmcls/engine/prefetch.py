"""Move a loader's batches to the device one batch ahead, so the copy overlaps the current step's compute.

Training, evaluation and prediction all read batches through :class:`DevicePrefetcher`; the loop then finds the
model inputs already on its device. On CUDA the next batch's host-to-device copy (pinned memory, ``non_blocking``)
is issued on a side stream as soon as the current batch is handed out, so PCIe transfers run while the GPU
computes; the compute stream waits for that copy only when it takes the batch. Elsewhere (the CPU) there is
nothing to overlap and the batches pass through unchanged.

Frames still encoded (``data.frames.decoder: cuda``) are decoded here, on the copy stream, so that the decoding
of batch i+1 also overlaps the step of batch i (:func:`to_device`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from mmcls.data.device_decode import EncodedFrameBatch, decode_batch


class DevicePrefetcher:
    """Iterate ``loader`` with the tensors under ``keys`` of each batch (a dict) already on ``device``.

    Other entries (ids, error counters, dataset indices) stay on the host, where the bookkeeping reads them.
    Re-iterable like the loader it wraps; ``len()`` is the loader's.
    """

    def __init__(self, loader: Iterable[dict[str, Any]], device: torch.device, keys: Sequence[str]) -> None:
        self.loader = loader
        self.device = torch.device(device)
        self.keys = tuple(keys)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.device.type != "cuda":
            for batch in self.loader:
                yield self._move(batch)
            return
        yield from self._iter_cuda()

    def _move(self, batch: dict[str, Any]) -> dict[str, Any]:
        return to_device(batch, self.device, self.keys)

    def _iter_cuda(self) -> Iterator[dict[str, Any]]:
        side = torch.cuda.Stream(self.device)
        batches = iter(self.loader)

        def issue_next() -> dict[str, Any] | None:
            batch = next(batches, None)
            if batch is None:
                return None
            with torch.cuda.stream(side):
                return self._move(batch)

        upcoming = issue_next()
        while upcoming is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(side)  # the copy of this batch is done before any kernel reads it
            batch = upcoming
            for key in self.keys:
                # The tensors were allocated on the side stream but are used (and freed) on the compute stream:
                # tell the caching allocator, or it could hand their memory to the next copy too early.
                batch[key].record_stream(compute)
            upcoming = issue_next()  # starts copying batch i+1 before batch i's step is queued
            yield batch


def to_device(batch: dict[str, Any], device: torch.device, keys: Sequence[str]) -> dict[str, Any]:
    """A copy of ``batch`` with the tensors under ``keys`` on ``device`` (encoded frames decoded there first)."""
    if isinstance(batch.get("frames"), EncodedFrameBatch):
        batch = decode_batch(batch, device)
    moved = dict(batch)
    for key in keys:
        moved[key] = batch[key].to(device, non_blocking=True)
    return moved
