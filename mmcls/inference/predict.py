"""``mmcls predict``: a model folder + a data split -> the challenge's submission CSV; or a few files
(``--video``: video files or frame zips, no data root) -> their likeliest classes.

Under ``torchrun`` every rank predicts its share of the split; the predictions are gathered so that each
rank returns the whole split, and only rank 0 writes the file (see ``mmcls.cli.predict``).

Logit adjustment (``--logit-adjust TAU``): a classifier trained on long-tailed data under-predicts the rare
classes; predicting ``argmax_c (logit_c - TAU * log p_c)`` with the class prior ``p`` of the training split
trades head-class precision for tail-class recall, which macro F1 rewards. The prior is the add-one smoothed
``train_counts`` saved in the model folder's ``categories.json`` by training.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmcls.config import Config, ConfigError, FrameConfig
from mmcls.data.annotations import (
    AnnotationError,
    Record,
    annotation_path,
    first_duplicate_id,
    load_records,
    parse_record,
)
from mmcls.data.builders import build_dataset, build_eval_loader
from mmcls.data.categories import CategoryMap
from mmcls.data.dataset import VideoTextDataset
from mmcls.data.frames import FrameClip, FrameError, FrameSource, VideoFileSource, ZipFramesSource
from mmcls.data.text import TextEncoder
from mmcls.engine.distributed import (
    check_frame_decoder,
    check_precision,
    init_distributed,
    resolve_device,
    world_info_from_env,
)
from mmcls.engine.inference import Predictions, cast_for_inference, gather_predictions, predict_loader
from mmcls.engine.logger import show_progress
from mmcls.engine.losses import adjust_logits, log_prior
from mmcls.engine.tau import saved_tau
from mmcls.errors import MmclsError
from mmcls.files import (
    InputFileError,
    OutputError,
    atomic_write_json,
    atomic_writer,
    check_regular_file,
    same_file,
)
from mmcls.models import LoadedModel, load_model_dir
from mmcls.names import FrameDecoder


class LogitAdjustError(MmclsError, ValueError):
    """``--logit-adjust`` cannot be applied (the model folder has no training-split class counts)."""


def predict_split(
    model_dir: str | Path,
    data_root: str | Path,
    split: str = "test",
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = True,
    ids: Collection[str] | None = None,
    logit_adjust: float | Literal["auto"] = "auto",
    frame_decoder: FrameDecoder = "pil",
) -> tuple[list[str], Predictions, list[str]]:
    """Predict every record of ``split``; returns (ids in annotation order, predictions, category ids).

    For a tagging model (``data.task: multilabel``) the probabilities are per-class sigmoids and the category
    ids the most probable class; :func:`predict_tags` turns them into tags.

    ``batch_size`` is per process. ``ids``: predict only these records (e.g. one fold's validation records
    for out-of-fold predictions); every one must be in the split. ``logit_adjust`` is TAU of the logit
    adjustment (0 = none; ``auto`` = the TAU the model folder saved, else 0); the returned probabilities are
    then the adjusted ones. ``frame_decoder``: ``pil``
    (DataLoader workers) or ``cuda`` (batched on the GPU; see ``mmcls.data.device_decode``).
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size={batch_size}: must be at least 1")
    if num_workers is not None and num_workers < 0:
        raise ConfigError(f"--num-workers={num_workers}: must be at least 0")
    torch_device = resolve_device(device, world_info_from_env(), setting="--device")
    check_precision(precision, torch_device, setting="--precision")
    check_frame_decoder(frame_decoder, torch_device, setting="--frame-decoder")
    dist_info = init_distributed(torch_device)
    loaded = load_model_dir(model_dir, device=torch_device)
    records = records_to_predict(data_root, split, loaded.categories, ids, loaded.config.data.annotations)
    loader = model_data_loader(
        loaded,
        data_root,
        split,
        records,
        batch_size=batch_size,
        num_workers=num_workers,
        frame_decoder=frame_decoder,
        device=torch_device,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
    )
    model = cast_for_inference(loaded.model, torch_device, precision)
    multilabel = loaded.config.data.task == "multilabel"
    if multilabel and logit_adjust not in ("auto", 0):
        raise LogitAdjustError("--logit-adjust: single-label only; this model tags (data.task=multilabel)")
    preds = predict_loader(
        model,
        loader,
        torch_device,
        precision,
        progress=show_progress(progress) and dist_info.is_main,
        multilabel=multilabel,
    )
    preds = gather_predictions(preds)  # all ranks' shares, each record once (a no-op in one process)
    if not multilabel:  # tags are decided by their thresholds, never by a prior shift
        preds = apply_logit_adjust(preds, loaded, logit_adjust)
    order = np.argsort(preds.indices)
    if not np.array_equal(preds.indices[order], np.arange(len(records))):
        raise RuntimeError(f"prediction covered {len(preds.indices)} of {len(records)} records of {split!r}")
    category_ids = [loaded.categories.category_id(int(i)) for i in preds.pred[order]]
    return [r.id for r in records], preds, category_ids


def model_data_loader(
    loaded: LoadedModel,
    data_root: str | Path,
    split: str,
    records: Sequence[Record],
    *,
    batch_size: int,
    num_workers: int | None,
    frame_decoder: FrameDecoder,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """An in-order loader over ``records`` of ``split`` as the model folder ``loaded`` reads data (its config
    and tokenizer). Unreadable frames fall back to text, so every record gets an output; ``num_workers``
    None takes the model's ``data.num_workers``; ``rank``/``world_size`` give this process's shard."""
    cfg = loaded.config
    dataset = build_dataset(
        cfg,
        data_root,
        split,
        records,
        loaded.tokenizer,
        loaded.categories,
        train=False,
        on_error="text_only",
        frame_decoder=frame_decoder,
    )
    workers = cfg.data.num_workers if num_workers is None else num_workers
    pad_id = loaded.tokenizer.pad_token_id or 0
    return build_eval_loader(
        dataset, batch_size, workers, pad_id, rank=rank, world_size=world_size, device=device
    )


def records_to_predict(
    data_root: str | Path,
    split: str,
    categories: CategoryMap,
    ids: Collection[str] | None = None,
    files: Mapping[str, str] | None = None,
) -> list[Record]:
    """The records of ``split`` to predict (only ``ids`` when given); refuses an empty split and repeated ids.

    ``files`` is the model's ``data.annotations`` (where its config says each split's records are).
    """
    ann_path = annotation_path(data_root, split, files)
    records = load_records(ann_path, categories=categories)
    if not records:
        raise AnnotationError(ann_path, "no records to predict")
    duplicate = first_duplicate_id(records)
    if duplicate is not None:
        # A submission needs one line per id: a repeated id would make it invalid (evaluate refuses it).
        raise AnnotationError(
            ann_path, f"duplicate id {duplicate[1]!r} (ids must be unique)", duplicate[0], "id"
        )
    if ids is not None:
        wanted = set(ids)
        records = [r for r in records if r.id in wanted]
        if len(records) != len(wanted):
            raise ValueError(f"{len(wanted) - len(records)} of the requested ids are not in split {split!r}")
    return records


def apply_logit_adjust(
    preds: Predictions, loaded: LoadedModel, logit_adjust: float | Literal["auto"]
) -> Predictions:
    """``preds`` adjusted with TAU ``logit_adjust``; ``auto``: the TAU chosen on validation and saved in the
    model folder (``mmcls.engine.tau``), 0 for a folder without it (older runs predict as before)."""
    tau = saved_tau(loaded.path) if logit_adjust == "auto" else float(logit_adjust)
    if tau and loaded.train_counts is None:
        raise LogitAdjustError(
            f"--logit-adjust: {loaded.path}/categories.json has no train_counts (the training split's class "
            "counts, saved by training since the recipe update); retrain, or predict with --logit-adjust 0"
        )
    return adjusted_predictions(preds, np.asarray(loaded.train_counts), tau) if tau else preds


def adjusted_predictions(preds: Predictions, train_counts: np.ndarray, tau: float) -> Predictions:
    """``preds`` with probabilities ``softmax(log p - tau * log prior)`` (``tau = 0``: ``preds`` itself).

    The log-probabilities equal the logits up to a per-row constant, so this is the softmax of the adjusted
    logits; probabilities that underflowed to 0 stay at the bottom (clipped at the smallest float32).
    """
    if tau == 0 or len(preds.indices) == 0:
        return preds
    log_probs = np.log(np.maximum(preds.probs.astype(np.float64), np.finfo(np.float32).tiny))
    adjusted = adjust_logits(log_probs, log_prior(train_counts), tau)
    adjusted = np.exp(adjusted - adjusted.max(axis=1, keepdims=True))
    probs = (adjusted / adjusted.sum(axis=1, keepdims=True)).astype(np.float32)
    return dataclasses.replace(preds, probs=probs)


def check_submission_path(path: str | Path, inputs: list[Path]) -> None:
    """Refuse, before predicting, an output path that is a folder or one of the command's own input files."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; --out takes the path of the CSV file to write")
    for item in inputs:
        if same_file(path, item) or path.resolve() == item.resolve():
            raise OutputError(
                f"{path}: is an input of this command ({item}); write the predictions elsewhere"
            )


def check_replaceable(out: str | Path, *, overwrite: bool = False) -> None:
    """``--out`` of ``predict``/``client``: an existing file is replaced only if it is a CSV (an earlier result).

    Re-running a prediction replaces its own earlier CSV (the usual workflow), but an existing file of another
    kind (``--out model.safetensors``, ``--out notes.txt``) only with ``overwrite``: a typo in ``--out`` must not
    destroy a user's file. The files named after ``--out`` (``OUT.data_errors.json``, ``OUT.probs.npy``) carry
    mmcls's own suffixes and are replaced as earlier outputs.
    """
    out = Path(out)
    if out.exists() and out.suffix.lower() != ".csv" and not overwrite:
        raise OutputError(
            f"{out}: exists and is not a prediction file (.csv); choose another --out or pass --overwrite to "
            "replace it"
        )


def write_submission(path: str | Path, ids: list[str], category_ids: list[str]) -> None:
    """``id,category_id`` lines, no header, in annotation order (the challenge's submission format).

    Written atomically: a failure (a full disk, a kill) leaves the previous file as it was.
    """
    with atomic_writer(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(zip(ids, category_ids))


def write_error_report(path: str | Path, errors: dict[str, int]) -> None:
    """``{"frames": {kind: count}, "total": n}``: the problems of a prediction run, like training's report."""
    atomic_write_json(path, {"frames": dict(sorted(errors.items())), "total": int(sum(errors.values()))})


# ------------------------------------------------------------------------------------------ predict --video
class VideoInputError(MmclsError, ValueError):
    """``predict --video``: a named file is missing or not a regular file, or the model cannot read videos."""


class GivenFilesSource(FrameSource):
    """The frames of files named on the command line: each record's ``video`` is an absolute path, read as a
    frame zip when it ends in ``.zip`` and as a video file (decord) otherwise, with the model's frame settings
    (count, size, evaluation sampling) through the data path's own zip and video sources."""

    dtype = torch.uint8

    def __init__(self, cfg: FrameConfig):
        super().__init__(cfg)
        self.zips = ZipFramesSource(cfg, root=Path())
        self.videos = VideoFileSource(cfg, video_dir=None)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return self.videos.item_shape

    def read(self, video_id: str, rng: np.random.Generator | None = None) -> FrameClip:
        raise FrameError("missing_file", video_id, "a given file is read through its record")

    def read_record(self, record: Record, rng: np.random.Generator | None = None) -> FrameClip:
        path = Path(record.video or record.id)
        if path.suffix.lower() == ".zip":
            return self.zips.read_path(path, rng)
        return self.videos.read_record(record, rng)


def video_records(
    videos: Sequence[str | Path], title: str = "", asr: str = "", ocr: str = ""
) -> list[Record]:
    """One record per file (absolute paths), all with the same text; refuses a missing or non-regular file.

    ``ocr`` is plain text (one line) or the official JSON list ``[{"time", "text"}, ...]``, as a CSV
    annotation file's ``ocr`` column.
    """
    records = []
    for index, video in enumerate(videos):
        try:
            check_regular_file(video, what="video file")
        except FileNotFoundError:
            raise VideoInputError(f"--video {video}: no such file") from None
        except InputFileError as exc:  # a folder, a FIFO
            raise VideoInputError(f"--video {video}: {exc.problem}") from None
        except OSError as exc:
            raise VideoInputError(f"--video {video}: {exc.strerror or exc}") from None
        item = {"id": str(index), "title": title, "asr": asr, "ocr": _ocr_lines(ocr)}
        record = parse_record(item, Path("--ocr"), 0, frozenset())
        records.append(dataclasses.replace(record, video=str(Path(video).resolve())))
    return records


def _ocr_lines(text: str) -> list[dict]:
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, list):
            return value  # validated by parse_record
    return [{"time": 0, "text": stripped}] if stripped else []


def video_loader(
    config: Config, tokenizer, categories: CategoryMap, records: Sequence[Record], batch_size: int = 64
) -> DataLoader:
    """An in-order loader over ``records`` made by :func:`video_records`, preprocessed as the model's eval loader
    does (its tokenizer, text budgets, frame count and size); a file that cannot be decoded raises its
    :class:`FrameError` (a user who names one file wants to know, not a text-only guess). One process."""
    frames = config.data.frames
    if frames.source == "zip_feats":
        raise VideoInputError(
            "--video: the model reads precomputed frame features (data.frames.source: zip_feats), not "
            "frames; use a model trained on frames"
        )
    source = None if frames.source == "none" else GivenFilesSource(frames)
    dataset = VideoTextDataset(
        records, TextEncoder(tokenizer, config.data.text), source, categories, train=False, on_error="raise"
    )
    return build_eval_loader(dataset, batch_size, num_workers=0, pad_token_id=tokenizer.pad_token_id or 0)


def predict_videos(
    model_dir: str | Path,
    records: Sequence[Record],
    *,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "fp32",
    logit_adjust: float | Literal["auto"] = "auto",
) -> tuple[CategoryMap, np.ndarray]:
    """``(taxonomy, probabilities [n, C])`` of the records of :func:`video_records`, with the torch backend."""
    torch_device = resolve_device(device, world_info_from_env(), setting="--device")
    check_precision(precision, torch_device, setting="--precision")
    loaded = load_model_dir(model_dir, device=torch_device)
    loader = video_loader(loaded.config, loaded.tokenizer, loaded.categories, records, batch_size)
    model = cast_for_inference(loaded.model, torch_device, precision)
    preds = predict_loader(model, loader, torch_device, precision, progress=False)
    preds = apply_logit_adjust(preds, loaded, logit_adjust)
    return loaded.categories, preds.probs[np.argsort(preds.indices)]


def top_classes(
    videos: Sequence[str | Path], probs: np.ndarray, categories: CategoryMap, k: int
) -> list[dict]:
    """``[{"video", "top": [{"category_id", "name", "prob"}, ...]}]``: the ``k`` likeliest classes of each video."""
    results = []
    for video, row in zip(videos, probs):
        order = np.argsort(-row, kind="stable")[:k]
        top = []
        for index in order:
            category_id = categories.category_id(int(index))
            top.append(
                {"category_id": category_id, "name": categories.name(category_id), "prob": float(row[index])}
            )
        results.append({"video": str(video), "top": top})
    return results


# ------------------------------------------------------------------------------------------------ multilabel
def predict_tags(
    model_dir: str | Path,
    data_root: str | Path,
    split: str = "test",
    *,
    threshold: str = "per-class",
    top_k: int | None = None,
    min_tags: int | None = None,
    **kwargs: object,
) -> tuple[list[str], np.ndarray, np.ndarray, Predictions]:
    """Tag every record of ``split`` with a multilabel model: ``(ids, probs [N, C] in id order, tags [N, C]
    0/1, predictions)``.

    ``threshold``: ``per-class`` or ``global`` (the model folder's ``thresholds.json``, chosen on validation
    by training) or a probability; ``top_k``: at most K tags per video; ``min_tags``: at least this many
    (default: the model's ``train.thresholds.min_tags``). Other keyword arguments go to :func:`predict_split`.
    """
    from mmcls.models.model_dir import load_model_categories, resolve_model_dir
    from mmcls.tagging import load_thresholds, model_tags, threshold_vector

    folder = resolve_model_dir(model_dir)
    config = _folder_config(folder)
    if config.data.task != "multilabel":
        raise ConfigError(f"{folder}: a single-label model (data.task={config.data.task}); it does not tag")
    category_ids = list(load_model_categories(folder).category_ids)
    # Refused before predicting: a missing thresholds file, a bad --threshold or --top-k.
    threshold_vector(threshold, load_thresholds(folder, category_ids), len(category_ids))
    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top-k={top_k}: must be at least 1")
    ids, preds, _ = predict_split(model_dir, data_root, split, **kwargs)  # type: ignore[arg-type]
    probs = preds.probs[np.argsort(preds.indices)]
    return ids, probs, model_tags(folder, config, category_ids, probs, threshold, top_k, min_tags), preds


def _folder_config(folder: Path):  # noqa: ANN202 - a Config; imported late like the model folder's readers
    from mmcls.config import Config
    from mmcls.names import CONFIG_FILE

    return Config.from_yaml(folder / CONFIG_FILE)


def write_tags(
    path: str | Path,
    ids: Sequence[str],
    probs: np.ndarray,
    tags: np.ndarray,
    categories: CategoryMap,
    thresholds: np.ndarray | None = None,
) -> None:
    """The multilabel prediction file: CSV ``id,labels`` (class ids ``|``-separated, in class order) and the
    probabilities beside it (``OUT.probs.npy`` + ``OUT.probs.json``: ids, class order and the ``thresholds``
    used, for ``mmcls evaluate --report``), all atomically."""
    from mmcls.data.annotations import LABELS_SEPARATOR
    from mmcls.data.prob_files import save_probs
    from mmcls.metrics import TAG_CSV_HEADER, tag_probs_path

    class_ids = np.asarray(categories.category_ids, dtype=object)
    meta = {} if thresholds is None else {"thresholds": [round(float(t), 6) for t in thresholds]}
    save_probs(tag_probs_path(path), probs, ids, categories, task="multilabel", **meta)
    with atomic_writer(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(TAG_CSV_HEADER)
        writer.writerows(
            (video_id, LABELS_SEPARATOR.join(class_ids[row])) for video_id, row in zip(ids, tags)
        )
