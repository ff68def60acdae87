"""Models: frame encoders, the single-stream fusion classifier and the model folder format."""

from mmcls.models.frame_encoder import FrameEncoder, PretrainedWeightsError, build_frame_encoder
from mmcls.models.fusion import (
    MultimodalClassifier,
    build_model,
    build_text_encoder,
    load_pretrained_bert,
    lv1_probs,
    masked_mean,
)
from mmcls.models.init_from import InitFromError, InitFromReport, load_init_weights
from mmcls.models.model_dir import LoadedModel, load_model_dir, resolve_model_dir, save_model_dir

__all__ = [
    "FrameEncoder",
    "InitFromError",
    "InitFromReport",
    "LoadedModel",
    "MultimodalClassifier",
    "PretrainedWeightsError",
    "build_frame_encoder",
    "build_model",
    "build_text_encoder",
    "load_init_weights",
    "load_model_dir",
    "load_pretrained_bert",
    "lv1_probs",
    "masked_mean",
    "resolve_model_dir",
    "save_model_dir",
]
