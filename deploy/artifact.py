"""The artifact folder that ``mmcls export`` writes and ``predict``/``serve`` read.

Contents::

    model.onnx | model.pt2 | model.plan   the compiled model (one of them; see ``export.json``'s ``model_file``)
    config.yaml                           the model folder's config (preprocessing settings under data.*)
    tokenizer files                       tokenizer.save_pretrained(folder)
    categories.json                       the category map
    export.json                           what a runtime needs to feed the model without guessing

``export.json`` is the contract: input/output names, dtypes and dimension names, the dynamic dimensions with
their ranges, how frames are fed (uint8 pixels or float32 features), mean/std, the most frames and tokens, and
the library versions that produced it. A model folder (``mmcls.models.model_dir``) holds the same
preprocessing files, so both load their assets through :func:`load_assets`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mmcls import names
from mmcls.config import Config
from mmcls.data.categories import CategoryMap
from mmcls.deploy.backends import EXPORTABLE
from mmcls.errors import MmclsError

EXPORT_FORMAT_VERSION = 1
#: The compiled model file of each exported format (from the backend registry).
MODEL_FILES = {name: info.model_file for name, info in EXPORTABLE.items()}


class ArtifactError(MmclsError, ValueError):
    """An artifact or model folder that cannot be used as asked (names the folder and the problem)."""


@dataclass
class Assets:
    """What preprocessing and postprocessing need, whatever runs the model."""

    folder: Path
    config: Config
    tokenizer: Any
    categories: CategoryMap
    export_info: dict[str, Any] | None  # None for a model folder

    @property
    def backend(self) -> str:
        """``torch`` for a model folder, the export format for an artifact folder."""
        return "torch" if self.export_info is None else self.export_info["format"]

    @property
    def frame_input(self) -> str:
        """``pixels`` (uint8 ``[B, T, 3, S, S]``), ``features`` (float32 ``[B, T, D]``) or ``none``."""
        source = self.config.data.frames.source
        return {"zip_feats": "features", "none": "none"}.get(source, "pixels")


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / names.EXPORT_FILE).is_file()


def load_assets(path: str | Path) -> Assets:
    """Config, tokenizer and categories of an artifact folder or of a model folder / run directory."""
    from transformers import AutoTokenizer

    from mmcls.models.model_dir import resolve_model_dir

    path = Path(path)
    info = None
    if is_artifact(path):
        folder = path
        info = read_export_info(folder)
    else:
        folder = resolve_model_dir(path)
    for name in (names.CONFIG_FILE, names.CATEGORIES_FILE):
        if not (folder / name).is_file():
            raise ArtifactError(f"{folder}: missing {name}")
    config = Config.from_yaml(folder / names.CONFIG_FILE)
    categories = CategoryMap.from_dict(
        json.loads((folder / names.CATEGORIES_FILE).read_text(encoding="utf-8"))
    )
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return Assets(folder=folder, config=config, tokenizer=tokenizer, categories=categories, export_info=info)


def read_export_info(folder: Path) -> dict[str, Any]:
    path = folder / names.EXPORT_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not readable JSON: {exc}") from exc
    if info.get("format") not in names.EXPORT_FORMATS:
        raise ArtifactError(f"{path}: unknown format {info.get('format')!r}")
    model_file = info.get("model_file")
    expected = MODEL_FILES.get(info["format"])
    if expected is not None and model_file != expected:
        raise ArtifactError(
            f"{path}: format {info['format']!r} is compiled into {expected}, but model_file is {model_file!r} "
            "(an edited or mixed-up export.json; export the model again)"
        )
    if model_file and not (folder / model_file).is_file():
        raise ArtifactError(f"{folder}: {names.EXPORT_FILE} names {model_file}, which is missing")
    if expected is not None:
        _check_tensor_names(path, info, "inputs", names.MODEL_INPUTS)
        _check_tensor_names(path, info, "outputs", names.GRAPH_OUTPUTS)
        if info.get("frame_input") not in ("pixels", "features"):
            raise ArtifactError(
                f"{path}: frame_input {info.get('frame_input')!r}: expected pixels or features"
            )
    return info


def _check_tensor_names(path: Path, info: dict[str, Any], key: str, wanted: tuple[str, ...]) -> None:
    """``export.json``'s ``inputs``/``outputs`` name exactly the graph's tensors (:mod:`mmcls.names`)."""
    given = info.get(key)
    if not isinstance(given, dict) or set(given) != set(wanted):
        found = sorted(given) if isinstance(given, dict) else given
        raise ArtifactError(
            f"{path}: {key} must be {', '.join(wanted)} (the names the graph was exported with), got {found!r}"
        )


def build_export_info(
    config: Config,
    *,
    fmt: str,
    precision: str,
    model_file: str,
    device: str,
    frame_input: str,
    dynamic_dims: Mapping[str, tuple[int, int | None]],
    num_lv1: int,
) -> dict[str, Any]:
    """The ``export.json`` dictionary (see the module docstring)."""
    frames = config.data.frames
    if frame_input == "pixels":
        frames_spec = {
            "dtype": "uint8",
            "shape": ["batch", "frames", 3, frames.image_size, frames.image_size],
        }
    else:
        frames_spec = {"dtype": "float32", "shape": ["batch", "frames", frames.feature_dim]}
    inputs = {
        names.INPUT_IDS: {"dtype": "int64", "shape": ["batch", "text"]},
        names.ATTENTION_MASK: {"dtype": "int64", "shape": ["batch", "text"]},
        names.FRAMES: frames_spec,
        names.FRAME_MASK: {"dtype": "bool", "shape": ["batch", "frames"]},
    }
    outputs = {
        names.PROBS: {"dtype": "float32", "shape": ["batch", config.model.num_classes]},
        names.LV1_PROBS: {"dtype": "float32", "shape": ["batch", num_lv1]},
    }
    return {
        "format": fmt,
        "format_version": EXPORT_FORMAT_VERSION,
        "model_file": model_file,
        "precision": precision,
        "device": device,
        "inputs": inputs,
        "outputs": outputs,
        "dynamic_dims": {name: {"min": lo, "max": hi} for name, (lo, hi) in dynamic_dims.items()},
        # Frames go in as uint8 pixels for image models: a quarter of float32's bytes, normalised in the graph.
        "frame_input": frame_input,
        "image_size": frames.image_size,
        "feature_dim": frames.feature_dim,
        "mean": list(frames.mean),
        "std": list(frames.std),
        "max_frames": frames.max_frames,
        "model_max_frames": config.model.max_frames,
        "max_text_length": config.data.text.max_length,
        "versions": _versions(),
    }


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist in ("mmcls", "torch", "onnx", "onnxruntime", "transformers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions
