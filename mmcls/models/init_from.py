"""``model.init_from``: start a model from another model's weights, key by key, and say what happened.

Used for fine-tuning from a pretraining run, for continuing a run on other data (stages), and for a smaller
student that keeps its teacher's lowest layers. Keys present in both with the same shape are loaded; keys only
the model has keep their initialisation ("missing"), keys only the file has are ignored ("unexpected"). A key
whose shape differs is an error: silently keeping a random tensor there would hide a wrong architecture.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mmcls.errors import MmclsError
from mmcls.models.model_dir import WEIGHTS_FILE, resolve_model_dir

log = logging.getLogger("mmcls.models")


class InitFromError(MmclsError, ValueError):
    """``model.init_from`` names weights that cannot be loaded into the model (missing file, wrong shapes)."""


@dataclass
class InitFromReport:
    source: Path
    loaded: list[str]
    missing: list[str]  # the model's keys that the file lacks: they keep their initialisation
    unexpected: list[str]  # the file's keys that the model lacks: ignored

    def describe(self) -> str:
        return (
            f"init_from {self.source}: loaded {len(self.loaded)} keys; model keys not in the file "
            f"(initialised as usual): {summarize_keys(self.missing)}; file keys the model lacks (ignored): "
            f"{summarize_keys(self.unexpected)}"
        )


def load_init_weights(model: nn.Module, source: str | Path) -> InitFromReport:
    """Load every matching tensor of ``source`` (model folder, run directory or ``.safetensors`` file)."""
    path = init_weights_path(source)
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise InitFromError(f"model.init_from: {path}: not a readable safetensors file: {exc}") from None
    own = model.state_dict()
    mismatched = [k for k in weights if k in own and tuple(weights[k].shape) != tuple(own[k].shape)]
    if mismatched:
        first = mismatched[0]
        raise InitFromError(
            f"model.init_from: {path}: {len(mismatched)} tensor(s) differ in shape from the model, e.g. "
            f"{first}: {tuple(weights[first].shape)} in the file, {tuple(own[first].shape)} in the model "
            "(a different architecture: check model.bert_config, model.frame_encoder and the tokenizer)"
        )
    shared = {k: v for k, v in weights.items() if k in own}
    if not shared:
        raise InitFromError(f"model.init_from: {path}: no tensor name matches this model")
    model.load_state_dict(shared, strict=False)
    report = InitFromReport(
        source=path,
        loaded=sorted(shared),
        missing=sorted(k for k in own if k not in weights),
        unexpected=sorted(k for k in weights if k not in own),
    )
    log.info(report.describe())
    return report


def init_weights_path(source: str | Path) -> Path:
    source = Path(source)
    if source.suffix == ".safetensors":
        if not source.is_file():
            raise InitFromError(f"model.init_from: {source}: no such file")
        return source
    try:
        return resolve_model_dir(source) / WEIGHTS_FILE
    except FileNotFoundError as exc:
        raise InitFromError(f"model.init_from: {exc}") from None


def summarize_keys(keys: Iterable[str], depth: int = 2) -> str:
    """``"none"`` or ``"classifier.* (2), video_classifier.* (2)"``: keys counted by their first components."""
    groups = Counter(".".join(key.split(".")[:depth]) + ".*" for key in keys)
    return ", ".join(f"{prefix} ({n})" for prefix, n in sorted(groups.items())) or "none"
