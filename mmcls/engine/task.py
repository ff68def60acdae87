"""The training task: one object that owns the model, its losses, the EMA copy and the distributed wrapper.

The loop in ``trainer.py`` only asks the task for a loss and tells it when an optimizer step happened;
everything that depends on how the model is trained (auxiliary video-only loss, label smoothing, EMA,
DDP/FSDP wrapping, later adversarial training and class weights) lives here, in one place.

:class:`TrainingTask` holds what every kind of training shares (wrapping, ``no_sync``, EMA, the evaluated
model, extra checkpoint state); a subclass adds its loss in ``forward``. :class:`ClassificationTask` is the
fine-tuning task; pretraining (``mmcls.pretrain``) subclasses the same base. What a kind of run needs besides
the loss (datasets, evaluation, the model folder) is in ``mmcls.engine.setup``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mmcls.config import ConfigError, TrainConfig
from mmcls.engine.distributed import DistInfo
from mmcls.engine.inference import MODEL_INPUTS
from mmcls.engine.soft_targets import TrainingTargets


def move_batch(batch: dict, device: torch.device, keys: tuple[str, ...] = (*MODEL_INPUTS, "labels")) -> dict:
    """The tensors named by ``keys`` moved to ``device`` (bookkeeping entries stay where they are)."""
    moved = dict(batch)
    for key in keys:
        moved[key] = batch[key].to(device, non_blocking=True)
    return moved


class TrainingTask(nn.Module):
    """The model being trained, its EMA copy and its distributed wrapper; subclasses define the loss.

    ``forward(batch)`` returns ``(loss, parts)``: the scalar to back-propagate and detached scalars to log
    (``{"loss_fused": ...}``). The trainer calls it inside autocast on this process's micro-batch, after
    moving the batch entries named in ``device_keys`` to the device.
    """

    device_keys: tuple[str, ...] = (*MODEL_INPUTS, "labels")

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device) -> None:
        super().__init__()
        self.model = model.to(device)
        self.cfg = cfg
        self.device = device
        # EMA is built from the unwrapped model before any DDP/FSDP wrapping, so it holds plain full tensors.
        self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay) if cfg.ema_decay else None
        self.train_model: nn.Module = self.model
        self.is_sharded = False

    # ------------------------------------------------------------------ distribution
    def wrap_distributed(self, info: DistInfo, find_unused_parameters: bool = False) -> None:
        """Wrap the model for data-parallel training (no-op for a single process).

        ``find_unused_parameters``: for DDP when some parameters never take part (a text-only run leaves the
        frame encoder out); it costs a graph traversal per step, so it is off otherwise.
        """
        if not info.enabled:
            return
        if self.cfg.distributed == "ddp":
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(
                self.model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
            )
        elif self.cfg.distributed == "fsdp":
            try:
                from torch.distributed.fsdp import fully_shard  # FSDP2, public since torch 2.6
            except ImportError as exc:
                raise ConfigError(
                    f"train.distributed=fsdp needs torch.distributed.fsdp.fully_shard (torch>=2.6); this is "
                    f"torch {torch.__version__}: use train.distributed=ddp"
                ) from exc

            if self.ema is not None:
                # ModelEmaV3 lerps plain tensors towards the model's; FSDP2 parameters are DTensor shards.
                raise ConfigError(
                    f"train.ema_decay={self.cfg.ema_decay} is not supported with train.distributed=fsdp; "
                    "use train.distributed=ddp or set train.ema_decay=null"
                )

            # Shard each transformer layer, then the root: parameters are gathered layer by layer.
            for layer in self.model.text_encoder.encoder.layer:
                fully_shard(layer)
            fully_shard(self.model)
            self.train_model = self.model
            self.is_sharded = True
        else:
            raise ConfigError(f"train.distributed must be 'ddp' or 'fsdp', got {self.cfg.distributed!r}")

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) of the backward passes inside.

        For gradient-accumulation micro-steps and adversarial extra passes: gradients accumulate locally and
        are synchronised once, by the first backward outside this context.
        """
        if isinstance(self.train_model, DistributedDataParallel):
            with self.train_model.no_sync():
                yield
        elif self.is_sharded:
            self.model.set_requires_gradient_sync(False)  # FSDP2's no_sync; recurses into the sharded layers
            try:
                yield
            finally:
                self.model.set_requires_gradient_sync(True)
        else:
            yield

    # ------------------------------------------------------------------ loss
    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    # ------------------------------------------------------------------ after each optimizer step
    def after_optimizer_step(self, global_step: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=global_step)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and released: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------ checkpoint
    def extra_state(self) -> dict[str, Any]:
        """Task state a checkpoint must carry besides the model, optimizer and EMA (tensors and plain values)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""


class ClassificationTask(TrainingTask):
    """Fused-classification training: cross-entropy on the fused logits + weighted video-only auxiliary loss.

    The auxiliary head sees only frames; without its loss the fused classifier learns to lean on the text
    (the easier modality) and the frame branch stays under-trained.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        device: torch.device,
        targets: TrainingTargets | None = None,
    ) -> None:
        """``targets``: soft labels, a teacher or a class subset (``mmcls.engine.soft_targets``); None for
        plain hard-label training."""
        super().__init__(model, cfg, device)
        self.targets = targets

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        outputs = self.train_model(**{k: batch[k] for k in MODEL_INPUTS})
        labels, targets = batch["labels"], self.targets
        if targets is not None:
            loss, parts = targets.fused_loss(
                outputs["logits"], labels, batch["index"], self.cfg.label_smoothing
            )
        else:
            loss = F.cross_entropy(
                outputs["logits"].float(), labels, label_smoothing=self.cfg.label_smoothing
            )
            parts = {"loss_fused": loss.detach()}
        if self.cfg.aux_loss_weight > 0:
            # Samples without any readable frame carry no video signal: leave them out of the video loss.
            # Weighted by a 0/1 mask rather than skipped, so the video head stays in the graph even when no
            # sample of this (local) batch has frames: under DDP a parameter without a gradient on one rank
            # stops the gradient all-reduce ("Expected to have finished reduction in the prior iteration").
            has_video = batch["frame_mask"].any(dim=1)
            if targets is not None:
                per_sample = targets.cross_entropy(
                    outputs["video_logits"], labels, batch["index"], self.cfg.label_smoothing
                )
            else:
                per_sample = F.cross_entropy(
                    outputs["video_logits"].float(),
                    labels,
                    label_smoothing=self.cfg.label_smoothing,
                    reduction="none",
                )
            video_loss = torch.where(has_video, per_sample, 0.0).sum() / has_video.sum().clamp(min=1)
            loss = loss + self.cfg.aux_loss_weight * video_loss
            parts["loss_video"] = video_loss.detach()  # 0 for a batch without any frames
        return loss, parts
