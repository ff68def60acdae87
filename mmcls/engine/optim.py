"""Optimizer and schedule: AdamW with per-module (and optionally per-layer) learning rates.

Parameter groups by module: the frame encoder (a pretrained CLIP tower wants a small LR), the text encoder
(BERT) and the heads (projection, frame embeddings, classifiers: new weights, larger LR). Inside each,
biases, norms and embedding tables get no weight decay (decaying a LayerNorm gain towards zero only hurts).
The model names each parameter's group (``param_group_of``): the dual-stream model puts its frame and cross
transformer layers in the text encoder's group, and its layer ids put the cross layers on top of BERT's.

With ``train.layer_decay`` the two pretrained towers also get a LR per layer: the layers near the input hold
general features that fine-tuning should move least, so layer ``l`` of a tower with ``N`` layers trains at
``base_lr * decay^(N+1-l)`` (the embeddings/stem are ``l = 0``, the tower's top ``N+1`` keeps ``base_lr``).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable

import torch
from torch import nn

from mmcls.config import TrainConfig
from mmcls.models.fusion import MultimodalClassifier

# Transformer blocks of the frame backbones: open_clip's ``transformer.resblocks.i``, timm's ``blocks.i``.
_FRAME_BLOCK_RE = re.compile(r"(?:^|\.)(?:resblocks|blocks)\.(\d+)\.")
# What sits below the first block: open_clip's and timm's patch embedding, class/register tokens, positions.
_FRAME_STEM = (
    "conv1.",
    "class_embedding",
    "positional_embedding",
    "ln_pre.",
    "patch_embed.",
    "cls_token",
    "reg_token",
    "pos_embed",
    "norm_pre.",
)


def _module_group(model: nn.Module, name: str) -> str:
    """The LR group the model names for a parameter (``param_group_of``), else the one its prefix gives."""
    group_of = getattr(model, "param_group_of", None)
    if group_of is not None:
        return group_of(name)
    if name.startswith("frame_encoder."):
        return "frame_encoder"
    if name.startswith("text_encoder."):
        return "text_encoder"
    return "head"


def _wants_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim >= 2 and "embeddings" not in name and "norm" not in name.lower()


def frame_layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Depth of every frame-encoder parameter (full names) and the number of blocks ``M``.

    Block ``i`` is ``i + 1``; the stem before the first block (patch embedding, class token, positions,
    ``ln_pre``) is ``0``; everything after the last block (``ln_post``, ``proj``, timm's ``norm``) is ``M + 1``.
    A backbone without such blocks (a CNN) gets ``M = 0``: every parameter at ``1``, i.e. no decay.
    (Parameter order cannot tell stem from top: open_clip registers ``proj`` before ``conv1``.)
    """
    ids: dict[str, int] = {}
    named = [n for n, _ in model.named_parameters() if n.startswith("frame_encoder.")]
    blocks = {n: int(m.group(1)) for n in named if (m := _FRAME_BLOCK_RE.search(n))}
    num_blocks = max(blocks.values(), default=-1) + 1
    for name in named:
        if name in blocks:
            ids[name] = blocks[name] + 1
        elif num_blocks and name.removeprefix("frame_encoder.backbone.").startswith(_FRAME_STEM):
            ids[name] = 0
        else:
            ids[name] = num_blocks + 1
    return ids, num_blocks


def _layer_lrs(
    model: MultimodalClassifier, cfg: TrainConfig, base: dict[str, float]
) -> dict[str, tuple[int, float]]:
    """``{param name: (layer id, lr)}`` for the text and frame towers under ``cfg.layer_decay``."""
    decay = cfg.layer_decay
    assert decay is not None
    num_text = model.num_layers
    frame_ids, num_frame = frame_layer_ids(model)
    out: dict[str, tuple[int, float]] = {}
    for name, _ in model.named_parameters():
        group = _module_group(model, name)
        if group == "text_encoder":
            layer = model.layer_id_for(name)
            out[name] = (layer, base[group] * decay ** (num_text + 1 - layer))
        elif group == "frame_encoder":
            layer = frame_ids[name]
            out[name] = (layer, base[group] * decay ** (num_frame + 1 - layer))
    return out


def param_groups(model: MultimodalClassifier, cfg: TrainConfig) -> list[dict]:
    """AdamW parameter groups: {frame_encoder, text_encoder, head} x {decay, no_decay} [x layer].

    Without layer decay the group names are ``module/decay`` and ``module/no_decay``; with it the two towers
    are split further by layer: ``text_encoder/layer_03/decay``.
    """
    lrs = {
        "frame_encoder": cfg.frame_encoder_lr if cfg.frame_encoder_lr is not None else cfg.lr,
        "text_encoder": cfg.lr,
        "head": cfg.head_lr if cfg.head_lr is not None else cfg.lr,
    }
    per_layer = _layer_lrs(model, cfg, lrs) if cfg.layer_decay is not None else {}
    groups: dict[tuple[str, int, bool], list[nn.Parameter]] = {}
    group_lr: dict[tuple[str, int, bool], float] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        module = _module_group(model, name)
        layer, lr = per_layer.get(name, (-1, lrs[module]))
        key = (module, layer, _wants_decay(name, param))
        groups.setdefault(key, []).append(param)
        group_lr[key] = lr
    return [
        {
            "params": params,
            "lr": group_lr[key],
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "name": "/".join(
                [module, *([f"layer_{layer:02d}"] if layer >= 0 else []), "decay" if decay else "no_decay"]
            ),
        }
        for key, params in sorted(groups.items())
        for module, layer, decay in [key]
    ]


def build_optimizer(model: MultimodalClassifier, cfg: TrainConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg)
    # On CUDA the fused kernel updates all parameters in a few launches instead of several per tensor.
    on_cuda = all(p.is_cuda for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), fused=on_cuda or None)


def lr_factor(
    step: int,
    *,
    schedule: str,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float,
    restart_steps: int,
) -> float:
    """Multiplier of the base LR after ``step`` optimizer steps (linear warmup, then the schedule).

    ``cosine_restarts`` starts a new cosine every ``restart_steps`` steps (counted from step 0, so cycles end
    on epoch boundaries; the first cycle begins after the warmup).
    """
    if step < warmup_steps:
        return step / max(warmup_steps, 1)
    start, end = warmup_steps, max(total_steps, warmup_steps + 1)
    if schedule == "cosine_restarts":
        cycle_start = (step // restart_steps) * restart_steps
        start = max(cycle_start, warmup_steps)
        end = min(cycle_start + restart_steps, end)
    progress = min((step - start) / max(end - start, 1), 1.0)
    if schedule == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int, steps_per_epoch: int | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_ratio`` of the steps, then ``cfg.schedule`` down to ``min_lr_ratio`` x LR.

    ``steps_per_epoch`` sets the cycle of ``cosine_restarts`` (``restart_epochs`` epochs); the factor is a
    ``functools.partial`` of plain values, so the scheduler's state dict stays checkpoint-safe.
    """
    per_epoch = steps_per_epoch or max(total_steps // max(cfg.epochs, 1), 1)
    factor = functools.partial(
        lr_factor,
        schedule=cfg.schedule,
        total_steps=max(total_steps, 1),
        warmup_steps=int(cfg.warmup_ratio * total_steps),
        min_lr_ratio=cfg.min_lr_ratio,
        restart_steps=max(cfg.restart_epochs * per_epoch, 1),
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def trainable_parameters(model: nn.Module) -> Iterable[nn.Parameter]:
    return (p for p in model.parameters() if p.requires_grad)
