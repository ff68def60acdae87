"""The pretraining losses as plain functions of tensors (each returns ``(loss, accuracy)``).

Kept apart from the model so that each can be tested on hand-made embeddings: an NCE over random vectors
sits near ``log(number of candidates)``, over perfectly aligned ones near 0.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over the vocabulary at the masked positions (``logits`` ``[M, V]``, ``targets`` ``[M]``).

    A sum divided by ``max(M, 1)``: a micro-batch without a masked token gives 0 with the head still in the
    graph (DDP needs a gradient, even a zero one, for every parameter).
    """
    loss = F.cross_entropy(logits.float(), targets, reduction="sum") / max(len(targets), 1)
    return loss, _accuracy(logits, targets)


def nce_loss(
    queries: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of ``queries`` ``[M, D]`` against every row of ``keys`` ``[N, D]``; ``targets[m]`` is the positive.

    Cosine similarities over ``temperature``: every other key is a negative (for MFM, the other frames of the
    batch, including the other frames of the same video).
    """
    logits = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T / temperature
    loss = F.cross_entropy(logits, targets, reduction="sum") / max(len(targets), 1)
    return loss, _accuracy(logits, targets)


def itc_loss(
    text: torch.Tensor, video: torch.Tensor, scale: torch.Tensor, gather: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE between L2-normalised text ``[B, D]`` and video ``[B, D]`` embeddings of one batch.

    Under DDP (``gather``) each rank scores its own samples against the whole global batch: the other ranks'
    embeddings are gathered with gradients, so negatives do not shrink with the per-rank batch. Samples
    without frames have a zero video vector (normalised to zero); they still serve as (easy) negatives.
    Accuracy: in-batch retrieval, text->video and video->text averaged.
    """
    all_text, all_video, offset = text, video, 0
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        all_text, offset = gather_rows(text)
        all_video, _ = gather_rows(video)
    targets = torch.arange(len(text), device=text.device) + offset
    text_logits = scale * text @ all_video.T  # [B, global B]
    video_logits = scale * video @ all_text.T
    loss = (F.cross_entropy(text_logits, targets) + F.cross_entropy(video_logits, targets)) / 2
    accuracy = (_accuracy(text_logits, targets) + _accuracy(video_logits, targets)) / 2
    return loss, accuracy


def vtm_loss(
    logit: torch.Tensor, matched: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary cross-entropy of matched (1) vs swapped (0) pairs, over ``valid`` samples (those with frames)."""
    per_sample = F.binary_cross_entropy_with_logits(logit.float(), matched.float(), reduction="none")
    count = valid.sum().clamp(min=1)
    loss = torch.where(valid, per_sample, 0.0).sum() / count
    correct = ((logit > 0) == matched.bool()) & valid
    return loss, correct.sum().float() / count


def gather_rows(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows concatenated in rank order (gradients flow back to each rank's own rows), and the
    offset of this rank's first row. Ranks may hold different numbers of rows (dropped samples)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([len(local)], device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    padded = F.pad(local, (0, 0, 0, max(counts) - len(local)))
    parts = dist_nn.all_gather(padded)
    rows = torch.cat([part[:n] for part, n in zip(parts, counts)])
    return rows, sum(counts[:rank])


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if len(targets) == 0:
        return torch.zeros((), device=logits.device)
    return (logits.argmax(dim=-1) == targets).float().mean()
