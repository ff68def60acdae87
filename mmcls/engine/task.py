"""The training task: one object that owns the model, its losses, the EMA copy and the distributed wrapper.

The loop in ``trainer.py`` only asks the task for a loss and tells it when an optimizer step happened;
everything that depends on how the model is trained (auxiliary video-only loss, label smoothing, EMA,
DDP/FSDP wrapping, and the recipe of docs/recipe.md: adversarial passes, class weights, R-Drop, multi-sample
dropout, SWA, level-1 and soft-F1 losses) lives here, in one place.

:class:`TrainingTask` holds what every kind of training shares (wrapping, ``no_sync``, EMA, SWA, adversarial
passes, the evaluated model, extra checkpoint state); a subclass adds its loss in ``forward``. :class:`ClassificationTask` is the
fine-tuning task; pretraining (``mmcls.pretrain``) subclasses the same base. What a kind of run needs besides
the loss (datasets, evaluation, the model folder) is in ``mmcls.engine.setup``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mmcls.config import ConfigError, TrainConfig
from mmcls.engine import losses
from mmcls.engine.adversarial import Adversary
from mmcls.engine.distributed import DistInfo
from mmcls.engine.inference import autocast
from mmcls.engine.soft_targets import TrainingTargets
from mmcls.engine.swa import WeightAverage
from mmcls.models.fusion import MultimodalClassifier
from mmcls.names import LOGITS, MODEL_INPUTS, VIDEO_LOGITS

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule


class TrainingTask(nn.Module):
    """The model being trained, its EMA copy and its distributed wrapper; subclasses define the loss.

    ``forward(batch)`` returns ``(loss, parts)``: the scalar to back-propagate and detached scalars to log
    (``{"loss_fused": ...}``). The trainer calls :meth:`forward_backward` on this process's micro-batch, after
    moving the batch entries named in ``device_keys`` to the device; it runs ``forward`` inside autocast.
    """

    device_keys: tuple[str, ...] = (*MODEL_INPUTS, "labels")

    def __init__(self, model: MultimodalClassifier, cfg: TrainConfig, device: torch.device) -> None:
        super().__init__()
        self.model = model.to(device)
        self.cfg = cfg
        self.device = device
        # EMA and SWA are built from the unwrapped model before any DDP/FSDP wrapping: plain full tensors.
        self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay) if cfg.ema_decay else None
        self.swa = WeightAverage(self.model) if cfg.swa_start_epoch else None
        self.adversary = Adversary(cfg.adversarial, self.model) if cfg.adversarial.method != "none" else None
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
            # The same for the weight average, and the adversary perturbs whole (unsharded) matrices.
            if self.swa is not None:
                raise ConfigError(
                    "train.swa_start_epoch is not supported with train.distributed=fsdp; use train.distributed=ddp"
                )
            if self.adversary is not None:
                raise ConfigError(
                    "train.adversarial.method is not supported with train.distributed=fsdp; use train.distributed=ddp"
                )

            if not hasattr(self.model, "fsdp_units"):
                raise ConfigError(
                    f"train.distributed=fsdp: {type(self.model).__name__} does not name its FSDP units "
                    "(fsdp_units()); use train.distributed=ddp"
                )
            # Shard each unit the model names (its transformer layers), then the root: parameters are
            # gathered unit by unit.
            for unit in self.model.fsdp_units():
                fully_shard(unit)
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
            # wrap_distributed's fully_shard made the model an FSDPModule (is_sharded says it ran).
            sharded = cast("FSDPModule", self.model)
            sharded.set_requires_gradient_sync(False)  # FSDP2's no_sync; recurses into the sharded layers
            try:
                yield
            finally:
                sharded.set_requires_gradient_sync(True)
        else:
            yield

    # ------------------------------------------------------------------ loss
    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward_backward(
        self, batch: dict, scale: Callable[[torch.Tensor], torch.Tensor], sync: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward and backward of one micro-batch (plus the adversarial passes); the clean loss and its parts.

        ``scale`` maps the loss to what is backpropagated (grad scaler, accumulation factor). ``sync``: the
        last backward here all-reduces the step's gradients; every other backward runs inside :meth:`no_sync`.
        The backward belongs inside no_sync (FSDP decides in backward whether to reduce-scatter; DDP in
        forward) but outside autocast.
        """
        adversary = self.adversary
        unsynced: contextlib.AbstractContextManager[None] = (
            self.no_sync() if adversary is not None or not sync else contextlib.nullcontext()
        )
        capture: contextlib.AbstractContextManager[list[torch.Tensor | None]] = (
            adversary.capture() if adversary is not None else contextlib.nullcontext([])
        )
        with unsynced, capture as clean_grads:
            with autocast(self.device, self.cfg.precision):
                loss, parts = self(batch)
            scale(loss).backward()
        if adversary is not None:

            def adversarial_loss() -> torch.Tensor:
                with autocast(self.device, self.cfg.precision):
                    return self(batch)[0]

            adv_loss = adversary.attack(clean_grads, adversarial_loss, scale, self.no_sync, sync, loss)
            parts["loss_adv"] = adv_loss.detach()
        return loss, parts

    # ------------------------------------------------------------------ after each optimizer step / epoch
    def after_optimizer_step(self, global_step: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=global_step)

    def after_epoch(self, epoch: int) -> None:
        """Called at the end of every (1-based) ``epoch``, before evaluation: SWA takes its snapshot."""
        start = self.cfg.swa_start_epoch  # set whenever swa is
        if self.swa is not None and start is not None and epoch >= start:
            self.swa.update(self.model)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and released: the SWA average once it has a snapshot, else the EMA
        copy when EMA is on, else the trained weights."""
        if self.swa is not None and self.swa.count > 0:
            return self.swa.module
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------ checkpoint
    def extra_state(self) -> dict[str, Any]:
        """Task state a checkpoint must carry besides the model, optimizer and EMA (tensors and plain values)."""
        return {"swa": self.swa.state_dict()} if self.swa is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""
        if self.swa is not None and state.get("swa") is not None:
            self.swa.load_state_dict(state["swa"])


#: ``train.lv1_loss_weight: null`` on a taxonomy whose level-1 groups hold several classes (docs/recipe.md).
DEFAULT_LV1_LOSS_WEIGHT = 0.5


def resolve_lv1_loss_weight(weight: float | None, lv2_to_lv1: np.ndarray | None) -> float:
    """The level-1 loss weight a run uses: the setting, or for null the taxonomy's default.

    Null means 0.5 where some level-1 group holds several classes, and 0 where it cannot add anything: a flat
    taxonomy (or one class per group), where the level-1 NLL is the level-2 cross-entropy again.
    """
    if weight is not None:
        return weight
    grouped = lv2_to_lv1 is not None and lv2_to_lv1.shape[1] < lv2_to_lv1.shape[0]
    return DEFAULT_LV1_LOSS_WEIGHT if grouped else 0.0


class ClassificationTask(TrainingTask):
    """Fused-classification training: cross-entropy on the fused logits + weighted video-only auxiliary loss.

    The auxiliary head sees only frames; without its loss the fused classifier learns to lean on the text
    (the easier modality) and the frame branch stays under-trained. Optional terms (docs/recipe.md): class
    weights, R-Drop, multi-sample dropout at the heads, the level-1 loss and soft F1.
    """

    def __init__(
        self,
        model: MultimodalClassifier,
        cfg: TrainConfig,
        device: torch.device,
        targets: TrainingTargets | None = None,
        class_counts: Sequence[int] | np.ndarray | None = None,
        lv2_to_lv1: np.ndarray | None = None,
    ) -> None:
        """``targets``: soft labels, a teacher or a class subset (``mmcls.engine.soft_targets``); None for
        plain hard-label training. ``class_counts``: training-split count per class (for
        ``class_weight_alpha``); ``lv2_to_lv1``: the ``[num_lv2, num_lv1]`` 0/1 matrix of the category map
        (for ``lv1_loss_weight``)."""
        super().__init__(model, cfg, device)
        self.targets = targets
        self.model.head_samples = cfg.multi_dropout  # multi-sample dropout at the heads (training only)
        self.class_weights: torch.Tensor | None = None
        if cfg.class_weight_alpha > 0:
            if targets is not None:
                raise ConfigError(
                    "train.class_weight_alpha is not combined with soft targets, distillation or a class subset "
                    "(data.extra_train soft labels, train.distill_from, data.lv1_groups); set it to 0"
                )
            if class_counts is None:
                raise ValueError("train.class_weight_alpha > 0 needs the training split's class counts")
            weights = losses.class_weights(class_counts, cfg.class_weight_alpha)
            self.class_weights = torch.tensor(weights, dtype=torch.float32, device=device)
        self.lv2_to_lv1: torch.Tensor | None = None
        self.lv1_loss_weight = resolve_lv1_loss_weight(cfg.lv1_loss_weight, lv2_to_lv1)
        if self.lv1_loss_weight > 0:
            if lv2_to_lv1 is None:
                raise ValueError("train.lv1_loss_weight > 0 needs the category map's lv2 -> lv1 matrix")
            self.lv2_to_lv1 = torch.as_tensor(lv2_to_lv1, dtype=torch.float32, device=device)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = {k: batch[k] for k in MODEL_INPUTS}
        labels, frame_mask, index = batch["labels"], batch["frame_mask"], batch.get("index")
        rdrop = self.cfg.rdrop_alpha > 0 and self.training
        if rdrop:
            # R-Drop: both dropout passes in one forward of the doubled batch (one backward, DDP-friendly).
            inputs = {k: torch.cat([v, v]) for k, v in inputs.items()}
            labels, frame_mask = torch.cat([labels, labels]), torch.cat([frame_mask, frame_mask])
            index = torch.cat([index, index]) if index is not None else None
        outputs = self.train_model(**inputs)
        loss, parts = self.classification_loss(outputs, labels, frame_mask, index)
        if rdrop:
            first, second = outputs[LOGITS].chunk(2)
            kl = losses.symmetric_kl(first, second)
            loss = loss + self.cfg.rdrop_alpha * kl
            parts["loss_rdrop"] = kl.detach()
        return loss, parts

    def classification_loss(
        self,
        outputs: dict[str, torch.Tensor],
        labels: torch.Tensor,
        frame_mask: torch.Tensor,
        index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fused loss + video-only CE + the optional level-1 and soft-F1 terms, class-weighted if configured.

        With ``targets`` (soft labels, a teacher, a class subset) the fused and video losses are theirs, for the
        samples at dataset positions ``index``.
        """
        cfg, weights, targets = self.cfg, self.class_weights, self.targets
        logits = outputs[LOGITS]
        if targets is not None:
            loss, parts = targets.fused_loss(logits, labels, index, cfg.label_smoothing)
        else:
            fused = losses.per_sample_ce(logits, labels, cfg.label_smoothing)
            loss = losses.weighted_mean(fused, labels, weights)
            parts = {"loss_fused": loss.detach()}
        if cfg.aux_loss_weight > 0:
            # Samples without any readable frame carry no video signal: leave them out of the video loss.
            # Weighted by a 0/1 mask rather than skipped, so the video head stays in the graph even when no
            # sample of this (local) batch has frames: under DDP a parameter without a gradient on one rank
            # stops the gradient all-reduce ("Expected to have finished reduction in the prior iteration").
            has_video = frame_mask.any(dim=1)
            if targets is not None:
                per_sample = targets.cross_entropy(outputs[VIDEO_LOGITS], labels, index, cfg.label_smoothing)
            else:
                per_sample = losses.per_sample_ce(outputs[VIDEO_LOGITS], labels, cfg.label_smoothing)
            video_loss = losses.weighted_mean(per_sample, labels, weights, mask=has_video)
            loss = loss + cfg.aux_loss_weight * video_loss
            parts["loss_video"] = video_loss.detach()  # 0 for a batch without any frames
        # The hard-label terms leave out samples without a hard label (label -1: e.g. soft pseudo-labels).
        labeled = labels >= 0
        hard = labels.clamp(min=0)
        if self.lv2_to_lv1 is not None:
            lv1_nll = losses.lv1_nll(logits, hard, self.lv2_to_lv1)
            lv1 = losses.weighted_mean(lv1_nll, hard, weights, mask=labeled)
            loss = loss + self.lv1_loss_weight * lv1
            parts["loss_lv1"] = lv1.detach()
        if cfg.soft_f1_weight > 0:
            soft_f1 = losses.soft_f1_loss(logits[labeled], labels[labeled])
            loss = loss + cfg.soft_f1_weight * soft_f1
            parts["loss_soft_f1"] = soft_f1.detach()
        return loss, parts
