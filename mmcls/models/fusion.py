"""Single-stream (VisualBERT-style) fusion classifier.

Text tokens are embedded by BERT's own embedding layer (token type 0). Frame features are projected to the BERT
width and given their own position table plus BERT's token-type embedding 1, then both sequences run jointly
through BERT's encoder layers under one padding mask::

    [CLS] title [SEP] asr [SEP] ocr [SEP] <pad>...  |  frame_1 ... frame_T (padded frames masked)

Frame positions do not depend on the text length, so padding the text (or the frames) of a sample never changes
its logits. A video-only head on the projected frame features (before fusion) gives the auxiliary loss.

The model is an encoder and heads, as timm's models are (``forward_features``, ``forward_head``,
``reset_classifier``): the encoder (text embeddings, frame encoder + projection + frame embeddings, the BERT
layers, pooling) gives the pooled fused features and the pooled frame features; the heads (the fused classifier
and the video-only classifier) turn them into logits. Both live on the one module, so the parameter names do
not depend on the split; ``heads=False`` builds the encoder alone (pretraining adds its own heads).

A frame aggregator (``model.frame_aggregator``, :mod:`mmcls.models.aggregators`) may sit between the projection
and the frame embeddings: ``lstm``/``gru`` turn the frame tokens into context-aware ones (still one per frame);
``nextvlad`` pools them into one vector that is the video-only head's input and joins the joint sequence as one
extra token (after the frames, masked out for a sample without frames). The dual-stream variant
(:mod:`mmcls.models.dual_stream`) subclasses this model and shares its embeddings, aggregator, pooling and heads.

Parameter naming is part of the interface: ``frame_encoder.*`` (the image backbone), ``text_encoder.*`` (the
``BertModel``) and everything else is "head" (frame projection/embeddings, the aggregator, the classifiers); the trainer
assigns learning rates by these prefixes (see :meth:`MultimodalClassifier.param_group_of`). Model folders,
``model.init_from``, EMA and checkpoints rely on the names too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, cast

import torch
from torch import nn
from transformers import BertConfig, BertModel
from transformers.masking_utils import create_bidirectional_mask

from mmcls.config import CLIP_MEAN, CLIP_STD, Config, ConfigError, FrameConfig, ModelConfig
from mmcls.data.categories import CategoryMap
from mmcls.models.aggregators import NeXtVLAD, build_frame_aggregator
from mmcls.models.frame_encoder import (
    FrameEncoder,
    PretrainedWeightsError,
    build_frame_encoder,
    hub_unreachable,
)
from mmcls.names import LOGITS, VIDEO_LOGITS

DEFAULT_VOCAB_SIZE = 21128  # bert-base-chinese
POOLINGS = ("cls", "mean", "cls_mean")
log = logging.getLogger("mmcls.models")
_LAYER_RE = re.compile(r"^text_encoder\.encoder\.layer\.(\d+)\.")


class MultimodalClassifier(nn.Module):
    """Frames + text -> level-2 category logits (plus video-only logits for the auxiliary loss).

    Args:
        cfg: the ``model`` section of the config.
        image_size: frame size in pixels (``data.frames.image_size``); ignored by the identity encoder.
        vocab_size: tokenizer size, used for a randomly initialised BERT (``cfg.text_encoder`` null) unless
            ``cfg.bert_config`` sets ``vocab_size`` itself.
        pixel_mean, pixel_std: normalisation of uint8 frames (``data.frames.mean``/``std``), applied on the
            model's device by the frame encoder.
        feature_dim: width of the frame features the identity encoder takes (``data.frames.feature_dim``).
        heads: build the classifiers (``cfg.num_classes`` outputs each); False gives the encoder alone, whose
            :meth:`forward_features` works and :meth:`forward_head` refuses.
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
        super().__init__()
        if cfg.pooling not in POOLINGS:
            raise ValueError(f"model.pooling: unknown {cfg.pooling!r}; use one of {POOLINGS}")
        self.cfg = cfg
        self.image_size = image_size
        self.text_encoder = build_text_encoder(cfg, vocab_size)
        bert_cfg = self.text_encoder.config
        if bert_cfg.type_vocab_size < 2:
            raise ValueError(
                f"model.text_encoder: frame tokens use token type 1, but {cfg.text_encoder!r} has "
                f"type_vocab_size={bert_cfg.type_vocab_size}"
            )
        hidden = bert_cfg.hidden_size
        self.frame_encoder: FrameEncoder = build_frame_encoder(
            cfg.frame_encoder, image_size, pixel_mean=pixel_mean, pixel_std=pixel_std, feature_dim=feature_dim
        )
        self.frame_proj = nn.Linear(self.frame_encoder.output_dim, hidden)
        self.frame_position = nn.Embedding(cfg.max_frames, hidden)
        self.frame_norm = nn.LayerNorm(hidden, eps=bert_cfg.layer_norm_eps)
        self.frame_dropout = nn.Dropout(bert_cfg.hidden_dropout_prob)
        # Absent (no parameters) for model.frame_aggregator=none: the default model's names are unchanged.
        self.frame_aggregator = build_frame_aggregator(
            cfg, hidden, dropout=bert_cfg.hidden_dropout_prob, eps=bert_cfg.layer_norm_eps
        )
        self.classifier: nn.Sequential | None = None
        self.video_classifier: nn.Sequential | None = None
        if heads:
            self._build_heads(cfg.num_classes)
        # Multi-sample dropout (``train.multi_dropout``, set by the training task): in training, the heads
        # average the logits of this many dropout samples. Not an architecture setting: the weights and the
        # eval-mode outputs do not depend on it.
        self.head_samples = 1
        self._init_new_layers(bert_cfg.initializer_range)

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
        return_hidden: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Compute ``{"logits": [B, C], "video_logits": [B, C]}``: :meth:`forward_head` of
        :meth:`forward_features`.

        ``input_ids``/``attention_mask``: ``[B, L]``; ``frames``: ``[B, T, 3, H, W]`` uint8 pixels or normalised
        floats (or ``[B, T, D]`` features);
        ``frame_mask``: ``[B, T]`` bool, True for real frames (may be all False: the sample is then text only).
        With ``return_hidden`` the dict also holds ``pooled`` ``[B, P]``, ``hidden_states`` ``[B, L+T, H]``
        (text positions first) and ``joint_mask`` ``[B, L+T]``.
        """
        features = self.forward_features(input_ids, attention_mask, frames, frame_mask)
        out = self.forward_head(features)
        if return_hidden:
            out.update({k: features[k] for k in ("pooled", "hidden_states", "joint_mask")})
        return out

    def forward_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The encoder: ``pooled`` ``[B, P]`` (the fused sequence pooled by ``model.pooling``), ``video``
        ``[B, H]`` (the video-only head's input: the frame tokens' mean over real frames before fusion, or the
        NeXtVLAD vector), ``hidden_states`` ``[B, S, H]`` and ``joint_mask`` ``[B, S]`` (``S = L + T``, plus one
        for the NeXtVLAD token). Inputs as for :meth:`forward`."""
        frame_mask = frame_mask.bool()
        text_tokens = self.embed_text(input_ids)
        frame_tokens, frame_tokens_mask, video = self.frame_stream_input(frames, frame_mask)
        hidden_states = torch.cat([text_tokens, frame_tokens], dim=1)
        joint_mask = torch.cat([attention_mask.bool(), frame_tokens_mask], dim=1)
        hidden_states = self.encode(hidden_states, joint_mask)
        return {
            "pooled": self.pool(hidden_states, joint_mask),
            "video": video,
            "hidden_states": hidden_states,
            "joint_mask": joint_mask,
        }

    def frame_stream_input(
        self, frames: torch.Tensor, frame_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames -> the frame tokens that enter the fusion ``[B, T', H]``, their mask ``[B, T']`` and the
        video-only head's input ``[B, H]``: projection, the aggregator, position/type embeddings.

        ``T' = T`` except with NeXtVLAD, whose vector is appended as one more token (token type 1, no frame
        position; attended to only when the sample has a real frame).
        """
        frame_features = self.project_frames(frames)
        aggregator = self.frame_aggregator
        if aggregator is None or frame_features.shape[1] == 0:
            return self.embed_frames(frame_features), frame_mask, masked_mean(frame_features, frame_mask)
        if not isinstance(aggregator, NeXtVLAD):
            context = aggregator(frame_features, frame_mask)
            return self.embed_frames(context), frame_mask, masked_mean(context, frame_mask)
        video = aggregator(frame_features, frame_mask)
        frame_type = self.text_encoder.embeddings.token_type_embeddings.weight[1]
        extra = self.frame_dropout(self.frame_norm(video + frame_type)).unsqueeze(1)
        tokens = torch.cat([self.embed_frames(frame_features), extra], dim=1)
        return tokens, torch.cat([frame_mask, frame_mask.any(dim=1, keepdim=True)], dim=1), video

    def forward_head(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The heads over :meth:`forward_features`' output: ``logits`` from ``pooled`` (the fused classifier)
        and ``video_logits`` from ``video`` (the video-only classifier of the auxiliary loss)."""
        if self.classifier is None or self.video_classifier is None:
            raise RuntimeError(f"{type(self).__name__} was built without heads: use forward_features")
        return {
            LOGITS: self._head(self.classifier, features["pooled"]),
            VIDEO_LOGITS: self._head(self.video_classifier, features["video"]),
        }

    def reset_classifier(self, num_classes: int) -> None:
        """Fresh heads with ``num_classes`` outputs each, initialised as at construction; 0 removes the heads.
        ``cfg.num_classes`` follows a new class count, so a model folder saved afterwards describes the heads."""
        if not num_classes:
            self.classifier = self.video_classifier = None
            return
        self._build_heads(num_classes)
        for layer in self._head_layers():
            init_linear(layer, self.text_encoder.config.initializer_range)
        self.cfg = dataclasses.replace(self.cfg, num_classes=num_classes)

    def _head(self, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """``head(features)``; in training with ``head_samples = K > 1``, the mean over K dropout samples."""
        if not self.training or self.head_samples <= 1:
            return head(features)
        return torch.stack([head(features) for _ in range(self.head_samples)]).mean(dim=0)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """BERT's embeddings of the text tokens (token type 0): ``[B, L, H]``."""
        return self.text_encoder.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))

    def project_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frame encoder + projection to the BERT width: ``[B, T, H]`` (before position/type embeddings).

        A batch without any frame slot (``[B, 0]``: ``data.frames.source=none``, text-only training) gives
        ``[B, 0, H]``, which the rest of the forward treats as a text-only sequence.
        """
        if frames.dim() >= 2 and frames.shape[1] == 0:
            weight = self.frame_proj.weight
            return weight.new_zeros(frames.shape[0], 0, weight.shape[0])
        features = self.frame_encoder(frames)
        return self.frame_proj(features.to(self.frame_proj.weight.dtype))

    def embed_frames(self, frame_features: torch.Tensor) -> torch.Tensor:
        """Add frame position + token-type-1 embeddings, then LayerNorm and dropout: the frame tokens."""
        num_frames = frame_features.shape[1]
        if num_frames > self.cfg.max_frames:
            raise ValueError(
                f"got {num_frames} frames per sample, but model.max_frames is {self.cfg.max_frames}"
            )
        positions = self.frame_position.weight[:num_frames]
        frame_type = self.text_encoder.embeddings.token_type_embeddings.weight[1]
        return self.frame_dropout(self.frame_norm(frame_features + positions + frame_type))

    def encode(self, hidden_states: torch.Tensor, joint_mask: torch.Tensor) -> torch.Tensor:
        """Run BERT's encoder layers over the joint sequence; ``joint_mask`` is ``[B, S]`` bool (True = attend).

        transformers 5.x no longer builds the extended additive mask inside ``BertEncoder``: ``BertModel.forward``
        converts the 2-D mask with ``masking_utils.create_bidirectional_mask`` into whatever the configured
        attention implementation wants (a bool ``[B, 1, S, S]`` mask or None for sdpa, an additive float mask for
        eager, a BlockMask for flex) and the layers use it as is. The same function is used here.
        """
        mask = create_bidirectional_mask(
            config=self.text_encoder.config, inputs_embeds=hidden_states, attention_mask=joint_mask
        )
        return self.text_encoder.encoder(hidden_states, attention_mask=mask).last_hidden_state

    def pool(self, hidden_states: torch.Tensor, joint_mask: torch.Tensor) -> torch.Tensor:
        cls = hidden_states[:, 0]
        if self.cfg.pooling == "cls":
            return cls
        mean = masked_mean(hidden_states, joint_mask)
        return mean if self.cfg.pooling == "mean" else torch.cat([cls, mean], dim=-1)

    # ------------------------------------------------------------------------------------------ training aids
    @property
    def num_layers(self) -> int:
        """Number of BERT encoder layers (N)."""
        return self.text_encoder.config.num_hidden_layers

    @staticmethod
    def param_group_of(name: str) -> str:
        """``"frame_encoder"``, ``"text_encoder"`` or ``"head"`` for a parameter name of this model."""
        for prefix in ("frame_encoder", "text_encoder"):
            if name.startswith(prefix + "."):
                return prefix
        return "head"

    def layer_id_for(self, name: str) -> int:
        """Depth of a parameter for layer-wise LR decay: 0 = embeddings, 1..N = encoder layer, N+1 = heads.

        The frame encoder counts as 0 (it sits below the fusion layers; it has its own LR group anyway); the
        frame projection, frame position/type embeddings and the frame aggregator are new layers and count as
        heads (``train.head_lr``, no decay).
        """
        if name.startswith(("text_encoder.embeddings.", "frame_encoder.")):
            return 0
        match = _LAYER_RE.match(name)
        if match:
            return int(match.group(1)) + 1
        return self.num_layers + 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory in both the frame backbone and the BERT layers."""
        self.frame_encoder.set_grad_checkpointing(enable)
        # transformers 5.x renamed gradient_checkpointing_* to activation_checkpointing_* (old names deprecated).
        action = "enable" if enable else "disable"
        bert = self.text_encoder
        toggle = getattr(bert, f"activation_checkpointing_{action}", None) or getattr(
            bert, f"gradient_checkpointing_{action}"
        )
        toggle()

    def fsdp_units(self) -> list[nn.Module]:
        """The modules FSDP shards one by one (each BERT layer; the rest goes with the root): parameters are
        then gathered one layer at a time in forward and backward."""
        return list(self.text_encoder.encoder.layer)

    def _build_heads(self, num_classes: int) -> None:
        """The fused classifier (over the pooled fused sequence) and the video-only classifier, not initialised."""
        hidden = self.text_encoder.config.hidden_size
        pooled_dim = hidden * 2 if self.cfg.pooling == "cls_mean" else hidden
        self.classifier = nn.Sequential(nn.Dropout(self.cfg.dropout), nn.Linear(pooled_dim, num_classes))
        if (
            self.cfg.label_embedding != "none"
        ):  # multilabel: scores against class vectors (label_embedding.py)
            from mmcls.models.label_embedding import label_embedding_head

            self.classifier = label_embedding_head(
                pooled_dim,
                num_classes,
                self.cfg.label_embedding_dim,
                self.cfg.dropout,
                self.cfg.label_embedding_trainable,
            )
        self.video_classifier = nn.Sequential(nn.Dropout(self.cfg.dropout), nn.Linear(hidden, num_classes))

    def _head_layers(self) -> list[nn.Linear]:
        # Every head _build_heads makes is Sequential(Dropout, Linear, ...): item 1 is its linear layer.
        return [
            cast(nn.Linear, head[1]) for head in (self.classifier, self.video_classifier) if head is not None
        ]

    def _init_new_layers(self, std: float) -> None:
        # Same scheme as BERT's own init, so the new tokens start on the scale the encoder expects. The
        # recurrent aggregators keep torch's own init (uniform, scaled to their width).
        for module in (self.frame_proj, *self._head_layers()):
            init_linear(module, std)
        nn.init.normal_(self.frame_position.weight, std=std)
        if isinstance(self.frame_aggregator, NeXtVLAD):
            for sub in self.frame_aggregator.modules():
                if isinstance(sub, nn.Linear):
                    init_linear(sub, std)
            nn.init.normal_(self.frame_aggregator.centroids, std=std)


def init_linear(layer: nn.Linear, std: float) -> None:
    """BERT's init for a new linear layer: normal weights of standard deviation ``std``, zero bias."""
    nn.init.normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``[B, S, H]`` over positions where ``mask`` ``[B, S]`` is True; zeros if none."""
    mask = mask.bool().unsqueeze(-1)
    # where() rather than a product, so that non-finite values at padded positions cannot leak in.
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(dim=1)
    return total / mask.sum(dim=1).clamp(min=1).to(values.dtype)


def check_model_config(config: Config) -> None:
    """Raise ConfigError where ``data.frames`` and ``model`` disagree (frame count, features vs. encoder)."""
    frames, model = config.data.frames, config.model
    if frames.source != "none" and frames.max_frames > model.max_frames:
        raise ConfigError(
            f"data.frames.max_frames={frames.max_frames} exceeds model.max_frames={model.max_frames} "
            f"(the size of the frame position table)"
        )
    encoder = model.frame_encoder
    if frames.source == "zip_feats" and encoder.type != "identity":
        raise ConfigError(
            "data.frames.source=zip_feats gives features: set model.frame_encoder.type=identity"
        )


def build_text_encoder(cfg: ModelConfig, vocab_size: int | None = None) -> BertModel:
    """``BertModel`` (no pooler) from ``cfg.text_encoder`` (hub name or local dir) or random init.

    ``cfg.bert_config`` overrides config values in both cases (e.g. ``hidden_dropout_prob``); for random init
    it is the whole architecture on top of BERT's defaults.
    """
    overrides = dict(cfg.bert_config)
    if cfg.text_encoder is None:
        if vocab_size and overrides.get("vocab_size", vocab_size) < vocab_size:
            raise ValueError(
                f"model.bert_config.vocab_size={overrides['vocab_size']} is smaller than the tokenizer ({vocab_size})"
            )
        overrides.setdefault("vocab_size", vocab_size or DEFAULT_VOCAB_SIZE)
        return BertModel(BertConfig(**overrides), add_pooling_layer=False)
    # model.init_layers without model.init_from selects layers of the pretrained BERT itself.
    chosen = list(cfg.init_layers or []) if not cfg.init_from else []
    if chosen and overrides.pop("num_hidden_layers", len(chosen)) != len(chosen):
        raise ConfigError(
            f"model.init_layers: {len(chosen)} layers {chosen} for a student with "
            f"model.bert_config.num_hidden_layers={cfg.bert_config['num_hidden_layers']}"
        )
    model = load_pretrained_bert(cfg.text_encoder, **overrides)
    if chosen:
        keep_bert_layers(model, chosen, source=cfg.text_encoder)
    if vocab_size and model.config.vocab_size < vocab_size:
        raise ValueError(
            f"model.text_encoder {cfg.text_encoder!r} has vocab_size={model.config.vocab_size}, "
            f"smaller than the tokenizer ({vocab_size})"
        )
    return model


def keep_bert_layers(model: BertModel, chosen: list[int], source: str) -> None:
    """Keep only BERT layers ``chosen`` (in that order) of ``model``: the student of ``model.init_layers``."""
    layers = model.encoder.layer
    wrong = [i for i in chosen if i >= len(layers)]
    if wrong or len(set(chosen)) != len(chosen):
        raise ConfigError(
            f"model.init_layers: {chosen} must name distinct layers of {source!r}, which has {len(layers)}"
        )
    model.encoder.layer = nn.ModuleList(layers[i] for i in chosen)
    model.config.num_hidden_layers = len(chosen)
    log.info(
        "model.init_layers: BERT layers %s of %s (of %d) kept as layers 0..%d",
        chosen,
        source,
        len(layers),
        len(chosen) - 1,
    )


def load_pretrained_bert(name_or_dir: str, **config_overrides: Any) -> BertModel:
    """``BertModel.from_pretrained`` that turns "not found" into a :class:`PretrainedWeightsError` with a fix."""
    local = os.path.isdir(name_or_dir)
    if not local and (name_or_dir.startswith(("/", ".", "~")) or name_or_dir.count("/") > 1):
        raise PretrainedWeightsError(
            f"model.text_encoder: local BERT directory {name_or_dir!r} does not exist. "
            + _bert_hint(name_or_dir)
        )
    kwargs: dict[str, Any] = {"add_pooling_layer": False, **config_overrides}
    try:
        if not local:
            try:
                # The cache first: a cached model then loads without any network round trip.
                return BertModel.from_pretrained(name_or_dir, local_files_only=True, **kwargs)
            except OSError:
                pass
            reason = hub_unreachable()
            if reason is not None:  # fail now with the fix, not after a minute of download retries
                raise PretrainedWeightsError(
                    f"model.text_encoder: BERT weights {name_or_dir!r} are not in the local caches and the hub "
                    f"is not used ({reason}). " + _bert_hint(name_or_dir)
                )
        return BertModel.from_pretrained(name_or_dir, **kwargs)
    except (OSError, ValueError) as exc:  # HFValidationError (a bad repo id) is a ValueError
        raise PretrainedWeightsError(
            f"model.text_encoder: could not load BERT weights {name_or_dir!r}: {exc}\n"
            + _bert_hint(name_or_dir)
        ) from exc


def _bert_hint(name: str) -> str:
    repo = name if name.count("/") == 1 and not name.startswith(("/", ".")) else "ORG/MODEL"
    return (
        f"Provide a local directory with config.json, the weights (model.safetensors or pytorch_model.bin) and "
        f"the vocabulary: on a connected machine run `hf download {repo} --local-dir DIR` (older huggingface_hub: "
        f"`huggingface-cli download ...`) and set model.text_encoder=DIR; or copy a Hugging Face cache that holds "
        f"it and point HF_HOME at it; or set model.text_encoder=null for a randomly initialised BERT. "
        f"Set HF_HUB_OFFLINE=1 to skip the network retries."
    )


def lv1_probs(logits: torch.Tensor, categories: CategoryMap) -> torch.Tensor:
    """Level-1 probabilities ``[B, num_lv1]``: the level-2 softmax summed within each level-1 group."""
    matrix = torch.as_tensor(categories.lv2_to_lv1_matrix(), device=logits.device)
    return logits.float().softmax(dim=-1) @ matrix
