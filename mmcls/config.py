"""Experiment configuration: typed dataclasses, YAML presets and ``--set key=value`` overrides.

A YAML file only overrides the defaults written here, and ``--set`` overrides the YAML; the resolved
config is saved next to every run so that a run can be understood (and resumed) without its command line.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from mmcls.errors import MmclsError
from mmcls.files import atomic_write_text
from mmcls.names import Device, FrameDecoder, Precision

# CLIP's normalisation constants (open_clip.constants.OPENAI_DATASET_MEAN/STD); repeated here so that the
# data pipeline does not have to import open_clip.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ConfigError(MmclsError, ValueError):
    """A configuration key or value is wrong; the message names the key."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = dataclasses.MISSING,
    min: float | None = None,  # min/max shadow the builtins in here: `min=0` reads as the rule
    max: float | None = None,
    above: float | None = None,
    below: float | None = None,
    resume_safe: bool = False,
) -> Any:
    """A config field with its rules, checked when a config is loaded (see :func:`check_field`).

    ``min``/``max`` are inclusive bounds, ``above``/``below`` exclusive ones; for a list, tuple or dict they
    apply to every element. ``resume_safe``: the value may change when a run is resumed (``train --resume``
    refuses any other change). The type comes from the annotation (``Literal[...]`` for a fixed set of
    choices), so a field without rules can stay a plain ``name: type = default``.
    """
    rules = {"min": min, "max": max, "above": above, "below": below, "resume_safe": resume_safe}
    rules = {k: v for k, v in rules.items() if v is not None and v is not False}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=rules)
    return field(default=default, metadata=rules)


@dataclass
class TextConfig:
    # A HF tokenizer directory or hub name, or a WordPiece ``vocab.txt`` path. ``builtin:bert-base-chinese``
    # is the bert-base-chinese vocabulary shipped in the package (works offline).
    tokenizer: str = "builtin:bert-base-chinese"
    fields: list[Literal["title", "asr", "ocr"]] = field(default_factory=lambda: ["title", "asr", "ocr"])
    # Per-field token budgets (without special tokens). Budget a field leaves unused goes to the next fields.
    budgets: dict[str, int] = setting(factory=lambda: {"title": 64, "asr": 96, "ocr": 92}, min=0)
    max_length: int = setting(256, min=2)  # total, including [CLS] and one [SEP] per field
    truncation: Literal["head", "tail", "head_tail"] = "head_tail"


@dataclass
class FrameConfig:
    source: Literal["zip_frames", "zip_feats", "video", "none"] = "zip_frames"
    max_frames: int = setting(8, min=1)
    image_size: int = setting(224, min=1)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = setting(CLIP_STD, above=0)
    # Width of the frame feature vectors (zip_feats; the identity frame encoder's input): the one place it is set.
    feature_dim: int = setting(768, min=1)
    video_dir: str | None = None  # for source=video; default DATA_ROOT/videos/{split}
    video_ext: str = ".mp4"
    # What to do with a sample whose frames cannot be read: fall back to text only (empty frame mask),
    # drop the sample, or raise.
    on_error: Literal["text_only", "drop", "raise"] = "text_only"
    max_member_bytes: int = setting(32 * 1024 * 1024, min=1)  # refuse larger zip members (zip-bomb guard)
    max_compression_ratio: float = setting(200.0, min=1)
    # Refuse larger frame zips / feature zips / videos (a symlink to /dev/zero must not fill the memory).
    max_file_bytes: int = setting(1024**3, min=1)
    # Refuse images with more pixels, checked from the header before decoding (a tiny PNG can claim 12000^2).
    max_image_pixels: int = setting(4096 * 4096, min=1)
    # Who decodes the JPEG frames of zip_frames: the DataLoader workers on the CPU (pil), or the GPU, batched
    # (cuda: nvJPEG through torchvision; workers then only read and check the zips). cuda needs a CUDA device.
    decoder: FrameDecoder = setting("pil", resume_safe=True)


@dataclass
class DataConfig:
    text: TextConfig = field(default_factory=TextConfig)
    frames: FrameConfig = field(default_factory=FrameConfig)
    train_split: str = "labeled"
    # Where each split's records are: {labeled: PATH, unlabeled: PATH, test: PATH} (any subset; a path relative to
    # the data root, or absolute; .json official list, .jsonl JSON Lines or .csv). A split not named here is
    # DATA_ROOT/annotations/{split}.json. Every command that reads a split by name (train, predict --split, ...)
    # goes through mmcls.data.annotations.annotation_path.
    annotations: dict[str, str] = field(default_factory=dict)
    # Labeled records held out for validation (deterministic by seed); 0 disables evaluation.
    val_fraction: float = setting(0.1, min=0, below=1)
    num_workers: int = setting(2, min=0, resume_safe=True)
    limit_train: int | None = setting(None, min=1)  # use only the first N labeled records (debugging)
    # K-fold selection (``mmcls kfold`` sets these): with ``num_folds`` set, the validation records are fold
    # ``fold`` of a split stratified by level-2 class (seeded by ``fold_seed``) instead of the random
    # ``val_fraction`` hold-out. The same (records, num_folds, fold_seed) give the same folds in every run.
    num_folds: int | None = setting(None, min=2)
    fold: int | None = setting(None, min=0)
    fold_seed: int = setting(0, min=0)
    # Extra training records: annotation files (e.g. written by ``mmcls pseudo-label``) whose records are
    # appended to the training records (never to validation). A record may carry soft targets
    # (``soft_label``) and the split its frames come from (``source_split``, default ``unlabeled``).
    extra_train: list[str] = field(default_factory=list)
    # Train and validate on these level-1 groups only (``mmcls group-finetune``); the split is made first,
    # so the validation records are the full run's, and the loss is restricted to the groups' classes.
    lv1_groups: list[int] | None = setting(None, min=0)
    # The taxonomy: a CSV file ``id,name,parent`` (see mmcls/data/categories.py); null = the packaged WBDC2022
    # list. ``model.num_classes`` follows it when the config does not set it.
    categories: str | None = None
    # What a labeled record carries: one ``category_id`` (multiclass, softmax), or ``labels``, a list of class
    # ids of the taxonomy (multilabel tagging, sigmoid outputs; see mmcls/engine/multilabel.py).
    task: Literal["multiclass", "multilabel"] = "multiclass"
    # Dataset switching: ``[{after_epoch: E, filter: {source_split: labeled | min_confidence: X | ids_file: PATH}}]``;
    # after E epochs the training records are those that pass the filter (schedule, optimizer, EMA, SWA carry
    # on). See mmcls/data/switch.py.
    switch: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FrameEncoderConfig:
    type: Literal["open_clip", "timm", "identity"] = "open_clip"
    name: str = "ViT-B-16"  # open_clip model name or timm model name
    pretrained: str | None = "openai"  # open_clip tag / timm True-ish tag; null = random init
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra kwargs for timm.create_model
    freeze: bool = False


@dataclass
class DualStreamConfig:
    """``model.fusion: dual_stream``: the text (BERT) and the frames run apart, then cross-attention layers."""

    frame_layers: int = setting(2, min=0)  # transformer layers over the frame tokens alone
    cross_layers: int = setting(2, min=1)  # co-attention layers: text attends to frames and frames to text


@dataclass
class NeXtVLADConfig:
    """``model.frame_aggregator: nextvlad``: NeXtVLAD pooling (Lin et al. 2018) of the frame tokens."""

    clusters: int = setting(64, min=1)
    groups: int = setting(8, min=1)
    expansion: int = setting(2, min=1)


@dataclass
class ModelConfig:
    # BertModel source: hub name or local directory. null = random init from ``bert_config``.
    text_encoder: str | None = "hfl/chinese-macbert-base"
    bert_config: dict[str, Any] = field(default_factory=dict)
    frame_encoder: FrameEncoderConfig = field(default_factory=FrameEncoderConfig)
    max_frames: int = setting(32, min=1)  # size of the frame position table (>= data.frames.max_frames)
    num_classes: int = setting(200, min=2)
    dropout: float = setting(0.1, min=0, below=1)
    pooling: Literal["cls", "mean", "cls_mean"] = "cls_mean"
    # Start from the weights of another model folder or run directory (a finished classifier, a pretraining
    # run, a larger teacher): every key present in both with the same shape is loaded, the rest keep their
    # initialisation; the log names what was loaded and what was not. null = start from the pretrained sources.
    init_from: str | None = None
    # Multilabel only: score a video by the dot product of its projected representation with class vectors
    # from the SVD of the training split's label PMI matrix (``pmi``), instead of a plain linear head.
    label_embedding: Literal["none", "pmi"] = "none"
    label_embedding_dim: int = setting(64, min=1)
    label_embedding_trainable: bool = True  # false: the PMI class vectors stay as computed
    # Which teacher layers start the student's layers (a student built smaller than its source): entry k is
    # the source's layer for the student's layer k, e.g. [0, 2, 4, 7, 9, 11] of 12. Applies to model.init_from,
    # else to the pretrained model.text_encoder. null = same index (the lowest layers of a deeper source).
    init_layers: list[int] | None = setting(None, min=0)
    init_frame_layers: list[int] | None = setting(None, min=0)  # the same for the frame encoder's blocks
    # Architecture variants (docs/variants.md). single_stream: one BERT over text + frame tokens.
    fusion: Literal["single_stream", "dual_stream"] = "single_stream"
    dual: DualStreamConfig = field(default_factory=DualStreamConfig)
    # Applied to the projected frame features before fusion: lstm/gru (bidirectional, residual + LayerNorm:
    # one context-aware token per frame) or nextvlad (one pooled video vector: the video head's input and an
    # extra token of the fusion).
    frame_aggregator: Literal["none", "lstm", "gru", "nextvlad"] = "none"
    nextvlad: NeXtVLADConfig = field(default_factory=NeXtVLADConfig)


@dataclass
class AslConfig:
    """Asymmetric loss (Ridnik et al., 2021) of ``train.multilabel_loss: asl``: focusing exponents for the
    positive and negative terms, and the probability margin ``clip`` shifted off the negatives."""

    gamma_pos: float = setting(0.0, min=0)
    gamma_neg: float = setting(4.0, min=0)
    clip: float = setting(0.05, min=0, below=1)


@dataclass
class ThresholdConfig:
    """Multilabel decision thresholds, chosen on the validation split after each evaluation (see
    mmcls/engine/multilabel.py) and saved in the model folder as ``thresholds.json``."""

    # A class gets its own threshold only with at least this many validation positives; the others use the
    # global best threshold.
    min_positives: int = setting(5, min=1)
    floor: float = setting(0.05, min=0, below=1)  # no threshold below this (a rare class must not tag all)
    min_tags: int = setting(1, min=0)  # at least this many tags per video (the highest probabilities)


@dataclass
class AdversarialConfig:
    """Adversarial training on embedding matrices (FGM: one step; PGD: ``steps`` projected steps).

    Each step adds ``delta`` (scaled gradient direction of this micro-batch's loss) to the target weight matrix,
    runs an extra forward/backward whose gradients add to the clean ones, and restores the weights bit for bit.
    """

    method: Literal["none", "fgm", "pgd"] = "none"
    # How epsilon and alpha are measured. relative: as multiples of the typical (root-mean-square) L2 norm of the
    # perturbed rows (the embedding rows of the batch's tokens; the frame projection's rows, one per output), so
    # one setting means the same for a tiny random-init table and a pretrained bert-base one. absolute: plain L2
    # lengths, as before (the write-ups' epsilon=1.0 on bert-base is about relative 0.7-1.0: docs/recipe.md).
    norm: Literal["relative", "absolute"] = "relative"
    epsilon: float = setting(1.0, above=0)  # radius of the L2 ball around the clean weights (FGM's step)
    alpha: float = setting(0.3, above=0)  # PGD step length (per step, before projection onto the ball)
    steps: int = setting(3, min=1)  # PGD K: perturbation steps (K forward/backward passes per micro-batch)
    # Matrices perturbed: word_embeddings (BERT's token table) and/or frame_proj (the frame projection).
    target: list[Literal["word_embeddings", "frame_proj"]] = field(
        default_factory=lambda: ["word_embeddings"]
    )


@dataclass
class TrainConfig:
    epochs: int = setting(5, min=1, resume_safe=True)
    # global batch (all processes together, before gradient accumulation)
    batch_size: int = setting(32, min=1)
    eval_batch_size: int = setting(64, min=1, resume_safe=True)
    lr: float = setting(5e-5, above=0)
    frame_encoder_lr: float | None = setting(1e-5, min=0)  # null = same as lr
    head_lr: float | None = setting(5e-4, min=0)  # classifier heads and projection; null = same as lr
    weight_decay: float = setting(0.01, min=0)
    betas: tuple[float, float] = setting((0.9, 0.999), min=0, below=1)
    # Layer-wise LR decay (null = off, e.g. 0.9): text/fusion layer l of N gets lr * decay^(N+1-l) (embeddings
    # l=0), frame-encoder block l of M gets frame_encoder_lr * decay^(M+1-l); heads keep head_lr.
    layer_decay: float | None = setting(None, above=0, max=1)
    warmup_ratio: float = setting(0.06, min=0, max=1)
    min_lr_ratio: float = setting(0.0, min=0, max=1)
    # LR after warmup, down to min_lr_ratio x LR: one cosine, a cosine per restart_epochs epochs, or a line.
    schedule: Literal["cosine", "cosine_restarts", "linear"] = "cosine"
    restart_epochs: int = setting(1, min=1)
    grad_accum_steps: int = setting(1, min=1)
    clip_grad_norm: float | None = setting(1.0, above=0)
    precision: Precision = "fp32"  # fp16 uses a grad scaler
    aux_loss_weight: float = setting(0.5, min=0)  # weight of the video-only auxiliary loss
    label_smoothing: float = setting(0.0, min=0, below=1)
    ema_decay: float | None = setting(None, above=0, below=1)  # e.g. 0.999; the EMA weights are evaluated
    # Knowledge distillation: teacher probabilities for every training record, from a probabilities file
    # (``ensemble --save-probs P.npy`` or a kfold ``oof.npy``, with its ``.json`` of ids) or a teacher model
    # folder / run directory (predicted once at start). The fused loss becomes
    # (1 - distill_weight) * CE(labels) + distill_weight * T^2 * KL(teacher_T || student_T).
    distill_from: str | None = None
    distill_weight: float = setting(0.5, min=0, max=1)
    distill_temperature: float = setting(2.0, above=0)
    # Equal-weight average of the weights at the end of every epoch from this (1-based) epoch on; from then on
    # the average is what is evaluated and released (instead of the EMA). null = off.
    swa_start_epoch: int | None = setting(None, min=1)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    # Class-balanced loss weights w_c ~ (n_c + 1)^-alpha from the training split's counts, scaled so that the
    # mean weight over the training samples is 1. 0 = unweighted, 1 = inverse frequency.
    class_weight_alpha: float = setting(0.0, min=0)
    multi_dropout: int = setting(1, min=1)  # K dropout samples averaged at the classifier heads in training
    rdrop_alpha: float = setting(0.0, min=0)  # R-Drop: weight of the symmetric KL of two dropout passes
    # Weight of the level-1 NLL of the level-2 softmax summed per group. null = the task's default: 0.5 on a
    # taxonomy whose level-1 groups hold several classes (it gained in 6 of 6 runs of docs/recipe.md's 3-seed
    # ablation), 0 on a flat one; multilabel tagging has no level-1 term (null there, a number is refused).
    lv1_loss_weight: float | None = setting(None, min=0)
    soft_f1_weight: float = setting(0.0, min=0)  # weight of (1 - soft macro F1) of the fused probabilities
    # data.task=multilabel: the asymmetric loss (settings in asl), or per-class sigmoid binary cross-entropy.
    # asl by default: on docs/multilabel.md's 3-seed table (200 classes, ~2 tags a video) summed BCE, almost
    # all easy negatives, barely leaves its start in the epochs where ASL reaches 5x its GAP@20.
    multilabel_loss: Literal["bce", "asl"] = "asl"
    asl: AslConfig = field(default_factory=AslConfig)
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)
    seed: int = setting(42, min=0)
    eval_every_epochs: int = setting(1, min=1, resume_safe=True)
    log_every_steps: int = setting(10, min=1, resume_safe=True)
    checkpoint_every_steps: int = setting(200, min=1, resume_safe=True)  # plus one at every epoch end
    keep_last_checkpoints: int = setting(2, min=1, resume_safe=True)
    # Stop after this many NaN/inf losses in a row.
    max_nonfinite_steps: int = setting(5, min=1, resume_safe=True)
    distributed: Literal["ddp", "fsdp"] = "ddp"  # only used under torchrun with world size > 1
    device: Device = setting("auto", resume_safe=True)
    # torch.compile the model (nn.Module.compile: in place, weight names unchanged). Pays a compile time at
    # start-up and on new input shapes; off by default.
    compile: bool = setting(False, resume_safe=True)
    # Recompute activations in the backward pass of both towers: less memory for ~30% more compute.
    grad_checkpointing: bool = setting(False, resume_safe=True)
    progress_bar: bool = setting(True, resume_safe=True)  # also off whenever stderr is not a terminal
    tensorboard: bool = setting(True, resume_safe=True)


#: A :class:`Config` or a subclass (the pretraining config): what its loaders and ``validate`` return.
ConfigT = TypeVar("ConfigT", bound="Config")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls: type[ConfigT], values: dict[str, Any]) -> ConfigT:
        return validate(_build(cls, _num_classes_from_taxonomy(migrate(values)), prefix=""))

    @classmethod
    def from_yaml(cls: type[ConfigT], path: str | Path, overrides: list[str] | None = None) -> ConfigT:
        """Load a YAML file, or a packaged preset by name (``tiny``, ``base``, ``feats``)."""
        path = resolve_preset(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(values).__name__}")
        values = apply_overrides(values, overrides or [])
        try:
            return cls.from_dict(values)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))

    def copy(self) -> Config:
        return copy.deepcopy(self)


def migrate(values: Any) -> Any:
    """Accept the settings of older configs (and of the ``config.yaml`` in older model folders) that a change
    of the schema made redundant; refuse them where they would now mean something else.

    ``model.frame_encoder.input_dim``: the identity encoder's width, now always ``data.frames.feature_dim``.
    Dropped when it agrees (or the encoder is not the identity, which ignored it); a ConfigError otherwise.
    """
    model = values.get("model") if isinstance(values, dict) else None
    encoder = model.get("frame_encoder") if isinstance(model, dict) else None
    if not isinstance(encoder, dict) or "input_dim" not in encoder:
        return values
    values = copy.deepcopy(values)
    encoder = values["model"]["frame_encoder"]
    old = encoder.pop("input_dim")
    frames = values.get("data", {}).get("frames") if isinstance(values.get("data"), dict) else None
    width = (
        frames.get("feature_dim", FrameConfig.feature_dim)
        if isinstance(frames, dict)
        else FrameConfig.feature_dim
    )
    if encoder.get("type", FrameEncoderConfig.type) == "identity" and old != width:
        raise ConfigError(
            f"model.frame_encoder.input_dim={old!r} differs from data.frames.feature_dim={width!r}: the feature "
            "width is set once, as data.frames.feature_dim; remove model.frame_encoder.input_dim"
        )
    return values


def resolve_preset(spec: str | Path) -> Path:
    """``spec`` itself if it is a file, else the packaged preset ``configs/<spec>.yaml`` for a bare name.

    Only a bare name (``tiny``, no folder, no suffix) can mean a preset: a path such as ``myexp/tiny.yaml`` that
    does not exist is an error, never silently the preset of the same stem.
    """
    path = Path(spec)
    if path.is_file():
        return path
    if path.exists():
        raise ConfigError(f"{spec}: not a config file (a folder or a special file)")
    presets = sorted(
        p.name[: -len(".yaml")]
        for p in resources.files("mmcls.configs").iterdir()
        if p.name.endswith(".yaml")
    )
    is_name = path.name == str(spec) and not path.suffix
    if is_name and str(spec) in presets:
        return Path(str(resources.files("mmcls.configs").joinpath(f"{spec}.yaml")))
    hint = f"; did you mean the preset {path.stem!r}?" if path.stem in presets and not is_name else ""
    raise ConfigError(f"{spec}: no such config file or preset (presets: {', '.join(presets)}){hint}")


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict; values are parsed as YAML (``1e-4``, ``null``, ``[a, b]``)."""
    values = copy.deepcopy(values)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return values


def _build(cls: type, values: Any, prefix: str) -> Any:
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(prefix + k for k in unknown)}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, prefix=f"{prefix}{name}.")
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = _coerce_number(hint, value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce_number(hint: Any, value: Any, key: str) -> Any:
    """YAML 1.1 reads ``3e-4`` (no dot) as a string: turn such strings into the float/int the field wants."""
    if not isinstance(value, str):
        return value
    wanted = [t for t in (typing.get_args(hint) or (hint,)) if t in (int, float)]
    if not wanted or str in (typing.get_args(hint) or (hint,)):
        return value
    try:
        return wanted[0](value) if wanted[0] is float else int(value)
    except ValueError:
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None


# ------------------------------------------------------------------------------------------------ validation
def validate(cfg: ConfigT) -> ConfigT:
    """Check every field's type and rules, then the cross-field constraints; raise ConfigError naming the key.

    Called when a config is loaded and again by the commands that take a ``Config`` object (a config built or
    changed in code gets the same checks), so a wrong value fails in well under a second, before any work.
    """
    _check_section(cfg, "")
    if cfg.data.frames.max_frames > cfg.model.max_frames:
        raise ConfigError(
            f"data.frames.max_frames={cfg.data.frames.max_frames} exceeds model.max_frames={cfg.model.max_frames}"
        )
    if cfg.data.frames.decoder == "cuda" and cfg.data.frames.source != "zip_frames":
        raise ConfigError(
            f"data.frames.decoder=cuda decodes JPEG frame zips; data.frames.source={cfg.data.frames.source} "
            "has none: use data.frames.decoder=pil"
        )
    _check_workflow_settings(cfg)
    if cfg.data.task == "multilabel" and cfg.data.num_folds is not None:
        # mmcls kfold sets it: its folds are stratified by, and its out-of-fold score is, one class per record.
        raise ConfigError(
            "data.num_folds: k-fold (mmcls kfold) is single-label only; not with data.task=multilabel"
        )
    if cfg.model.label_embedding != "none" and cfg.data.task != "multilabel":
        raise ConfigError(
            f"model.label_embedding={cfg.model.label_embedding}: label co-occurrence needs data.task=multilabel"
        )
    _check_taxonomy(cfg)
    _check_annotation_files(cfg.data)
    train = cfg.train
    if train.swa_start_epoch is not None and train.swa_start_epoch > train.epochs:
        raise ConfigError(
            f"train.swa_start_epoch={train.swa_start_epoch} is after the last epoch (train.epochs={train.epochs})"
        )
    _check_model_variants(cfg.model)
    if not train.adversarial.target:
        raise ConfigError("train.adversarial.target: empty; name word_embeddings and/or frame_proj")
    return cfg


def _check_model_variants(model: ModelConfig) -> None:
    """Layer selections need a source to select from (their counts are checked when the model is built)."""
    if (model.init_layers or model.init_frame_layers) and not (model.init_from or model.text_encoder):
        raise ConfigError(
            "model.init_layers/init_frame_layers choose layers of model.init_from (or of a pretrained "
            "model.text_encoder): set one of them, or remove the layer selection"
        )
    if model.init_frame_layers and not model.init_from:
        raise ConfigError("model.init_frame_layers chooses frame encoder blocks of model.init_from: set it")


def _num_classes_from_taxonomy(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``model.num_classes`` set to the size of ``data.categories`` when only the latter is given
    (a taxonomy file that cannot be read is left for :func:`validate` to report)."""
    data, model = values.get("data"), values.get("model")
    path = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(path, str) or (isinstance(model, dict) and "num_classes" in model):
        return values
    from mmcls.data.categories import TaxonomyError, load_categories

    try:
        num_classes = load_categories(path).num_lv2
    except TaxonomyError:
        return values
    model = dict(model) if isinstance(model, dict) else {}
    return {**values, "model": {**model, "num_classes": num_classes}}


def _check_taxonomy(cfg: Config) -> None:
    """``data.categories`` names a readable taxonomy whose class count is ``model.num_classes``."""
    path = cfg.data.categories
    if path is None:
        return
    from mmcls.data.categories import TaxonomyError, load_categories

    try:
        taxonomy = load_categories(path)
    except TaxonomyError as exc:
        raise ConfigError(f"data.categories: {exc}") from None
    if cfg.model.num_classes != taxonomy.num_lv2:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} but data.categories={path} has {taxonomy.num_lv2} "
            f"classes: set model.num_classes={taxonomy.num_lv2} or leave it out (it follows the file)"
        )


def _check_workflow_settings(cfg: Config) -> None:
    """Cross-field rules of the multi-model workflows' settings (folds, extra records, level-1 groups)."""
    data = cfg.data
    if (data.num_folds is None) != (data.fold is None):
        raise ConfigError("data.num_folds and data.fold go together: set both or neither")
    if data.num_folds is not None and data.fold is not None and data.fold >= data.num_folds:
        raise ConfigError(f"data.fold must be in [0, {data.num_folds}), got {data.fold}")
    if data.lv1_groups is not None and not data.lv1_groups:
        raise ConfigError("data.lv1_groups must name at least one level-1 group (or be null)")
    if data.lv1_groups is not None and data.extra_train:
        # The loss is restricted to the groups' classes; extra records of other groups would be unlearnable.
        raise ConfigError("data.lv1_groups cannot be combined with data.extra_train")
    if data.switch:
        from mmcls.data.switch import check_switch  # imported late: only a config that switches needs it

        problem = check_switch(data.switch, cfg.train.epochs)
        if problem:
            raise ConfigError(problem)


ANNOTATION_SPLITS = ("labeled", "unlabeled", "test")


def _check_annotation_files(data: DataConfig) -> None:
    """``data.annotations``: known split names (the three, or ``data.train_split``), supported file types."""
    from mmcls.data.annotations import ANNOTATION_SUFFIXES  # the readers' fact; imported late (light module)

    splits = sorted({*ANNOTATION_SPLITS, data.train_split})
    for split, path in data.annotations.items():
        if split not in splits:
            raise ConfigError(f"data.annotations: unknown split {split!r}; known: {', '.join(splits)}")
        suffix = Path(path).suffix.lower()
        if not path.strip() or suffix not in ANNOTATION_SUFFIXES:
            raise ConfigError(
                f"data.annotations.{split}: {path!r} is not a {'/'.join(ANNOTATION_SUFFIXES)} file "
                "(the extension chooses the format)"
            )


def _check_section(section: Any, prefix: str) -> None:
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        key, value, hint = f"{prefix}{f.name}", getattr(section, f.name), hints[f.name]
        if dataclasses.is_dataclass(hint):
            _check_section(value, f"{key}.")
        else:
            check_field(key, value, hint, f.metadata)


def check_field(key: str, value: Any, hint: Any, rules: typing.Mapping[str, Any]) -> None:
    """Raise ConfigError unless ``value`` has the type ``hint`` and follows ``rules`` (see :func:`setting`)."""
    problem = _type_problem(value, hint)
    if problem is not None:
        raise ConfigError(f"{key}: {problem}")
    for item in _elements(value):
        problem = _range_problem(item, rules)
        if problem is not None:
            raise ConfigError(f"{key}: {problem}" + ("" if item is value else f" (in {value!r})"))


def _elements(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, dict):
        return list(value.values())
    return [value]


def _range_problem(value: Any, rules: typing.Mapping[str, Any]) -> str | None:
    if value is None or isinstance(value, (bool, str)) or not isinstance(value, (int, float)):
        return None
    if "min" in rules and value < rules["min"]:
        return f"{value!r} is below the minimum {rules['min']}"
    if "max" in rules and value > rules["max"]:
        return f"{value!r} is above the maximum {rules['max']}"
    if "above" in rules and not value > rules["above"]:
        return f"{value!r} must be greater than {rules['above']}"
    if "below" in rules and not value < rules["below"]:
        return f"{value!r} must be less than {rules['below']}"
    return None


def _type_problem(value: Any, hint: Any) -> str | None:
    """None if ``value`` fits ``hint``, else what is wrong (used for every config field)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(value, arm) for arm in args]
        if any(p is None for p in problems):
            return None
        return f"expected {_describe(hint)}, got {value!r}"
    if origin is Literal:
        return None if value in args else f"{value!r} is not one of {list(args)}"
    if hint is type(None):
        return None if value is None else f"expected null, got {value!r}"
    if hint is bool:
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expected an integer, got {value!r}"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else f"expected a finite number, got {value!r}"
    if hint is str:
        return None if isinstance(value, str) else f"expected a string, got {value!r}"
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return f"expected a list, got {value!r}"
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            return f"expected a list of {len(args)} values, got {len(value)}: {list(value)!r}"
        item_hints = [args[0]] * len(value) if origin is list or args[-1:] == (Ellipsis,) else list(args)
        for item, item_hint in zip(value, item_hints):
            problem = _type_problem(item, item_hint)
            if problem is not None:
                return f"{problem} (in {list(value)!r})"
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return f"expected a mapping, got {value!r}"
        key_hint, value_hint = args or (Any, Any)
        for k, v in value.items():
            problem = _type_problem(k, key_hint) or _type_problem(v, value_hint)
            if problem is not None:
                return f"{problem} (at {k!r})"
        return None
    return None  # a type these rules do not know: accepted as is


def _describe(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    arms = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return " or ".join(names.get(a, str(a).replace("typing.", "")) for a in arms)


def resume_safe_keys(cls: type | None = None) -> set[str]:
    """Dotted keys marked ``resume_safe`` (see :func:`setting`): what ``train --resume`` may change."""
    cls = cls or Config
    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys |= {f"{f.name}.{k}" for k in resume_safe_keys(hints[f.name])}
        elif f.metadata.get("resume_safe"):
            keys.add(f.name)
    return keys


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for comparing two configs key by key)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value
