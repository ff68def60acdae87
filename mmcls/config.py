"""Experiment configuration: typed dataclasses, YAML presets and ``--set key=value`` overrides.

A YAML file only overrides the defaults written here, and ``--set`` overrides the YAML; the resolved
config is saved next to every run so that a run can be understood (and resumed) without its command line.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mmcls.errors import MmclsError

# CLIP's normalisation constants (open_clip.constants.OPENAI_DATASET_MEAN/STD); repeated here so that the
# data pipeline does not have to import open_clip.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ConfigError(MmclsError, ValueError):
    """A configuration key or value is wrong; the message names the key."""


@dataclass
class TextConfig:
    # A HF tokenizer directory or hub name, or a WordPiece ``vocab.txt`` path. ``builtin:bert-base-chinese``
    # is the bert-base-chinese vocabulary shipped in the package (works offline).
    tokenizer: str = "builtin:bert-base-chinese"
    fields: list[str] = field(default_factory=lambda: ["title", "asr", "ocr"])
    # Per-field token budgets (without special tokens). Budget a field leaves unused goes to the next fields.
    budgets: dict[str, int] = field(default_factory=lambda: {"title": 64, "asr": 96, "ocr": 92})
    max_length: int = 256  # total, including [CLS] and one [SEP] per field
    truncation: str = "head_tail"  # head | tail | head_tail


@dataclass
class FrameConfig:
    source: str = "zip_frames"  # zip_frames | zip_feats | video | none
    max_frames: int = 8
    image_size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    feature_dim: int = 768  # width of zip_feats vectors
    video_dir: str | None = None  # for source=video; default DATA_ROOT/videos/{split}
    video_ext: str = ".mp4"
    # What to do with a sample whose frames cannot be read: fall back to text only (empty frame mask),
    # drop the sample, or raise.
    on_error: str = "text_only"  # text_only | drop | raise
    max_member_bytes: int = 32 * 1024 * 1024  # refuse larger zip members (zip-bomb guard)
    max_compression_ratio: float = 200.0


@dataclass
class DataConfig:
    text: TextConfig = field(default_factory=TextConfig)
    frames: FrameConfig = field(default_factory=FrameConfig)
    train_split: str = "labeled"
    # Labeled records held out for validation (deterministic by seed); 0 disables evaluation.
    val_fraction: float = 0.1
    num_workers: int = 2
    limit_train: int | None = None  # use only the first N labeled records (debugging)


@dataclass
class FrameEncoderConfig:
    type: str = "open_clip"  # open_clip | timm | identity
    name: str = "ViT-B-16"  # open_clip model name or timm model name
    pretrained: str | None = "openai"  # open_clip tag / timm True-ish tag; null = random init
    input_dim: int = 768  # identity: feature width; ignored otherwise
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra kwargs for timm.create_model
    freeze: bool = False


@dataclass
class ModelConfig:
    # BertModel source: hub name or local directory. null = random init from ``bert_config``.
    text_encoder: str | None = "hfl/chinese-macbert-base"
    bert_config: dict[str, Any] = field(default_factory=dict)
    frame_encoder: FrameEncoderConfig = field(default_factory=FrameEncoderConfig)
    max_frames: int = 32  # size of the frame position table (>= data.frames.max_frames)
    num_classes: int = 200
    dropout: float = 0.1
    pooling: str = "cls_mean"  # cls | mean | cls_mean
    # Start from the weights of another model folder or run directory (a finished classifier, a pretraining
    # run, a larger teacher): every key present in both with the same shape is loaded, the rest keep their
    # initialisation; the log names what was loaded and what was not. null = start from the pretrained sources.
    init_from: str | None = None


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32  # global batch (all processes together, before gradient accumulation)
    eval_batch_size: int = 64
    lr: float = 5e-5
    frame_encoder_lr: float | None = 1e-5  # null = same as lr
    head_lr: float | None = 5e-4  # classifier heads and projection; null = same as lr
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.06
    min_lr_ratio: float = 0.0
    grad_accum_steps: int = 1
    clip_grad_norm: float | None = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 uses a grad scaler)
    aux_loss_weight: float = 0.5  # weight of the video-only auxiliary loss
    label_smoothing: float = 0.0
    ema_decay: float | None = None  # e.g. 0.999; the EMA weights are evaluated and exported
    seed: int = 42
    eval_every_epochs: int = 1
    log_every_steps: int = 10
    checkpoint_every_steps: int = 200  # plus one at every epoch end
    keep_last_checkpoints: int = 2
    max_nonfinite_steps: int = 5  # stop after this many consecutive NaN/inf losses
    distributed: str = "ddp"  # ddp | fsdp (only used under torchrun with world size > 1)
    device: str = "auto"  # auto | cpu | cuda
    progress_bar: bool = True
    tensorboard: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        return validate(_build(cls, values, prefix=""))

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Config:
        """Load a YAML file, or a packaged preset by name (``tiny``, ``base``, ``feats``)."""
        path = resolve_preset(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
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
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))

    def copy(self) -> Config:
        return copy.deepcopy(self)


def resolve_preset(spec: str | Path) -> Path:
    """``spec`` itself if it is a file, else the packaged preset ``configs/<spec>.yaml``."""
    path = Path(spec)
    if path.is_file():
        return path
    preset = resources.files("mmcls.configs").joinpath(f"{path.stem}.yaml")
    if path.suffix in ("", ".yaml") and preset.is_file():
        return Path(str(preset))
    raise ConfigError(f"{spec}: no such config file or preset (presets: tiny, base, feats)")


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
        if dataclasses.is_dataclass(hint):
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


_CHOICES = {
    "data.text.truncation": ("head", "tail", "head_tail"),
    "data.frames.source": ("zip_frames", "zip_feats", "video", "none"),
    "data.frames.on_error": ("text_only", "drop", "raise"),
    "model.frame_encoder.type": ("open_clip", "timm", "identity"),
    "model.pooling": ("cls", "mean", "cls_mean"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.distributed": ("ddp", "fsdp"),
    "train.device": ("auto", "cpu", "cuda"),
}


def validate(cfg: Config) -> Config:
    """Check enumerated settings and cross-field constraints; raise ConfigError naming the key."""
    for key, choices in _CHOICES.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
    if cfg.data.frames.max_frames > cfg.model.max_frames:
        raise ConfigError(
            f"data.frames.max_frames={cfg.data.frames.max_frames} exceeds model.max_frames={cfg.model.max_frames}"
        )
    if cfg.train.grad_accum_steps < 1:
        raise ConfigError("train.grad_accum_steps must be >= 1")
    return cfg


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value
