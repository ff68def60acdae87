"""The pretraining config: the core :class:`~mmcls.config.Config` plus a ``pretrain`` section.

A subclass rather than a field of the core config, so that ``mmcls train`` configs stay exactly as they are
and the core knows nothing of pretraining. ``model``, ``data`` and ``train`` mean what they mean for
fine-tuning (the same backbone is built from ``model``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmcls.config import Config, ConfigError

OBJECTIVES = ("mlm", "mfm", "vtm", "itc")


@dataclass
class PretrainSection:
    # Annotation files whose records are pretrained on; labels, where present, are not used. Test text and
    # frames are fair game for unsupervised pretraining, as in the challenge.
    splits: list[str] = field(default_factory=lambda: ["unlabeled", "labeled", "test"])
    # Loss weights; 0 turns an objective off (its head is then not built).
    mlm_weight: float = 1.0
    mfm_weight: float = 1.0
    vtm_weight: float = 1.0
    itc_weight: float = 1.0
    mlm_probability: float = 0.15  # share of words (not tokens) masked, whole-word
    mfm_probability: float = 0.2  # share of real frames masked (the issue asks for 15-25%)
    vtm_swap_probability: float = 0.5  # share of samples whose frames come from another sample
    mfm_temperature: float = 0.1  # NCE temperature over cosine similarities of frame features
    itc_init_temperature: float = 0.07  # learnable; CLIP's initial value
    itc_dim: int = 128  # width of the shared text/video embedding space
    val_size: int = 256  # records held out (seeded) for the pretraining loss that selects best/
    limit_records: int | None = None  # use only the first N records of the concatenated splits (debugging)

    def weights(self) -> dict[str, float]:
        return {name: getattr(self, f"{name}_weight") for name in OBJECTIVES}


@dataclass
class PretrainConfig(Config):
    pretrain: PretrainSection = field(default_factory=PretrainSection)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainConfig:
        cfg = super().from_dict(values)
        return validate_pretrain(cfg)


def validate_pretrain(cfg: PretrainConfig) -> PretrainConfig:
    p = cfg.pretrain
    if not p.splits:
        raise ConfigError("pretrain.splits: name at least one split (e.g. [unlabeled])")
    weights = p.weights()
    if any(w < 0 for w in weights.values()):
        raise ConfigError(f"pretrain.*_weight must be >= 0, got {weights}")
    if not any(weights.values()):
        raise ConfigError("pretrain: every objective weight is 0; turn at least one on")
    for name, low, high in (
        ("mlm_probability", 0.0, 1.0),
        ("mfm_probability", 0.0, 1.0),
        ("vtm_swap_probability", 0.0, 1.0),
    ):
        value = getattr(p, name)
        if not low < value < high:
            raise ConfigError(f"pretrain.{name}={value} must be in ({low}, {high})")
    if p.val_size < 0:
        raise ConfigError(f"pretrain.val_size={p.val_size} must be >= 0")
    if cfg.data.frames.source == "none" and (p.mfm_weight or p.vtm_weight or p.itc_weight):
        raise ConfigError(
            "data.frames.source=none leaves only MLM: set pretrain.mfm_weight=0, pretrain.vtm_weight=0 and "
            "pretrain.itc_weight=0"
        )
    return cfg
