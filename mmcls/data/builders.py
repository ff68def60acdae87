"""Turn a config + data root into datasets and loaders: the one place where the data pieces are wired."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from mmcls.config import Config
from mmcls.data.annotations import Record
from mmcls.data.categories import CategoryMap
from mmcls.data.dataset import VideoTextDataset
from mmcls.data.extra_train import ConcatTrainingSets
from mmcls.data.frames import build_frame_source
from mmcls.data.switch import EpochSubset
from mmcls.data.text import TextEncoder
from mmcls.names import FrameDecoder

#: What the training loop reads from: one dataset, datasets concatenated (``data.extra_train``), or an epoch's
#: subset of either (``data.switch``). Each has ``set_epoch`` and ``collate_fn``.
TrainingSet = VideoTextDataset | ConcatTrainingSets | EpochSubset


def build_dataset(
    cfg: Config,
    data_root: str | Path,
    split: str,
    records: Sequence[Record],
    tokenizer,
    categories: CategoryMap,
    *,
    train: bool,
    on_error: str | None = None,
    frame_decoder: FrameDecoder | None = None,
    dataset_cls: type[VideoTextDataset] = VideoTextDataset,
) -> VideoTextDataset:
    """A dataset over ``records`` whose frames come from ``split`` of ``data_root``.

    Evaluation and prediction always fall back to text for unreadable frames (``on_error='text_only'``):
    dropping a sample there would silently change the metric's denominator or leave a test id unanswered.
    ``frame_decoder`` (``pil``/``cuda``) overrides ``data.frames.decoder``: inference commands choose it for
    their machine, whatever the model was trained with. ``dataset_cls``: a subclass with other targets
    (``mmcls.data.multilabel.MultiLabelDataset``).
    """
    frames_cfg = cfg.data.frames
    if frame_decoder is not None:
        frames_cfg = dataclasses.replace(frames_cfg, decoder=frame_decoder)
    frame_source = build_frame_source(frames_cfg, data_root, split)
    return dataset_cls(
        records,
        TextEncoder(tokenizer, cfg.data.text),
        frame_source,
        categories,
        train=train,
        seed=cfg.train.seed,
        on_error=on_error or (cfg.data.frames.on_error if train else "text_only"),
    )


def build_loader(
    dataset: TrainingSet,
    batch_size: int,
    sampler: Sampler | None,
    num_workers: int,
    pad_token_id: int,
    *,
    drop_last: bool = False,
    device: torch.device | None = None,
) -> DataLoader:
    """A loader of collated batches; ``device`` is where they go (pinned host memory only for a CUDA device)."""
    # A private generator keeps the DataLoader from drawing its worker seeds from the global RNG, which
    # the model's dropout uses: an exactly resumed run needs that stream untouched by data loading.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=functools.partial(dataset.collate_fn, pad_token_id=pad_token_id),
        drop_last=drop_last,
        pin_memory=device.type == "cuda" if device is not None else torch.cuda.is_available(),
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=leave_stop_signals_to_main_process if num_workers > 0 else None,
    )


def build_eval_loader(
    dataset: VideoTextDataset,
    batch_size: int,
    num_workers: int,
    pad_token_id: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
) -> DataLoader:
    """An in-order loader over this rank's shard of ``dataset`` (all of it for one process).

    The sampler pads the last shard with repeats so every rank runs the same number of batches (collectives
    stay matched); ``mmcls.engine.inference.gather_predictions`` drops the repeats again.
    """
    sampler: Sampler | None = (
        DistributedSampler(dataset, world_size, rank, shuffle=False) if world_size > 1 else None
    )
    return build_loader(dataset, batch_size, sampler, num_workers, pad_token_id, device=device)


def leave_stop_signals_to_main_process(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a SIGTERM/SIGINT sent to the whole process group is for the main process.

    A scheduler (SLURM, Kubernetes) or Ctrl-C signals every process of the group. A worker that died of it
    would make the main process fail with "DataLoader worker exited unexpectedly" (raised by torch's SIGCHLD
    handler at any point of the step) instead of finishing its step, saving and shutting the workers down.
    SIGTERM from the parent itself (torch's or multiprocessing's ``terminate()`` at shutdown) must still end
    the worker, or the parent's exit would wait for it forever; the sender's pid tells the two apart.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # not on macOS: keep the default (the worker dies with the group)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # inherited by the thread below
    parent = os.getppid()
    threading.Thread(target=_exit_on_sigterm_from, args=(parent,), name="sigterm-watch", daemon=True).start()


def _exit_on_sigterm_from(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent or os.getppid() != parent:
            os._exit(128 + signal.SIGTERM)  # the shell's code for "killed by SIGTERM"
