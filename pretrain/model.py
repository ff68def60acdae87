"""The pretraining model: the fine-tuning backbone with pretraining heads instead of classifiers.

:class:`PretrainingModel` *is* a :class:`~mmcls.models.MultimodalClassifier` built without its two classifiers
(the encoder alone, ``heads=False``) plus the pretraining heads, so its parameter names are the classifier's (``text_encoder.*``, ``frame_encoder.*``, ``frame_proj.*``, ...): a
pretraining model folder loads into the classifier with ``model.init_from``, which reports exactly
``classifier.*`` and ``video_classifier.*`` as missing and the pretraining heads as unexpected. Only the heads
of enabled objectives are built: under DDP every parameter must receive a gradient each step.

One ``forward`` computes everything the objectives need (DDP expects one forward per backward):

- the fused pass over (MLM-masked text, frames with MFM-masked slots, frames swapped for VTM);
- MLM logits at the masked text positions, from a head whose output matrix *is* the word-embedding table
  (used through ``F.linear``, not a second parameter, so the saved file has one copy under BERT's name);
- MFM predictions at the masked frame slots, and the frame features they should match;
- the VTM logit from the pooled fused output;
- for ITC, a text-only pass (original ids) and the frames' mean feature, each projected and L2-normalised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmcls.config import CLIP_MEAN, CLIP_STD, Config, ConfigError, FrameConfig, ModelConfig
from mmcls.models import MultimodalClassifier, masked_mean
from mmcls.models.fusion import check_model_config, init_linear
from mmcls.pretrain.config import PretrainSection


class PretrainingModel(MultimodalClassifier):
    def __init__(
        self,
        cfg: ModelConfig,
        objectives: PretrainSection,
        image_size: int = 224,
        vocab_size: int | None = None,
        pixel_mean: tuple[float, ...] = CLIP_MEAN,
        pixel_std: tuple[float, ...] = CLIP_STD,
        feature_dim: int = FrameConfig.feature_dim,
    ) -> None:
        super().__init__(cfg, image_size, vocab_size, pixel_mean, pixel_std, feature_dim, heads=False)
        weights = objectives.weights()
        bert = self.text_encoder.config
        hidden, std = bert.hidden_size, bert.initializer_range
        pooled_dim = hidden * (2 if cfg.pooling == "cls_mean" else 1)
        self.objectives = tuple(name for name, weight in weights.items() if weight > 0)
        if "mlm" in self.objectives:
            # BERT's prediction-head transform; the decoder matrix is the word-embedding table (tied).
            transform = nn.Linear(hidden, hidden)
            self.mlm_transform = nn.Sequential(
                transform, nn.GELU(), nn.LayerNorm(hidden, eps=bert.layer_norm_eps)
            )
            self.mlm_bias = nn.Parameter(torch.zeros(bert.vocab_size))
            init_linear(transform, std)
        if "mfm" in self.objectives:
            self.mfm_head = nn.Linear(hidden, hidden)
            init_linear(self.mfm_head, std)
        if "vtm" in self.objectives:
            self.vtm_head = nn.Linear(pooled_dim, 1)
            init_linear(self.vtm_head, std)
        if "itc" in self.objectives:
            self.itc_text_proj = nn.Linear(hidden, objectives.itc_dim)
            self.itc_video_proj = nn.Linear(hidden, objectives.itc_dim)
            init_linear(self.itc_text_proj, std)
            init_linear(self.itc_video_proj, std)
            # CLIP's parametrisation: logit scale = exp(itc_logit_scale) = 1 / temperature.
            self.itc_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / objectives.itc_init_temperature)))

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
        mlm_labels: torch.Tensor | None = None,
        mfm_mask: torch.Tensor | None = None,
        vtm_source: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Outputs for the enabled objectives (see the module docstring).

        ``mlm_labels`` ``[B, L]``: original ids at masked text positions, -100 elsewhere. ``mfm_mask`` ``[B, T]``
        bool: frame slots replaced by zeros before fusion. ``vtm_source`` ``[B]`` long: sample ``i`` is fused
        with the frames of sample ``vtm_source[i]`` (``i`` itself for a matched pair).
        """
        frame_mask = frame_mask.bool()
        features = self.project_frames(frames)  # [B, T, H]
        out: dict[str, torch.Tensor] = {}
        if "itc" in self.objectives:
            original_ids = (
                input_ids if mlm_labels is None else torch.where(mlm_labels >= 0, mlm_labels, input_ids)
            )
            out.update(self._itc_embeddings(original_ids, attention_mask, features, frame_mask))

        shown, shown_mask = features, frame_mask
        if vtm_source is not None:
            shown, shown_mask = features[vtm_source], frame_mask[vtm_source]
        fused_frames = shown
        if mfm_mask is not None:
            fused_frames = torch.where(mfm_mask.unsqueeze(-1), torch.zeros_like(shown), shown)
        text_tokens = self.embed_text(input_ids)
        joint = torch.cat([text_tokens, self.embed_frames(fused_frames)], dim=1)
        joint_mask = torch.cat([attention_mask.bool(), shown_mask], dim=1)
        hidden = self.encode(joint, joint_mask)
        text_len = input_ids.shape[1]

        if "mlm" in self.objectives and mlm_labels is not None:
            selected = mlm_labels >= 0
            states = self.mlm_transform(hidden[:, :text_len][selected])
            word_embeddings = self.text_encoder.embeddings.word_embeddings.weight
            out["mlm_logits"] = F.linear(states, word_embeddings, self.mlm_bias)  # [M, V]
            out["mlm_targets"] = mlm_labels[selected]
        if "mfm" in self.objectives and mfm_mask is not None:
            out["mfm_pred"] = self.mfm_head(hidden[:, text_len:][mfm_mask])  # [M, H]
            # Targets: every real frame shown in the batch; a masked slot's own frame is the positive.
            out["mfm_keys"] = shown[shown_mask].detach()  # [N, H]
            slot_number = torch.cumsum(shown_mask.flatten().long(), 0) - 1  # flat slot -> row of mfm_keys
            out["mfm_targets"] = slot_number[mfm_mask.flatten()]
        if "vtm" in self.objectives:
            out["vtm_logit"] = self.vtm_head(self.pool(hidden, joint_mask)).squeeze(-1)
        return out

    def _itc_embeddings(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        features: torch.Tensor,
        frame_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        text_tokens = self.embed_text(input_ids)
        text_hidden = self.encode(text_tokens, attention_mask.bool())
        text = masked_mean(text_hidden, attention_mask)
        video = masked_mean(features, frame_mask)
        return {
            "itc_text": F.normalize(self.itc_text_proj(text).float(), dim=-1),
            "itc_video": F.normalize(self.itc_video_proj(video).float(), dim=-1),
            # Clamped as in CLIP: a scale above 100 makes the softmax unstable.
            "itc_scale": self.itc_logit_scale.clamp(max=math.log(100.0)).exp(),
        }


def build_pretraining_model(
    config: Config, objectives: PretrainSection, vocab_size: int | None
) -> PretrainingModel:
    """The pretraining model for ``config``, with the same data/model checks as the classifier's builder."""
    check_model_config(config)
    model = config.model
    if model.fusion != "single_stream" or model.frame_aggregator != "none":
        # The pretraining forward is the single-stream encoder's; fine-tune a variant with model.init_from.
        raise ConfigError(
            f"pretraining builds the single-stream encoder without a frame aggregator (got model.fusion="
            f"{model.fusion}, model.frame_aggregator={model.frame_aggregator}); pretrain the default and "
            "fine-tune the variant with model.init_from"
        )
    frames = config.data.frames
    return PretrainingModel(
        config.model,
        objectives,
        image_size=frames.image_size,
        vocab_size=vocab_size,
        pixel_mean=tuple(frames.mean),
        pixel_std=tuple(frames.std),
        feature_dim=frames.feature_dim,
    )
