"""``model.init_from``: start a model from another model's weights, key by key, and say what happened.

Used for fine-tuning from a pretraining run, for continuing a run on other data (stages), and for a smaller
student that keeps chosen layers of its teacher: ``model.init_layers`` ``[0, 2, 4, 7, 9, 11]`` loads the source's
BERT layer ``i`` into the student's layer ``k`` (entry ``k`` of the list), ``model.init_frame_layers`` does the
same for the frame encoder's transformer blocks; without them a student keeps its source's lowest layers. Keys present in both with the same shape are loaded; keys only
the model has keep their initialisation ("missing"), keys only the file has are ignored ("unexpected"). A key
whose shape differs is an error: silently keeping a random tensor there would hide a wrong architecture.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from mmcls.errors import MmclsError
from mmcls.models.model_dir import WEIGHTS_FILE, resolve_model_dir

log = logging.getLogger("mmcls.models")

# The numbered layers ``model.init_layers``/``init_frame_layers`` select: BERT's encoder layers, and the
# frame backbone's blocks (open_clip's ``transformer.resblocks.i``, timm's ``blocks.i``).
TEXT_LAYER_RE = re.compile(r"^(text_encoder\.encoder\.layer\.)(\d+)(\..*)$")
FRAME_BLOCK_RE = re.compile(r"^(frame_encoder\.backbone\.(?:.+\.)?(?:resblocks|blocks)\.)(\d+)(\..*)$")


class InitFromError(MmclsError, ValueError):
    """``model.init_from`` names weights that cannot be loaded into the model (missing file, wrong shapes)."""


@dataclass
class InitFromReport:
    source: Path
    loaded: list[str]
    missing: list[str]  # the model's keys that the file lacks: they keep their initialisation
    unexpected: list[str]  # the file's keys that the model lacks: ignored (named as in the file)
    # ``{"text": [i0, i1, ...]}``: the model's layer k was loaded from the file's layer i_k (init_layers)
    layer_maps: dict[str, list[int]] = field(default_factory=dict)

    def describe(self) -> str:
        chosen = "".join(
            f"; {kind} layers from the source's {layers}" for kind, layers in self.layer_maps.items()
        )
        return (
            f"init_from {self.source}: loaded {len(self.loaded)} keys{chosen}; model keys not in the file "
            f"(initialised as usual): {summarize_keys(self.missing)}; file keys the model lacks (ignored): "
            f"{summarize_keys(self.unexpected)}"
        )


def load_init_weights(
    model: nn.Module,
    source: str | Path,
    *,
    layers: list[int] | None = None,
    frame_layers: list[int] | None = None,
) -> InitFromReport:
    """Load every matching tensor of ``source`` (model folder, run directory or ``.safetensors`` file).

    ``layers``/``frame_layers``: the source layers that become the model's BERT layers / frame blocks, in order
    (default: the model config's ``init_layers``/``init_frame_layers``; None = same index).
    """
    path = init_weights_path(source)
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise InitFromError(f"model.init_from: {path}: not a readable safetensors file: {exc}") from None
    own = model.state_dict()
    cfg = getattr(model, "cfg", None)
    selections = {
        "text": (TEXT_LAYER_RE, layers if layers is not None else getattr(cfg, "init_layers", None)),
        "frame": (
            FRAME_BLOCK_RE,
            frame_layers if frame_layers is not None else getattr(cfg, "init_frame_layers", None),
        ),
    }
    layer_maps: dict[str, list[int]] = {}
    skipped: list[str] = []
    for kind, (pattern, chosen) in selections.items():
        if chosen:
            weights, unused = select_layers(weights, own, pattern, list(chosen), kind=kind, source=path)
            skipped += unused
            layer_maps[kind] = list(chosen)
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
        unexpected=sorted([*(k for k in weights if k not in own), *skipped]),
        layer_maps=layer_maps,
    )
    log.info(report.describe())
    return report


def select_layers(
    weights: dict[str, Tensor],
    own: dict[str, Tensor],
    pattern: re.Pattern[str],
    chosen: list[int],
    *,
    kind: str,
    source: Path,
) -> tuple[dict[str, Tensor], list[str]]:
    """``weights`` with the source's layer ``chosen[k]`` renamed to layer ``k`` (``pattern`` finds the layer
    index), and the names of the source layers left out. Counts and indices are checked (one-line errors)."""
    setting = "model.init_layers" if kind == "text" else "model.init_frame_layers"
    source_layers = {int(m.group(2)) for key in weights if (m := pattern.match(key))}
    model_layers = {int(m.group(2)) for key in own if (m := pattern.match(key))}
    if len(chosen) != len(model_layers):
        raise InitFromError(
            f"{setting}: {len(chosen)} layers {chosen} for a model with {len(model_layers)} {kind} layers"
        )
    missing = sorted(set(chosen) - source_layers)
    if missing:
        raise InitFromError(
            f"{setting}: {source} has no {kind} layer(s) {missing} (it has {len(source_layers)}: "
            f"0..{max(source_layers, default=-1)})"
        )
    renamed: dict[str, Tensor] = {}
    unused: list[str] = []
    target = {source_layer: k for k, source_layer in enumerate(chosen)}
    if len(target) != len(chosen):
        raise InitFromError(f"{setting}: {chosen} names a source layer twice")
    for key, value in weights.items():
        match = pattern.match(key)
        if match is None:
            renamed[key] = value
        elif int(match.group(2)) in target:
            renamed[f"{match.group(1)}{target[int(match.group(2))]}{match.group(3)}"] = value
        else:
            unused.append(key)
    return renamed, unused


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
