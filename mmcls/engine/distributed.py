"""Everything about process groups lives here: torchrun's environment, initialisation, collectives.

We never launch processes ourselves: ``torchrun`` (or SLURM's ``srun`` running torchrun) sets RANK,
LOCAL_RANK and WORLD_SIZE, and a plain ``python -m mmcls train`` is simply world size 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mmcls.config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def world_info_from_env() -> DistInfo:
    """Rank and world size as torchrun exports them (defaults: a single process)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def resolve_device(requested: str, info: DistInfo, setting: str = "train.device") -> torch.device:
    """The device for ``auto | cpu | cuda``; ``setting`` is how the user chose it (named in errors)."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{setting}={requested!r}: use auto, cpu or cuda")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{setting}=cuda but no CUDA device is visible; use {setting}=cpu (or auto)")
    torch.cuda.set_device(info.local_rank)
    return torch.device("cuda", info.local_rank)


def check_precision(precision: str, device: torch.device, setting: str = "train.precision") -> None:
    """Refuse a precision the device cannot run: fp16 needs a GPU (the CPU has no fp16 kernels for training)."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"{setting}=fp16 needs a GPU, and this run is on the {device.type}; use bf16 or fp32"
        )


def check_frame_decoder(decoder: str, device: torch.device, setting: str = "data.frames.decoder") -> None:
    """Refuse GPU JPEG decoding (``decoder=cuda``, nvJPEG) on a run without a GPU."""
    if decoder == "cuda" and device.type != "cuda":
        raise ConfigError(
            f"{setting}=cuda decodes the JPEG frames on the GPU, and this run is on the {device.type}; "
            f"use {setting}=pil"
        )


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun prepared (NCCL on GPUs, gloo on CPUs); a no-op for one process."""
    info = world_info_from_env()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # device_id binds the NCCL communicator to this rank's GPU up front (otherwise barrier() has to guess
        # the device and warns); gloo takes no device.
        device_id = device if device.type == "cuda" else None
        dist.init_process_group(
            backend=backend, rank=info.rank, world_size=info.world_size, device_id=device_id
        )
    return info


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def shutdown_distributed() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of boolean flags across ranks, so that every rank takes the same branch.

    Used for "stop requested" and "loss was not finite": if one rank skipped a step or stopped while the
    others went on, the next collective would hang.
    """
    if not is_initialized():
        return flags
    tensor = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each value over ranks (every rank must pass the same keys); ``values`` without a process group.

    Used for the logged training losses, so that ``train/loss`` describes the global batch, as it does in a
    single process, and not rank 0's share of it.
    """
    if not is_initialized() or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist()))
