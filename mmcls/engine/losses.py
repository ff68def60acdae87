"""Loss terms of the training recipe, as plain functions of logits, labels and class counts.

The challenge score is half macro F1 over a long-tailed label set (13 of 200 classes hold half the videos),
so the recipe can trade a little accuracy on the head classes for recall on the tail: class-balanced weights
in training, logit adjustment at prediction, a soft-F1 term. R-Drop and the level-1 loss regularise.

Every term here is a mean over the samples of the (local) batch divided by a constant, never by a batch
statistic, where that is possible: under DDP the mean of the ranks' losses is then the loss one process
computes on the whole batch, and a 2-process run learns what a 1-process run does. Soft F1 is the exception
(an F1 over a batch is not a mean over samples); see :func:`soft_f1_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def smoothed_counts(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Add-one counts: a class absent from the training split behaves as if seen once (finite weight/prior)."""
    return np.asarray(counts, dtype=np.float64) + 1.0


def class_weights(counts: Sequence[int] | np.ndarray, alpha: float) -> np.ndarray:
    """``w_c ∝ (n_c + 1)^-alpha``, scaled so that the mean weight over the training samples is 1.

    ``alpha = 0`` gives all ones, ``alpha = 1`` inverse frequency. The scale (``sum_c n_c w_c = sum_c n_c``)
    keeps the loss, and so the useful learning rate, on the scale of the unweighted loss; it is a constant,
    not the batch's weight sum, so the weighted loss stays a plain mean over samples (see the module doc).
    """
    raw_counts = np.asarray(counts, dtype=np.float64)
    weights = smoothed_counts(raw_counts) ** -float(alpha)
    total = raw_counts.sum()
    if total > 0:
        weights *= total / float((raw_counts * weights).sum())
    return weights


def log_prior(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """``log p_c`` of the add-one smoothed class frequencies (for logit adjustment)."""
    smoothed = smoothed_counts(counts)
    return np.log(smoothed / smoothed.sum())


def adjust_logits(log_probs_or_logits: np.ndarray, prior_log: np.ndarray, tau: float) -> np.ndarray:
    """Logit adjustment: subtract ``tau * log prior``; ``tau = 0`` returns the input unchanged.

    Works on logits or log-probabilities alike (they differ by a per-row constant, which argmax and softmax
    ignore).
    """
    if tau == 0:
        return log_probs_or_logits
    return log_probs_or_logits - tau * prior_log[None, :]


def per_sample_ce(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, reduction="none")


def weighted_mean(
    per_sample: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum_i w_{y_i} m_i l_i / sum_i m_i``: class-weighted mean over the samples where ``mask`` is True."""
    if weights is not None:
        per_sample = per_sample * weights[labels]
    if mask is None:
        return per_sample.mean()
    return torch.where(mask, per_sample, 0.0).sum() / mask.sum().clamp(min=1)


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """R-Drop's term: ``(KL(p_a || p_b) + KL(p_b || p_a)) / 2`` per sample, averaged over the batch."""
    log_a, log_b = logits_a.float().log_softmax(-1), logits_b.float().log_softmax(-1)
    kl_ab = F.kl_div(log_b, log_a, log_target=True, reduction="none").sum(-1)  # KL(p_a || p_b)
    kl_ba = F.kl_div(log_a, log_b, log_target=True, reduction="none").sum(-1)
    return 0.5 * (kl_ab + kl_ba).mean()


def lv1_nll(logits: torch.Tensor, labels: torch.Tensor, lv2_to_lv1: torch.Tensor) -> torch.Tensor:
    """Per-sample NLL of the true level-1 class under the level-2 softmax summed within each level-1 group.

    The challenge derives the level-1 prediction from the level-2 one, so the level-1 signal is put on the
    level-2 logits themselves rather than on a separate head whose output would never be used.
    """
    lv1_probs = logits.float().softmax(-1) @ lv2_to_lv1
    lv1_labels = lv2_to_lv1[labels].argmax(-1)
    return -lv1_probs.gather(1, lv1_labels[:, None]).squeeze(1).clamp(min=1e-12).log()


def soft_f1_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``1 - soft macro F1`` of the softmax over this batch, averaged over the classes present in it.

    Soft counts: ``tp_c = sum_i p_ic y_ic``, ``fp_c = sum_i p_ic (1 - y_ic)``, ``fn_c = sum_i (1 - p_ic) y_ic``.
    F1 is not a mean over samples, so under DDP each rank's term is its local batch's F1 (what a single
    process with that local batch would compute), not the global batch's.
    """
    probs = logits.float().softmax(-1)
    onehot = F.one_hot(labels, probs.shape[-1]).to(probs.dtype)
    tp = (probs * onehot).sum(0)
    fp = (probs * (1 - onehot)).sum(0)
    fn = ((1 - probs) * onehot).sum(0)
    f1 = 2 * tp / (2 * tp + fp + fn).clamp(min=1e-8)
    present = onehot.sum(0) > 0
    if not bool(present.any()):  # no labeled sample: a zero that keeps the logits in the graph
        return probs.sum() * 0.0
    return 1.0 - f1[present].mean()


def multilabel_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample binary cross-entropy summed over the classes ``[B]`` (0/1 ``targets`` ``[B, C]``).

    Summed, not averaged, over the classes: with hundreds of classes a mean would shrink every gradient by the
    class count, and the sum keeps BCE and the asymmetric loss on one scale.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").sum(dim=1)


def asymmetric_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma_pos: float, gamma_neg: float, clip: float
) -> torch.Tensor:
    """Per-sample asymmetric loss (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", 2021) ``[B]``.

    Positives: ``(1 - p)^gamma_pos * log(p)``; negatives: ``p_m^gamma_neg * log(1 - p_m)`` with the shifted
    probability ``p_m = max(p - clip, 0)``, so easy negatives (most of the classes of every video) are
    down-weighted and the very easy ones (``p < clip``) drop out. ``gamma_pos = gamma_neg = clip = 0`` is BCE.
    Summed over the classes like :func:`multilabel_bce`.
    """
    logits, targets = logits.float(), targets.float()
    probs = torch.sigmoid(logits)
    log_pos = F.logsigmoid(logits)
    if clip > 0:
        shifted = (probs - clip).clamp(min=0)
        log_neg = torch.log1p(-shifted.clamp(max=1 - 1e-6))
    else:
        shifted = probs
        log_neg = F.logsigmoid(-logits)
    pos = targets * log_pos
    neg = (1 - targets) * log_neg
    if gamma_pos:
        pos = pos * (1 - probs).pow(gamma_pos)
    if gamma_neg:
        neg = neg * shifted.pow(gamma_neg)
    return -(pos + neg).sum(dim=1)
