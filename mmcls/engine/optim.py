"""Optimizer and schedule: AdamW with per-module learning rates and weight-decay exclusion.

Parameter groups by module: the frame encoder (a pretrained CLIP tower wants a small LR), the text encoder
(BERT) and the heads (projection, frame embeddings, classifiers: new weights, larger LR). Inside each,
biases, norms and embedding tables get no weight decay (decaying a LayerNorm gain towards zero only hurts).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from mmcls.config import TrainConfig


def _module_group(name: str) -> str:
    if name.startswith("frame_encoder."):
        return "frame_encoder"
    if name.startswith("text_encoder."):
        return "text_encoder"
    return "head"


def _wants_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim >= 2 and "embeddings" not in name and "norm" not in name.lower()


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW parameter groups: {frame_encoder, text_encoder, head} x {decay, no_decay}."""
    lrs = {
        "frame_encoder": cfg.frame_encoder_lr if cfg.frame_encoder_lr is not None else cfg.lr,
        "text_encoder": cfg.lr,
        "head": cfg.head_lr if cfg.head_lr is not None else cfg.lr,
    }
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((_module_group(name), _wants_decay(name, param)), []).append(param)
    return [
        {
            "params": params,
            "lr": lrs[module],
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "name": f"{module}/{'decay' if decay else 'no_decay'}",
        }
        for (module, decay), params in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_ratio`` of the steps, then cosine decay to ``min_lr_ratio`` x LR."""
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps),
        num_training_steps=max(total_steps, 1),
        min_lr_rate=cfg.min_lr_ratio,
    )


def trainable_parameters(model: nn.Module) -> Iterable[nn.Parameter]:
    return (p for p in model.parameters() if p.requires_grad)
