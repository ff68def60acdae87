"""Label embeddings from label co-occurrence (``model.label_embedding: pmi``) and the head that uses them.

With many tags, few examples per tag and noisy labels, a plain linear head learns every class vector on its
own. Classes that co-occur carry information about each other: the pointwise mutual information of two
classes over the training split, ``PMI(i, j) = log(P(i, j) / (P(i) P(j)))``, is high for tags that go together.
The positive part of the PMI matrix (PPMI: pairs never or less than chance seen together are 0) is factorised
by SVD, ``PPMI = U S V^T``, and class ``i``'s vector is row ``i`` of ``U_d sqrt(S_d)`` (the first ``d``
components), scaled to unit length; a class never seen has a zero vector. The classifier then scores a video
by the dot product of its projected representation with every class vector (plus a per-class bias), so
co-occurring classes start close and share what is learned about them. The vectors are trainable or frozen
(``model.label_embedding_trainable``) and are part of the model's weights (``classifier.2.vectors`` in
``model.safetensors``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def pmi_matrix(labels: np.ndarray) -> np.ndarray:
    """``[C, C]`` positive PMI of the 0/1 label rows ``labels`` ``[N, C]`` (rows of -1, unknown, are skipped)."""
    labels = np.asarray(labels)
    labels = labels[(labels >= 0).all(axis=1)].astype(np.float64)
    n = max(len(labels), 1)
    joint = labels.T @ labels  # co-occurrence counts; the diagonal holds each class's count
    counts = np.diag(joint)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(joint * n / np.outer(counts, counts))
    return np.where(np.isfinite(pmi) & (joint > 0), np.maximum(pmi, 0.0), 0.0)


def pmi_embedding(labels: np.ndarray, dim: int) -> np.ndarray:
    """``[C, dim]`` float32 class vectors from the SVD of :func:`pmi_matrix` (see the module docstring); columns
    beyond the matrix's rank are zero."""
    pmi = pmi_matrix(labels)
    u, s, _ = np.linalg.svd(pmi)
    k = min(dim, len(s))
    vectors = np.zeros((pmi.shape[0], dim))
    vectors[:, :k] = u[:, :k] * np.sqrt(s[:k])
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0).astype(np.float32)


class LabelDot(nn.Module):
    """``x [B, dim] -> x @ vectors.T + bias`` ``[B, C]``: scores against class vectors (trainable or frozen)."""

    def __init__(self, num_classes: int, dim: int, trainable: bool = True) -> None:
        super().__init__()
        self.vectors = nn.Parameter(torch.zeros(num_classes, dim), requires_grad=trainable)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.vectors.t() + self.bias

    @torch.no_grad()
    def set_vectors(self, vectors: np.ndarray | torch.Tensor) -> None:
        self.vectors.copy_(torch.as_tensor(vectors, dtype=self.vectors.dtype))


def label_embedding_head(
    in_dim: int, num_classes: int, dim: int, dropout: float, trainable: bool = True
) -> nn.Sequential:
    """Dropout, a projection to ``dim`` (``[1]``, a plain ``nn.Linear`` initialised like the other heads) and
    :class:`LabelDot` (``[2]``; its vectors are set from the training labels by the multilabel setup)."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, dim), LabelDot(num_classes, dim, trainable))
