"""Models: frame encoders, the fusion classifiers (single and dual stream, :func:`create_classifier` picks by
``model.fusion``), frame aggregators and the model folder format."""

from mmcls.models.dual_stream import DualStreamClassifier
from mmcls.models.factory import MODEL_CLASSES, build_model, create_classifier
from mmcls.models.frame_encoder import FrameEncoder, PretrainedWeightsError, build_frame_encoder
from mmcls.models.fusion import (
    MultimodalClassifier,
    build_text_encoder,
    load_pretrained_bert,
    lv1_probs,
    masked_mean,
)
from mmcls.models.init_from import InitFromError, InitFromReport, load_init_weights
from mmcls.models.model_dir import LoadedModel, load_model_dir, resolve_model_dir, save_model_dir

__all__ = [
    "MODEL_CLASSES",
    "DualStreamClassifier",
    "FrameEncoder",
    "InitFromError",
    "InitFromReport",
    "LoadedModel",
    "MultimodalClassifier",
    "PretrainedWeightsError",
    "build_frame_encoder",
    "build_model",
    "build_text_encoder",
    "create_classifier",
    "load_init_weights",
    "load_model_dir",
    "load_pretrained_bert",
    "lv1_probs",
    "masked_mean",
    "resolve_model_dir",
    "save_model_dir",
]
