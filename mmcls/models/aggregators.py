"""Frame aggregators (``model.frame_aggregator``): what happens to the projected frame features before fusion.

* ``lstm`` / ``gru``: a bidirectional recurrent layer with a residual connection and LayerNorm, so every frame
  token carries its context; the fusion still sees one token per frame.
* ``nextvlad``: NeXtVLAD pooling (Lin et al., 2018, the WBDC2021/TAAC2021/QQ Browser 2021 baselines): one video
  vector, the video-only head's input; the fusion models add it as one extra frame-side token.

Masks are respected exactly: padded frame slots never reach a recurrent state or a VLAD residual, so what a
padded slot holds cannot change a sample's output. The recurrent layers get that without packed sequences
(which ``torch.export`` cannot trace over a dynamic frame axis): the real frames of each sample are moved to the
front in order (a scatter), the forward direction runs over them (the padding behind them cannot reach them),
and the backward direction runs over each sample's real frames reversed in place (a gather), then everything
goes back to its slot. That is exactly a packed run per sample, and it exports to ONNX with a dynamic frame count.

The modules' parameters live under ``frame_aggregator.*``: a head-side module for the optimizer (``train.head_lr``,
layer id N+1 under layer decay: new weights like the projection they sit on).
"""

from __future__ import annotations

import torch
from torch import nn

from mmcls.config import ModelConfig

RECURRENT = {"lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentAggregator(nn.Module):
    """``LayerNorm(x + dropout([forward_rnn(x); backward_rnn(x)]))`` over each sample's real frames.

    Two unidirectional layers (``forward_rnn``, ``backward_rnn``) of half the width each, rather than one
    ``bidirectional=True`` module: the backward direction must start at each sample's last *real* frame.
    """

    def __init__(self, kind: str, hidden: int, *, dropout: float = 0.1, eps: float = 1e-12) -> None:
        super().__init__()
        if kind not in RECURRENT:
            raise ValueError(
                f"model.frame_aggregator: unknown recurrent kind {kind!r}; use {sorted(RECURRENT)}"
            )
        rnn = RECURRENT[kind]
        self.kind = kind
        self.forward_rnn = rnn(hidden, hidden // 2, batch_first=True)
        self.backward_rnn = rnn(hidden, hidden - hidden // 2, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 (torch's signature)
        """Module conversions as usual, except that the recurrent weights stay float32 (``.half()``, bf16).

        ``torch.export`` traces a half-precision LSTM/GRU as one step per frame, which fixed the frame count of
        an exported FP16 graph (``frames`` became the example's 2, silently); in float32 it stays one
        recurrent op over a dynamic frame axis. The recurrent weights are a small part of the model.
        """
        super()._apply(fn, recurse)
        for rnn in (self.forward_rnn, self.backward_rnn):
            if any(p.dtype != torch.float32 for p in rnn.parameters()):
                rnn.float()
        return self

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[B, T, H]``, ``mask`` ``[B, T]`` bool (True = real frame) -> ``[B, T, H]``."""
        dtype = tokens.dtype
        # The recurrence runs in float32 (see _apply); LayerNorm and the output are in the model's dtype.
        tokens = torch.where(mask.unsqueeze(-1), tokens.float(), torch.zeros((), dtype=torch.float32))
        real = mask.long()
        lengths = real.sum(dim=1, keepdim=True)
        # dest[b, t]: where slot t goes when the real frames are moved to the front (order kept), pads behind.
        dest = torch.where(mask, real.cumsum(dim=1) - 1, lengths + (1 - real).cumsum(dim=1) - 1)
        compact = torch.zeros_like(tokens).scatter(1, _expand(dest, tokens.shape[-1]), tokens)
        # rev[b, t]: the first ``length`` slots reversed, the pads left where they are (an involution).
        positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        rev = torch.where(positions < lengths, lengths - 1 - positions, positions)
        forward_out = self.forward_rnn(compact)[0]
        backward_out = self.backward_rnn(compact.gather(1, _expand(rev, tokens.shape[-1])))[0]
        backward_out = backward_out.gather(1, _expand(rev, backward_out.shape[-1]))
        context = torch.cat([forward_out, backward_out], dim=-1)
        context = context.gather(1, _expand(dest, context.shape[-1]))  # back to the original slots
        return self.norm((tokens + self.dropout(context)).to(dtype))


class NeXtVLAD(nn.Module):
    """NeXtVLAD: frames ``[B, T, H]`` -> one video vector ``[B, H]``.

    Each frame is expanded to ``expansion * H`` and split into ``groups`` groups of ``expansion * H / groups``;
    every group is softly assigned to ``clusters`` learned centres and weighted by a sigmoid attention of its
    frame; the weighted residuals to the centres are summed over frames and groups, L2-normalised per cluster
    (intra-normalisation), flattened and projected back to ``H`` (then LayerNorm). Padded frames get weight 0.
    """

    def __init__(
        self,
        hidden: int,
        *,
        clusters: int,
        groups: int,
        expansion: int,
        dropout: float = 0.1,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        wide = expansion * hidden
        if wide % groups:
            raise ValueError(
                f"model.nextvlad.groups={groups} must divide model.nextvlad.expansion x hidden size = {wide}"
            )
        self.clusters, self.groups, self.group_dim = clusters, groups, wide // groups
        self.expand = nn.Linear(hidden, wide)
        self.attention = nn.Linear(wide, groups)
        self.assign = nn.Linear(wide, groups * clusters)
        self.centroids = nn.Parameter(torch.zeros(clusters, self.group_dim))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(clusters * self.group_dim, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[B, T, H]``, ``mask`` ``[B, T]`` bool -> ``[B, H]`` (a sample without frames: the
        projection of an all-zero VLAD)."""
        batch, num_frames = tokens.shape[:2]
        tokens = torch.where(mask.unsqueeze(-1), tokens, torch.zeros((), dtype=tokens.dtype))
        wide = self.expand(tokens)  # [B, T, wide]
        weight = torch.sigmoid(self.attention(wide)) * mask.unsqueeze(-1).to(wide.dtype)  # [B, T, G]
        assign = self.assign(wide).reshape(batch, num_frames, self.groups, self.clusters).softmax(dim=-1)
        assign = (assign * weight.unsqueeze(-1)).reshape(batch, num_frames * self.groups, self.clusters)
        parts = wide.reshape(batch, num_frames * self.groups, self.group_dim)  # [B, T*G, D]
        # sum_n a[n, k] * (x[n] - c[k]) = (a^T x)[k] - (sum_n a[n, k]) * c[k]
        vlad = assign.transpose(1, 2) @ parts - assign.sum(dim=1).unsqueeze(-1) * self.centroids
        vlad = nn.functional.normalize(vlad, dim=-1)  # [B, K, D]
        return self.norm(self.out(self.dropout(vlad.flatten(1))))


def _expand(index: torch.Tensor, width: int) -> torch.Tensor:
    return index.unsqueeze(-1).expand(-1, -1, width)


def build_frame_aggregator(cfg: ModelConfig, hidden: int, *, dropout: float, eps: float) -> nn.Module | None:
    """The module for ``cfg.frame_aggregator`` (None for ``none``: the model then has no such parameters)."""
    kind = cfg.frame_aggregator
    if kind == "none":
        return None
    if kind in RECURRENT:
        return RecurrentAggregator(kind, hidden, dropout=dropout, eps=eps)
    if kind == "nextvlad":
        vlad = cfg.nextvlad
        return NeXtVLAD(
            hidden,
            clusters=vlad.clusters,
            groups=vlad.groups,
            expansion=vlad.expansion,
            dropout=dropout,
            eps=eps,
        )
    raise ValueError(f"model.frame_aggregator: unknown {kind!r}; use none, lstm, gru or nextvlad")
