"""The model factory: ``model.fusion`` -> the classifier class, in the spirit of timm's ``create_model``.

Every place that builds a classifier from a config (training, model folders, benchmarks) goes through
:func:`create_classifier`, so a new fusion variant is one class and one line here.
"""

from __future__ import annotations

from typing import Any

from mmcls.config import Config, ModelConfig
from mmcls.models.dual_stream import DualStreamClassifier
from mmcls.models.fusion import MultimodalClassifier, check_model_config

MODEL_CLASSES: dict[str, type[MultimodalClassifier]] = {
    "single_stream": MultimodalClassifier,
    "dual_stream": DualStreamClassifier,
}


def create_classifier(cfg: ModelConfig, **kwargs: Any) -> MultimodalClassifier:
    """The classifier class ``cfg.fusion`` names, built with ``kwargs`` (see ``MultimodalClassifier``)."""
    try:
        model_class = MODEL_CLASSES[cfg.fusion]
    except KeyError:
        raise ValueError(
            f"model.fusion: unknown {cfg.fusion!r}; use one of {sorted(MODEL_CLASSES)}"
        ) from None
    return model_class(cfg, **kwargs)


def build_model(config: Config, vocab_size: int | None = None) -> MultimodalClassifier:
    """The classifier for a full config (frame size from ``data.frames``); checks data/model consistency."""
    check_model_config(config)
    frames, model = config.data.frames, config.model
    return create_classifier(
        model,
        image_size=frames.image_size,
        vocab_size=vocab_size,
        pixel_mean=tuple(frames.mean),
        pixel_std=tuple(frames.std),
        feature_dim=frames.feature_dim,
    )
