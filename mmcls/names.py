"""The names that cross module boundaries, each written once: tensor names, file names, choice lists.

A model's inputs are produced by the data pipeline and the server's request decoder and consumed by the
training loop, the inference loop and every exported graph; a model folder is written by training and read by
``predict``, ``export`` and the workflows; the Triton model's name and tensors are shared by the repository
writer, the Python-backend model, the server and the client. Those facts live here, so that a rename is one
edit and a typo is an ``ImportError`` instead of a ``KeyError`` at run time.

This module imports nothing but :mod:`typing` (it is imported by the CLI's argument parsers, so
``mmcls --help`` stays fast, and by code on both sides of the core/``mmcls.deploy`` boundary). Tests may keep
literal strings where they check the contract users see.
"""

from typing import Literal, get_args

# --------------------------------------------------------------------------------------------- model tensors
#: The model's inputs, in ``forward`` order: the batch-dict keys of the data pipeline and of the server's
#: request decoder, and the input names of every exported graph (``export.json`` ``inputs``).
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
FRAMES = "frames"
FRAME_MASK = "frame_mask"
MODEL_INPUTS = (INPUT_IDS, ATTENTION_MASK, FRAMES, FRAME_MASK)

#: Keys of the classifier's ``forward`` result: fused logits and the video-only (auxiliary) logits.
LOGITS = "logits"
VIDEO_LOGITS = "video_logits"

#: Outputs of the exported inference graph (``export.json`` ``outputs``), both float32 probabilities.
PROBS = "probs"
LV1_PROBS = "lv1_probs"
GRAPH_OUTPUTS = (PROBS, LV1_PROBS)

# ------------------------------------------------------------------------------------------ served (Triton)
#: The Triton model that ``mmcls serve`` loads and ``mmcls client`` calls, and the bare-graph model beside it.
TRITON_MODEL = "mmcls"
TRITON_GRAPH_MODEL = "mmcls_graph"
#: Served inputs: the three text fields (BYTES), then JPEG frames (BYTES) or frame features (FP32); a model
#: that reads pixels also takes one encoded video file (BYTES ``[1]``, e.g. an mp4) instead of the frames.
SERVED_TEXT_INPUTS = ("title", "asr", "ocr")
SERVED_FRAMES = "frames"
SERVED_FRAME_FEATS = "frame_feats"
SERVED_VIDEO = "video"
#: Served outputs: predicted category, its name (the taxonomy's), its level-1 parent, the level-2
#: probabilities, frame errors (JSON).
SERVED_CATEGORY_ID = "category_id"
SERVED_CATEGORY_NAME = "category_name"
SERVED_LV1_ID = "lv1_id"
SERVED_PROBS = PROBS
SERVED_ERRORS = "errors"
SERVED_OUTPUTS = (SERVED_CATEGORY_ID, SERVED_CATEGORY_NAME, SERVED_LV1_ID, SERVED_PROBS, SERVED_ERRORS)
#: A tagging model (``data.task: multilabel``) also serves the class ids above their thresholds and the names
#: of those classes (BYTES lists, padded with empty strings to the longest of the batch); ``probs`` are sigmoids.
SERVED_TAGS = "tags"
SERVED_TAG_NAMES = "tag_names"
SERVED_TAG_OUTPUTS = (SERVED_TAGS, SERVED_TAG_NAMES)

# ------------------------------------------------------------------------------------------------ file names
#: A model folder (``mmcls.models.model_dir``) and an artifact folder (``mmcls.deploy.artifact``) both hold the
#: resolved config and the category map; a model folder adds its weights, an artifact ``export.json``.
CONFIG_FILE = "config.yaml"
CATEGORIES_FILE = "categories.json"
WEIGHTS_FILE = "model.safetensors"
EXPORT_FILE = "export.json"
#: A tagging model's decision thresholds, chosen on validation by training (``mmcls.tagging``); copied into
#: its export artifacts.
THRESHOLDS_FILE = "thresholds.json"
#: In a trained model folder: the logit-adjustment TAU chosen on validation and the grid's scores
#: (``mmcls.engine.tau``); ``--logit-adjust auto`` applies it, a folder without it predicts with TAU 0.
LOGIT_ADJUST_FILE = "logit_adjust.json"
#: The ``best/`` rule: a training run directory's model is the model folder ``RUN_DIR/best/`` (the best
#: validation score so far), ``RUN_DIR/last/`` the final weights; a path holding ``WEIGHTS_FILE`` itself is a
#: model folder. :func:`mmcls.models.model_dir.resolve_model_dir` applies it.
BEST_DIR = "best"
LAST_DIR = "last"

# ----------------------------------------------------------------------------------------------- data root
#: The data root's layout (``../shared/data/README.md``): a split's annotation file is
#: ``ANNOTATIONS_DIR/{split}.json`` unless ``data.annotations`` maps it (:func:`mmcls.data.annotations.annotation_path`),
#: the test labels ``mmcls evaluate`` scores against are ``ANNOTATIONS_DIR/TEST_LABELS_FILE``, JPEG frames and
#: pre-extracted features are zips under ``FRAMES_DIR/{split}/`` and the zip ``FEATURES_DIR/{split}.zip``.
ANNOTATIONS_DIR = "annotations"
TEST_LABELS_FILE = "test_labels.json"
FRAMES_DIR = "zip_frames"
FEATURES_DIR = "zip_feats"

# ------------------------------------------------------------------------------------------------ choice lists
#: Numeric precision of training (``train.precision``) and inference (``--precision``).
Precision = Literal["fp32", "bf16", "fp16"]
#: ``mmcls export --quantize``: integer precisions of an exported backend (fixed at export: no ``--precision``),
#: and ``--quantize-mode``: ``dynamic`` (int8 weights, activations scaled per batch) or ``static`` (calibrated).
Quantize = Literal["int8"]
QUANTIZE_PRECISIONS: tuple[str, ...] = get_args(Quantize)
QuantizeMode = Literal["dynamic", "static"]
QUANTIZE_MODES: tuple[str, ...] = get_args(QuantizeMode)
#: Where the model runs (``train.device``, ``--device``); ``auto`` = CUDA when available.
Device = Literal["auto", "cpu", "cuda"]
#: Who decodes JPEG frames (``data.frames.decoder``, ``--frame-decoder``).
FrameDecoder = Literal["pil", "cuda"]
#: Inference backends (``--backend``); ``mmcls.deploy.backends`` holds one record per name.
Backend = Literal["torch", "onnx", "aoti", "tensorrt"]
BACKENDS: tuple[str, ...] = get_args(Backend)
#: ``mmcls export --format``: every backend that compiles to a file, plus a Triton model repository.
TRITON_FORMAT = "triton"
EXPORT_FORMATS: tuple[str, ...] = (*(name for name in BACKENDS if name != "torch"), TRITON_FORMAT)
