"""Dual-stream fusion (``model.fusion: dual_stream``): text and frames encoded apart, then co-attention layers.

::

    text  -> BERT (all its layers, text alone) ----------------\\
                                                                 cross layer x C -> pool -> fused classifier
    frames -> frame encoder -> projection -> [aggregator] ->     /
              embeddings -> frame layers x F (frames alone) --+-> mean over real frames -> video-only classifier

Each cross layer is co-attention (LXMERT/ALBEF style), not a merged stream: the text stream attends to itself,
then to the frames, then a feed-forward; the frame stream likewise attends to itself, then to the text. Both
read the previous layer's outputs. Why co-attention: a merged stream (one self-attention over text and frame
tokens) is what the single-stream model already does in every layer, so its errors would correlate with the
single-stream model's; an ensemble gains from the difference. Co-attention also keeps each stream's own
weights, so the text stream is exactly a BERT that a single-stream or pretraining run initialises.

The model shares everything but the encoder with :class:`~mmcls.models.fusion.MultimodalClassifier` (it is a
subclass): the text and frame embeddings, the frame aggregator, ``model.pooling`` over the final text and frame
tokens (so the fused classifier has the single-stream shape) and both heads. New parameters: ``frame_layers.*``
and ``cross_layers.*``; every other name is the single-stream model's, so ``model.init_from`` loads BERT, the
frame tower, the projection (and the heads) from a single-stream model folder or a pretraining run.

Masks: padded frame tokens are zeroed after every layer and never attended to; a sample without any frame
attends to nothing across (its text stream's cross-attention output is zero), so it is a text-only sample.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmcls.config import CLIP_MEAN, CLIP_STD, FrameConfig, ModelConfig
from mmcls.models.aggregators import NeXtVLAD
from mmcls.models.fusion import MultimodalClassifier, masked_mean

_FRAME_LAYER_RE = re.compile(r"^frame_layers\.(\d+)\.")
_CROSS_LAYER_RE = re.compile(r"^cross_layers\.(\d+)\.")
# The transformer layers train with BERT's LR (train.lr); a head LR would be too large for them.
_TRANSFORMER_PREFIXES = ("text_encoder.", "frame_layers.", "cross_layers.")


class StreamLayer(nn.Module):
    """A post-LayerNorm transformer layer (BERT's order): self-attention, [cross-attention,] feed-forward.

    ``nn.MultiheadAttention`` rather than a hand-written attention: ``torch.onnx.export(dynamo=True)`` keeps its
    sequence lengths dynamic.
    """

    def __init__(
        self,
        hidden: int,
        heads: int,
        intermediate: int,
        *,
        dropout: float,
        attention_dropout: float,
        eps: float,
        cross: bool,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden, heads, dropout=attention_dropout, batch_first=True)
        self.self_norm = nn.LayerNorm(hidden, eps=eps)
        self.cross_attn: nn.MultiheadAttention | None = None
        self.cross_norm: nn.LayerNorm | None = None
        if cross:
            self.cross_attn = nn.MultiheadAttention(
                hidden, heads, dropout=attention_dropout, batch_first=True
            )
            self.cross_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(hidden, intermediate), nn.GELU(), nn.Linear(intermediate, hidden))
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        other: torch.Tensor | None = None,
        other_mask: torch.Tensor | None = None,
        other_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, S, H]`` with ``mask`` ``[B, S]`` (True = attend; no all-False row); ``other`` ``[B, S2, H]``
        with ``other_mask``; ``other_present`` ``[B]`` bool: False zeroes the cross-attention (nothing there)."""
        attended = self.self_attn(x, x, x, key_padding_mask=~mask, need_weights=False)[0]
        x = self.self_norm(x + self.dropout(attended))
        if self.cross_attn is not None and self.cross_norm is not None and other is not None:
            padding = (
                None if other_mask is None else ~other_mask
            )  # no mask: every position of ``other`` counts
            attended = self.cross_attn(x, other, other, key_padding_mask=padding, need_weights=False)[0]
            if other_present is not None:
                attended = attended * other_present.to(attended.dtype)[:, None, None]
            x = self.cross_norm(x + self.dropout(attended))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class CoAttentionLayer(nn.Module):
    """One cross layer: the text stream attends to the frames, the frame stream to the text (both from the
    previous layer's outputs)."""

    def __init__(self, **layer_kwargs: Any) -> None:
        super().__init__()
        self.text = StreamLayer(**layer_kwargs, cross=True)
        self.frames = StreamLayer(**layer_kwargs, cross=True)

    def forward(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
        attend_mask: torch.Tensor,
        present: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new_text = self.text(text, text_mask, frames, attend_mask, present)
        new_frames = self.frames(frames, attend_mask, text, text_mask)
        return new_text, _zero_padding(new_frames, frame_mask)


class DualStreamClassifier(MultimodalClassifier):
    """Frames + text -> logits through two streams joined by ``model.dual.cross_layers`` co-attention layers.

    Arguments as for :class:`~mmcls.models.fusion.MultimodalClassifier`; ``cfg.dual`` sets the layer counts.
    The new layers take BERT's width, head count, feed-forward size, dropout and init.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        image_size: int = 224,
        vocab_size: int | None = None,
        pixel_mean: tuple[float, ...] = CLIP_MEAN,
        pixel_std: tuple[float, ...] = CLIP_STD,
        feature_dim: int = FrameConfig.feature_dim,
        *,
        heads: bool = True,
    ) -> None:
        super().__init__(cfg, image_size, vocab_size, pixel_mean, pixel_std, feature_dim, heads=heads)
        bert = self.text_encoder.config
        layer_kwargs: dict[str, Any] = {  # StreamLayer's sizes, from BERT's config
            "hidden": bert.hidden_size,
            "heads": bert.num_attention_heads,
            "intermediate": bert.intermediate_size,
            "dropout": bert.hidden_dropout_prob,
            "attention_dropout": bert.attention_probs_dropout_prob,
            "eps": bert.layer_norm_eps,
        }
        self.frame_layers = nn.ModuleList(
            StreamLayer(**layer_kwargs, cross=False) for _ in range(cfg.dual.frame_layers)
        )
        self.cross_layers = nn.ModuleList(
            CoAttentionLayer(**layer_kwargs) for _ in range(cfg.dual.cross_layers)
        )
        self.grad_checkpointing = False
        for module in (*self.frame_layers, *self.cross_layers):
            _init_bert_style(module, bert.initializer_range)

    def forward_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """``pooled`` (``model.pooling`` over the final text and frame tokens), ``video`` (the frame stream's
        mean over real frames before the cross layers, or the NeXtVLAD vector), ``hidden_states``
        ``[B, L+T', H]`` and ``joint_mask``. Inputs as for :meth:`forward`."""
        text_mask = attention_mask.bool()
        text = self.encode(self.embed_text(input_ids), text_mask)  # BERT over the text alone
        num_frames = frames.shape[1]
        tokens, mask, video = self.frame_stream_input(frames, frame_mask.bool())
        present = mask.any(dim=1)
        # A sample without frames attends to its (zeroed) padding rather than to nothing: a fully masked
        # softmax is NaN. Its frame tokens are never read (masked and pooled away, cross output zeroed).
        attend_mask = mask | ~present.unsqueeze(1)
        tokens = _zero_padding(tokens, mask)
        for layer in self.frame_layers:
            tokens = _zero_padding(self._run(layer, tokens, attend_mask), mask)
        if not isinstance(self.frame_aggregator, NeXtVLAD):
            video = masked_mean(tokens[:, :num_frames], mask[:, :num_frames])
        for layer in self.cross_layers:
            text, tokens = self._run(layer, text, text_mask, tokens, mask, attend_mask, present)
        hidden_states = torch.cat([text, tokens], dim=1)
        joint_mask = torch.cat([text_mask, mask], dim=1)
        return {
            "pooled": self.pool(hidden_states, joint_mask),
            "video": video,
            "hidden_states": hidden_states,
            "joint_mask": joint_mask,
        }

    def _run(self, layer: nn.Module, *args: torch.Tensor):
        if self.grad_checkpointing and self.training:
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    # ------------------------------------------------------------------------------------------ training aids
    @property
    def num_layers(self) -> int:
        """Depth of the layer-decay ladder: BERT's N layers, then the C cross layers on top."""
        return self.text_encoder.config.num_hidden_layers + len(self.cross_layers)

    @staticmethod
    def param_group_of(name: str) -> str:
        """``"frame_encoder"``, ``"text_encoder"`` (BERT, the frame layers and the cross layers: the
        transformer layers, trained at ``train.lr``) or ``"head"``."""
        if name.startswith("frame_encoder."):
            return "frame_encoder"
        if name.startswith(_TRANSFORMER_PREFIXES):
            return "text_encoder"
        return "head"

    def layer_id_for(self, name: str) -> int:
        """Layer-decay depth: 0 = embeddings (and the frame tower), BERT layer i = i + 1, frame layer j =
        j + 1 (the same distance from its input as BERT's layer j, at most N), cross layer k = N + 1 + k (the
        top layers), N + C + 1 = projection, aggregator and heads."""
        bert_layers = self.text_encoder.config.num_hidden_layers
        match = _FRAME_LAYER_RE.match(name)
        if match:
            return min(int(match.group(1)) + 1, bert_layers)
        match = _CROSS_LAYER_RE.match(name)
        if match:
            return bert_layers + 1 + int(match.group(1))
        layer = super().layer_id_for(name)
        return self.num_layers + 1 if layer == bert_layers + 1 else layer

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        self.grad_checkpointing = enable

    def fsdp_units(self) -> list[nn.Module]:
        """Every transformer layer: BERT's, the frame layers and the cross layers."""
        return [*super().fsdp_units(), *self.frame_layers, *self.cross_layers]


def _zero_padding(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.unsqueeze(-1), tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))


def _init_bert_style(module: nn.Module, std: float) -> None:
    """BERT's init for new transformer layers: normal(std) matrices, zero biases, unit LayerNorms."""
    for name, param in module.named_parameters():
        if isinstance(param, nn.Parameter) and param.ndim >= 2:
            nn.init.normal_(param, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(param)
