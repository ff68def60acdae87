"""The model folder: one directory that ``predict``, ``export``, ``serve`` and ``train --init-from`` all accept.

Contents::

    config.yaml        the resolved Config, rewritten so that rebuilding needs no download
                       (model.text_encoder=null + the full BERT architecture in model.bert_config,
                       model.frame_encoder.pretrained=null); data.* keeps the preprocessing settings
    model.safetensors  all weights (safetensors.torch.save_model: shared/tied tensors handled)
    tokenizer files    tokenizer.save_pretrained(folder)
    categories.json    the taxonomy the model predicts: ``category_ids`` (the classes in output order),
                       ``names``, ``parents``, ``lv1_of_lv2``, ``lv1_ids``/``lv1_names``, the taxonomy file's
                       rows (``taxonomy``: columns and rows, extra columns kept), ``labeled_counts``, and
                       ``train_counts``: the per-class counts of the split the model was trained on (the class
                       prior of ``mmcls predict --logit-adjust``). A folder written before taxonomies were
                       files (only ``category_ids``/``lv1_of_lv2``) loads as the packaged WBDC2022 list.
                       config.yaml's ``data.categories`` is null in a folder: this file is its taxonomy.
    model_info.json    informational: the original pretrained sources, library versions

A training run directory (with ``best/`` and ``last/`` model folders) is accepted too: it means ``best/``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights

from mmcls import names
from mmcls.config import Config
from mmcls.data.categories import CategoryMap, Taxonomy, TaxonomyError
from mmcls.errors import MmclsError
from mmcls.files import check_regular_file, file_mode
from mmcls.models.factory import create_classifier
from mmcls.models.fusion import MultimodalClassifier

CONFIG_FILE = names.CONFIG_FILE
WEIGHTS_FILE = names.WEIGHTS_FILE
CATEGORIES_FILE = names.CATEGORIES_FILE
INFO_FILE = "model_info.json"
TOKENIZER_FILE = "tokenizer_config.json"
FORMAT_VERSION = 1
# BertConfig.to_dict() entries that describe the checkpoint, not the architecture.
_BERT_META_KEYS = (
    "transformers_version",
    "architectures",
    "model_type",
    "id2label",
    "label2id",
    "dtype",
    "torch_dtype",
)


class ModelDirError(MmclsError, ValueError):
    """A model folder's files are unusable (corrupt weights, a broken category map, a mismatched config)."""


@dataclass
class LoadedModel:
    model: MultimodalClassifier
    config: Config
    tokenizer: PreTrainedTokenizerBase
    categories: CategoryMap
    path: Path  # the model folder actually loaded (``RUN_DIR/best`` for a run directory)
    train_counts: list[int] | None = None  # per-class counts of the training split; None in older folders


def save_model_dir(
    path: str | Path,
    model: nn.Module,
    config: Config,
    tokenizer: PreTrainedTokenizerBase,
    categories: CategoryMap,
    train_counts: list[int] | None = None,
) -> None:
    """Write a self-contained model folder at ``path`` (replaced as a whole if it exists).

    ``train_counts``: per-class counts of the training split, saved in ``categories.json``.

    The folder is written next to ``path`` first and then renamed into place, so an interrupted save never
    leaves a half-written ``best/`` behind.
    """
    model = unwrap_model(model)
    if not isinstance(model, MultimodalClassifier):
        raise TypeError(f"save_model_dir expects a MultimodalClassifier, got {type(model).__name__}")
    if categories.num_lv2 != model.cfg.num_classes:
        raise ValueError(
            f"{categories.num_lv2} categories but the model has {model.cfg.num_classes} classes (model.num_classes)"
        )
    saved = portable_config(model, config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    header = (
        "# mmcls model folder config: rebuilt with random init, then model.safetensors is loaded.\n"
        f"# trained from text_encoder={config.model.text_encoder!r}, frame_encoder="
        f"{config.model.frame_encoder.type}:{config.model.frame_encoder.name}"
        f" (pretrained={config.model.frame_encoder.pretrained!r}); see {INFO_FILE}\n"
    )
    body = yaml.safe_dump(saved.to_dict(), sort_keys=False, allow_unicode=True)
    (tmp / CONFIG_FILE).write_text(header + body, encoding="utf-8")
    save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "mmcls_format": str(FORMAT_VERSION)})
    tokenizer.save_pretrained(str(tmp))
    categories_dict = {**categories.to_dict(), "labeled_counts": list(categories.labeled_counts)}
    if train_counts is not None:
        if len(train_counts) != categories.num_lv2:
            raise ValueError(
                f"train_counts has {len(train_counts)} entries for {categories.num_lv2} categories"
            )
        categories_dict["train_counts"] = [int(n) for n in train_counts]
    _write_json(tmp / CATEGORIES_FILE, categories_dict)
    _write_json(tmp / INFO_FILE, _model_info(model, config))
    for item in tmp.iterdir():  # safetensors writes 0600: give the folder ordinary, shareable permissions
        if item.is_file():
            item.chmod(file_mode())
    _replace_dir(tmp, path)


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder (or a run directory's ``best/``) in eval mode on ``device``; no network needed."""
    folder = resolve_model_dir(path)
    missing = [
        name
        for name in (CONFIG_FILE, WEIGHTS_FILE, CATEGORIES_FILE, TOKENIZER_FILE)
        if not (folder / name).is_file()
    ]
    if missing:
        raise FileNotFoundError(f"{folder}: incomplete model folder, missing {missing}")
    for name in (CONFIG_FILE, WEIGHTS_FILE, CATEGORIES_FILE):
        check_regular_file(folder / name, what=name)
    config = Config.from_yaml(folder / CONFIG_FILE)
    categories = _load_categories(folder / CATEGORIES_FILE)
    train_counts = _load_train_counts(folder / CATEGORIES_FILE, categories.num_lv2)
    if categories.num_lv2 != config.model.num_classes:
        raise ModelDirError(
            f"{folder}: {CATEGORIES_FILE} has {categories.num_lv2} categories, "
            f"{CONFIG_FILE} says model.num_classes={config.model.num_classes}"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelDirError(f"{folder}: the tokenizer files cannot be loaded: {_first_line(exc)}") from exc
    frames = config.data.frames
    try:
        # Every weight is overwritten by the strict load below, so the random initialisation is skipped: for
        # the base architecture it took 8 s of a CPU start-up (0.3 s without). Buffers are not affected.
        with no_init_weights():
            model = create_classifier(
                config.model,
                image_size=frames.image_size,
                pixel_mean=tuple(frames.mean),
                pixel_std=tuple(frames.std),
                feature_dim=frames.feature_dim,
            ).to(device)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ModelDirError(
            f"{folder / CONFIG_FILE}: does not describe a model that can be built: {_first_line(exc)}"
        ) from exc
    weights = folder / WEIGHTS_FILE
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except SafetensorError as exc:
        raise ModelDirError(
            f"{weights}: not a readable safetensors file (empty, truncated or another format): {_first_line(exc)}"
        ) from exc
    except RuntimeError as exc:
        raise ModelDirError(
            f"{weights}: weights do not match {CONFIG_FILE}: {_mismatch_summary(exc)}"
        ) from exc
    model.eval()
    return LoadedModel(
        model=model,
        config=config,
        tokenizer=tokenizer,
        categories=categories,
        path=folder,
        train_counts=[int(n) for n in train_counts] if train_counts is not None else None,
    )


def _load_train_counts(path: Path, num_classes: int) -> list[int] | None:
    """``train_counts`` of ``categories.json`` (the training split's class counts), None if the folder has none."""
    counts = json.loads(path.read_bytes().decode("utf-8")).get("train_counts")
    if counts is None:
        return None
    if (
        not isinstance(counts, list)
        or len(counts) != num_classes
        or not all(isinstance(n, int) and n >= 0 for n in counts)
    ):
        raise ModelDirError(f"{path}: train_counts must be {num_classes} non-negative integers")
    return counts


def _load_categories(path: Path) -> CategoryMap:
    """The folder's taxonomy, checked enough that a hand-edited or corrupt file fails here, in one line."""
    try:
        values = json.loads(path.read_bytes().decode("utf-8"))
        ids, lv1 = values["category_ids"], values.get("lv1_of_lv2")
        if not isinstance(ids, list) or not ids or not all(isinstance(c, str) and c for c in ids):
            raise ValueError("category_ids must be a non-empty list of id strings")
        if lv1 is not None and (not isinstance(lv1, list) or len(lv1) != len(ids)):
            raise ValueError("lv1_of_lv2 must be a list as long as category_ids")
        categories = Taxonomy.from_dict(values, source=str(path))
        if list(categories.category_ids) != ids:
            raise ValueError("category_ids differ from the classes of its taxonomy rows")
        return categories
    except TaxonomyError as exc:
        detail = str(exc).removeprefix(f"{path}: ")
        raise ModelDirError(f"{path}: not a valid category map: {detail}") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else _first_line(exc)
        raise ModelDirError(f"{path}: not a valid category map: {detail}") from exc


def load_model_categories(path: str | Path) -> CategoryMap:
    """The taxonomy of a model folder (or a run directory's ``best/``), without loading the model."""
    folder = resolve_model_dir(path)
    check_regular_file(folder / CATEGORIES_FILE, what=CATEGORIES_FILE)
    return _load_categories(folder / CATEGORIES_FILE)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _mismatch_summary(exc: RuntimeError) -> str:
    """torch's 70-line key/shape mismatch report cut to its first few names."""
    text = " ".join(str(exc).split())
    return text[:300] + (" ..." if len(text) > 300 else "")


def resolve_model_dir(path: str | Path) -> Path:
    """``path`` itself if it is a model folder, ``path/best`` if it is a training run directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: model folder does not exist")
    found = find_model_dir(path)
    if found is not None:
        return found
    if (path / CONFIG_FILE).is_file():
        return path  # an incomplete model folder: load_model_dir names what is missing
    raise FileNotFoundError(
        f"{path}: not a model folder (no {CONFIG_FILE}) and not a training run directory (no best/{WEIGHTS_FILE})"
    )


def find_model_dir(path: Path) -> Path | None:
    """The ``best/`` rule (:data:`mmcls.names.BEST_DIR`): ``path`` if it holds the weights of a model folder,
    ``path/best`` if it is a training run directory with a best model, else None."""
    # A run directory also holds a config.yaml, so its best/ model wins when it has one.
    for folder in (path, path / names.BEST_DIR):
        if (folder / WEIGHTS_FILE).is_file():
            return folder
    return None


def portable_config(model: MultimodalClassifier, config: Config) -> Config:
    """``config`` rewritten so that :func:`load_model_dir` rebuilds ``model`` without downloading anything."""
    saved = config.copy()
    saved.model = copy.deepcopy(model.cfg)
    saved.model.text_encoder = None
    saved.model.init_from = None  # the folder's own weights are what it starts from
    saved.model.init_layers = saved.model.init_frame_layers = None  # (a selection of init_from's layers)
    saved.data.categories = None  # categories.json is the folder's taxonomy (a path would not travel)
    saved.model.bert_config = bert_config_dict(model.text_encoder.config)
    encoder = saved.model.frame_encoder
    encoder.pretrained = None
    encoder.kwargs = dict(model.frame_encoder.build_kwargs)  # e.g. force_quick_gelu: part of the architecture
    if encoder.type != "identity":
        saved.data.frames.image_size = model.image_size
    return saved


def bert_config_dict(bert_config: Any) -> dict[str, Any]:
    """The architecture part of a ``BertConfig`` as plain YAML-safe values."""
    values = bert_config.to_dict()
    return {k: v for k, v in values.items() if k not in _BERT_META_KEYS and not k.startswith("_")}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP/FSDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _model_info(model: MultimodalClassifier, config: Config) -> dict[str, Any]:
    encoder = config.model.frame_encoder
    versions: dict[str, str | None] = {}
    for dist in ("mmcls", "torch", "transformers", "open_clip_torch", "timm", "safetensors"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "format": "mmcls-model",
        "format_version": FORMAT_VERSION,
        "source": {
            "text_encoder": config.model.text_encoder,
            "frame_encoder": {"type": encoder.type, "name": encoder.name, "pretrained": encoder.pretrained},
        },
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "versions": versions,
    }


def _write_json(path: Path, values: dict) -> None:
    path.write_text(json.dumps(values, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst``; an existing ``dst`` is removed only after the swap."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
