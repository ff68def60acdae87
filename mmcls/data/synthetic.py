"""A synthetic dataset in the official WBDC2022 layout, with learnable signal split between text and frames.

Layout written under ``OUT`` (exactly what the real data looks like)::

    annotations/labeled.json, unlabeled.json, test.json   JSON lists of records
    annotations/test_labels.json                          [{"id", "category_id"}] for ``mmcls evaluate``
    zip_frames/{split}/{id[-3:]}/{id}.zip                 JPEG frames 0000.jpg, 0001.jpg, ...
    zip_feats/{split}.zip                                 member "{id}.npy": float16 [num_frames, feature_dim]
    videos/{split}/{id}.mp4                               only with ``videos > 0`` (needs PyAV)

How the label is hidden in the two modalities
---------------------------------------------
The classes and their level-1 groups are a taxonomy's (``categories``: the packaged WBDC2022 list by default,
or any taxonomy file, see :mod:`mmcls.data.categories`). Labels are drawn with the file's ``labeled_count``
column: for the WBDC2022 list the real class frequencies of the 100k labeled set, so a scaled-down set keeps
the long tail (13 of the 200 classes hold half the videos; the rarest ones may not appear at all). A file
without counts gets a Zipf-like imbalance (class ``i`` of ``n`` in file order weighs ``1 / (i + 1) ** 0.7``);
``long_tail=A`` imposes that rule with exponent ``A`` on any taxonomy (1.0: a Zipf tail steeper than the real
one for the WBDC2022 list; 0: balanced classes).

Every level-2 class ``c`` gets a *text code* and a *visual code* (:class:`SyntheticTask`):

- text code: the classes of each level-1 group are split at random into sub-groups of 2-3 classes, one text
  code per sub-group (71 codes for WBDC2022; in a flat taxonomy every class is its own group and code). The text therefore gives the level-1 class and narrows the level-2 class
  to 2-3 candidates, but cannot tell them apart.
- visual code: one of 12 (6 colours x horizontal/vertical stripes). Inside every text sub-group the classes
  get distinct visual codes, so (text code, visual code) identifies the class, while each visual code alone is
  shared by ~17 classes from all over the hierarchy.

Text: title, ASR and OCR lines are random filler characters (single-character CJK tokens of the
bert-base-chinese vocabulary, so every character is one token). A level-1 keyword goes into the title (most of
the time), and two text-code keywords go into randomly chosen fields among title, ASR and each OCR line, so
every field can carry the decisive token and truncating any one of them loses signal. ASR is empty for ~30%
of the videos and OCR for ~25%.

Frames: each frame is a stripe pattern in the code's colour and orientation with random brightness, stripe
period and phase, a random-coloured rectangle and pixel noise, saved as JPEG. About 20% of the frames show a
random other code (scene cuts), so a model has to aggregate frames. ``zip_feats`` holds, frame for frame, a
fixed random prototype vector of the shown code plus Gaussian noise, so frames and features agree.

Label noise per modality: with probability ``text_noise`` a video's text code is replaced by a random one,
independently with ``visual_noise`` its visual code. Text alone thus reaches ~90% level-1 accuracy but only the
best of 2-3 candidates at level 2, frames alone only the best of ~17; fusion reaches ~(1-noise)^2 ~ 81% plus
lucky guesses.

Annotation noise (``label_noise``, single-label): with that probability a labeled-split video's
``category_id`` is replaced by a uniformly drawn other class, while its text and frames keep the true class's
codes (the model is trained on some wrong labels; ``test_labels.json`` stays clean). The draws come from a
random stream of their own, so the videos are exactly those of the same seed without noise (and with
``label_noise=0``, the single-label default, the dataset made before the option existed).

The class-to-code assignment, keywords and prototypes are fixed (they do not depend on ``seed``): datasets
made with different seeds are independent samples of the same task, e.g. a training set and a fresh test set.
Output is byte-for-byte deterministic for a given seed and arguments (zip members carry a fixed timestamp).
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmcls import names
from mmcls.data.categories import CategoryMap, official_categories
from mmcls.errors import MmclsError
from mmcls.files import DATA_MARKER, atomic_writer, claim_output_dir

SPLITS = ("labeled", "unlabeled", "test")
WORLD_SEED = 2022  # fixes the task (codes, keywords, prototypes); ``seed`` only drives sampling
TEXT_GROUP_SIZE = 3  # at most this many classes share a text code
# Visual code v = colour (v % 6) + 6 * orientation (0: horizontal stripes, 1: vertical stripes).
PALETTE = np.array(
    [[210, 50, 50], [50, 180, 60], [50, 80, 210], [220, 200, 40], [200, 60, 200], [40, 190, 200]],
    dtype=np.float32,
)
NUM_VISUAL_CODES = 2 * len(PALETTE)
SCENE_CUT_PROB = 0.2  # fraction of frames showing a random code
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamp: deterministic zips
_MAX_FEATURE_FRAMES = 32  # zip_feats arrays hold at most 32 rows in the real data
_MIN_FILLER = 500  # filler characters left after the keywords (the text must not be all keywords)
ZIPF_EXPONENT = 0.7  # class imbalance of a taxonomy without a labeled_count column


@dataclass(frozen=True)
class SyntheticTask:
    """The hidden rules linking classes to text keywords and visual codes (see the module docstring)."""

    text_code: np.ndarray  # [num_lv2] text code of every lv2 class
    visual_code: np.ndarray  # [num_lv2] visual code of every lv2 class
    lv1_of_text_code: np.ndarray  # [num_text_codes]
    lv1_keywords: tuple[str, ...]  # per lv1 class: its keyword characters
    code_keywords: tuple[str, ...]  # per text code: its keyword characters
    filler: str  # characters used for everything else (disjoint from all keywords)

    @property
    def num_text_codes(self) -> int:
        return len(self.code_keywords)

    @property
    def num_visual_codes(self) -> int:
        return NUM_VISUAL_CODES

    def class_of(self, text_code: int, visual_code: int) -> int | None:
        """The lv2 index with this pair of codes, or None (a noisy pair that no class has)."""
        hits = np.flatnonzero((self.text_code == text_code) & (self.visual_code == visual_code))
        return int(hits[0]) if len(hits) else None

    def prototypes(self, feature_dim: int) -> np.ndarray:
        """``[num_visual_codes, feature_dim]`` float32 feature prototypes (fixed per width)."""
        return _prototypes(feature_dim)


@lru_cache(maxsize=4)
def _prototypes(feature_dim: int) -> np.ndarray:
    rng = np.random.default_rng([WORLD_SEED, feature_dim])
    return rng.standard_normal((NUM_VISUAL_CODES, feature_dim)).astype(np.float32)


def synthetic_task(categories: CategoryMap | None = None) -> SyntheticTask:
    """The fixed synthetic task of a taxonomy (same for every seed; default: the packaged WBDC2022 list)."""
    return _synthetic_task(categories or official_categories())


@lru_cache(maxsize=4)
def _synthetic_task(categories: CategoryMap) -> SyntheticTask:
    rng = np.random.default_rng(WORLD_SEED)
    lv1_of_lv2 = np.array(categories.lv1_of_lv2)
    num_lv2, num_lv1 = len(lv1_of_lv2), categories.num_lv1
    text_code = np.empty(num_lv2, dtype=np.int64)
    visual_code = np.empty(num_lv2, dtype=np.int64)
    visual_use = np.zeros(NUM_VISUAL_CODES)
    lv1_of_code: list[int] = []
    for lv1 in range(num_lv1):
        members = rng.permutation(np.flatnonzero(lv1_of_lv2 == lv1))
        # Nearly equal parts of 2-3 classes: no class is identifiable from text alone.
        for group in np.array_split(members, -(-len(members) // TEXT_GROUP_SIZE)):
            text_code[group] = len(lv1_of_code)
            lv1_of_code.append(lv1)
            # Distinct visual codes inside the group (so the pair is unique), least used first (so each
            # visual code ends up shared by about the same number of classes), ties broken at random.
            order = np.lexsort((rng.random(NUM_VISUAL_CODES), visual_use))[: len(group)]
            visual_code[group] = order
            visual_use[order] += 1
    chars = rng.permutation(_single_char_cjk_tokens())
    kw_per_lv1, kw_per_code = 2, 2
    split_a = num_lv1 * kw_per_lv1
    split_b = split_a + len(lv1_of_code) * kw_per_code
    if split_b + _MIN_FILLER > len(chars):
        raise SyntheticDataError(
            f"{categories.source}: too many categories for the synthetic text ({num_lv2} classes in "
            f"{num_lv1} level-1 groups need {split_b} keyword characters, {len(chars) - _MIN_FILLER} available)"
        )
    return SyntheticTask(
        text_code=text_code,
        visual_code=visual_code,
        lv1_of_text_code=np.array(lv1_of_code),
        lv1_keywords=tuple("".join(chars[i : i + kw_per_lv1]) for i in range(0, split_a, kw_per_lv1)),
        code_keywords=tuple(
            "".join(chars[i : i + kw_per_code]) for i in range(split_a, split_b, kw_per_code)
        ),
        filler="".join(chars[split_b : split_b + 2000]),
    )


def _single_char_cjk_tokens() -> list[str]:
    # split("\n"), not splitlines(): some vocabulary tokens contain characters that splitlines() breaks on.
    vocab = resources.files("mmcls.assets").joinpath("bert_chinese_vocab.txt").read_text(encoding="utf-8")
    return [tok for tok in vocab.split("\n") if len(tok) == 1 and "\u4e00" <= tok <= "\u9fff"]


# ----------------------------------------------------------------------------------------------- generation
def make_synthetic_dataset(
    out: str | Path,
    num_labeled: int,
    num_unlabeled: int,
    num_test: int,
    seed: int = 0,
    num_frames: int = 8,
    image_size: int = 64,
    feature_dim: int = 768,
    videos: int = 0,
    *,
    text_noise: float = 0.1,
    visual_noise: float = 0.1,
    overwrite: bool = False,
    categories: CategoryMap | None = None,
    task: str = "multiclass",
    label_noise: float | None = None,
    long_tail: float | None = None,
) -> dict[str, Any]:
    """Write a synthetic dataset in the official layout under ``out`` and return a summary.

    ``categories``: the taxonomy whose classes label the videos (default: the packaged WBDC2022 list).

    Videos have between ``ceil(num_frames / 2)`` and ``1.5 * num_frames`` frames (at most 32). ``videos`` > 0
    also writes that many ``.mp4`` files per split (needs PyAV, ``pip install av``). ``out`` must be new, empty
    or an earlier synthetic dataset (it holds a ``.mmcls-data`` marker); any other non-empty folder is refused
    unless ``overwrite`` (a user's real data root must not be replaced by accident). Files of the same names are
    then replaced; nothing else under ``out`` is touched. ``text_noise``/``visual_noise``: the
    per-modality label noise (see the module docstring).

    ``label_noise``: single-label, the chance that a labeled-split video's ``category_id`` is a random other
    class (default 0; see the module docstring). ``long_tail``: the exponent of a Zipf-like class imbalance in
    the taxonomy's file order, instead of its ``labeled_count`` column (default: the column, or exponent 0.7
    for a taxonomy without one).

    ``task="multilabel"`` writes a tagging set instead (see :class:`_TagSampler`): records carry ``labels``
    (lists of class ids) and ``test_labels.json`` holds ``{"id", "labels"}``; ``label_noise`` (default 0.05)
    is the chance that a tag of a labeled-split video is dropped from its annotation, and again that a random
    wrong tag is added (the test labels stay clean).

    Returns ``{"root", "seed", "counts": {split: videos}, "frames": {split: frames written},
    "videos": {split: .mp4 files written}, "num_classes": lv2 classes present in labeled, "num_text_codes",
    "num_visual_codes", "categories" (the taxonomy's file), "label_noise", "long_tail", "noisy_labels" (single-label:
    labeled annotations that name a wrong class), "paths": {"annotations", "test_labels",
    "zip_frames", "zip_feats"[, "videos"]}, "seconds"}``.
    """
    counts = {"labeled": num_labeled, "unlabeled": num_unlabeled, "test": num_test}
    _check_args(counts, num_frames, image_size, feature_dim, videos, text_noise, visual_noise)
    if task not in ("multiclass", "multilabel"):
        raise SyntheticDataError(f"task must be multiclass or multilabel, got {task!r}")
    if label_noise is None:
        label_noise = 0.05 if task == "multilabel" else 0.0
    if not 0.0 <= label_noise <= 1.0:
        raise SyntheticDataError(f"label_noise must be in [0, 1], got {label_noise}")
    if long_tail is not None and not 0.0 <= long_tail <= 10.0:
        raise SyntheticDataError(f"long_tail must be in [0, 10], got {long_tail}")
    encoder = _video_encoder() if videos > 0 else None
    start = time.perf_counter()
    out = Path(out)
    claim_output_dir(out, DATA_MARKER, overwrite=overwrite, command="make-data")
    (out / names.ANNOTATIONS_DIR).mkdir(parents=True, exist_ok=True)
    (out / names.FEATURES_DIR).mkdir(parents=True, exist_ok=True)
    categories = categories or official_categories()
    world = synthetic_task(categories)
    args = (world, categories, num_frames, image_size, feature_dim, text_noise, visual_noise, label_noise)
    sampler = (_TagSampler if task == "multilabel" else _Sampler)(*args, long_tail=long_tail)
    label_key = "labels" if task == "multilabel" else "category_id"
    taken_ids: set[str] = set()
    summary: dict[str, Any] = {"root": str(out), "seed": seed, "counts": counts, "frames": {}, "videos": {}}
    for split_index, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_index])  # one stream per split: splits do not interact
        records, num_written_frames, num_videos = _write_split(
            out, split, counts[split], rng, sampler, taken_ids, encoder, videos
        )
        summary["frames"][split] = num_written_frames
        summary["videos"][split] = num_videos
        noisy = [r.pop("noisy_labels", None) for r in records]
        if split == "labeled":
            if task == "multilabel":
                for record, labels in zip(records, noisy):
                    record["labels"] = labels
                summary["num_classes"] = len({c for r in records for c in r["labels"]})
                summary["tags_per_video"] = round(
                    float(np.mean([len(r["labels"]) for r in records] or [0])), 3
                )
            else:
                noise_rng = np.random.default_rng([seed, split_index, 1])
                summary["noisy_labels"] = sampler.mislabel(records, noise_rng) if label_noise else 0
                summary["num_classes"] = len({r["category_id"] for r in records})
        if split == "test":
            labels = [{"id": r["id"], label_key: r.pop(label_key)} for r in records]
            _write_json(out / names.ANNOTATIONS_DIR / names.TEST_LABELS_FILE, labels)
        if split != "labeled":
            for record in records:
                record.pop(label_key, None)
        _write_json(out / names.ANNOTATIONS_DIR / f"{split}.json", records)
    summary["task"] = task
    summary["label_noise"] = label_noise
    summary["long_tail"] = long_tail
    summary["num_text_codes"] = world.num_text_codes
    summary["num_visual_codes"] = world.num_visual_codes
    summary["categories"] = categories.source
    summary["paths"] = {
        "annotations": str(out / names.ANNOTATIONS_DIR),
        "test_labels": str(out / names.ANNOTATIONS_DIR / names.TEST_LABELS_FILE),
        "zip_frames": str(out / names.FRAMES_DIR),
        "zip_feats": str(out / names.FEATURES_DIR),
        **({"videos": str(out / "videos")} if videos > 0 else {}),
    }
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def class_frequencies(categories: CategoryMap, long_tail: float | None = None) -> np.ndarray:
    """The label distribution: the taxonomy's ``labeled_count`` column, else a Zipf-like long tail (class ``i``
    in file order weighs ``1 / (i + 1) ** exponent``; ``long_tail`` sets the exponent and overrides the column)."""
    counts = np.asarray(categories.labeled_counts, dtype=np.float64)
    if long_tail is not None or counts.sum() <= 0:
        exponent = ZIPF_EXPONENT if long_tail is None else long_tail
        counts = 1.0 / np.arange(1, categories.num_lv2 + 1) ** exponent
    return counts / counts.sum()


class SyntheticDataError(MmclsError, ValueError):
    """An argument of the synthetic data generator is out of range; the message names it."""


def _check_args(
    counts: dict[str, int],
    num_frames: int,
    image_size: int,
    feature_dim: int,
    videos: int,
    text_noise: float,
    visual_noise: float,
) -> None:
    for name, value in counts.items():
        if value < 0:
            raise SyntheticDataError(f"num_{name} must be >= 0, got {value}")
    if not 1 <= num_frames <= _MAX_FEATURE_FRAMES:
        raise SyntheticDataError(f"num_frames must be in [1, {_MAX_FEATURE_FRAMES}], got {num_frames}")
    if image_size < 16:
        raise SyntheticDataError(f"image_size must be >= 16, got {image_size}")
    if feature_dim < 1:
        raise SyntheticDataError(f"feature_dim must be >= 1, got {feature_dim}")
    if videos < 0:
        raise SyntheticDataError(f"videos must be >= 0, got {videos}")
    if videos > 0 and image_size % 2:
        raise SyntheticDataError(f"videos need an even image_size (yuv420p), got {image_size}")
    for name, noise in (("text_noise", text_noise), ("visual_noise", visual_noise)):
        if not 0.0 <= noise <= 1.0:
            raise SyntheticDataError(f"{name} must be in [0, 1], got {noise}")


@dataclass
class _Video:
    record: dict[str, Any]
    frames: np.ndarray  # [n, H, W, 3] uint8
    feats: np.ndarray  # [n, D] float16


class _Sampler:
    """Draws one video (record, frames, features) at a time from a caller-owned random generator."""

    def __init__(
        self,
        task: SyntheticTask,
        categories: CategoryMap,
        num_frames: int,
        image_size: int,
        feature_dim: int,
        text_noise: float,
        visual_noise: float,
        label_noise: float,
        *,
        long_tail: float | None = None,
    ) -> None:
        self.task = task
        self.category_ids = categories.category_ids
        self.class_probs = class_frequencies(categories, long_tail)
        self.label_noise = label_noise
        self.min_frames = -(-num_frames // 2)
        self.max_frames = min(_MAX_FEATURE_FRAMES, num_frames + num_frames // 2)
        self.image_size = image_size
        self.prototypes = task.prototypes(feature_dim)
        self.text_noise, self.visual_noise = text_noise, visual_noise
        self.filler = np.array(list(task.filler))
        self._coords = np.arange(image_size, dtype=np.float32)

    def video(self, rng: np.random.Generator, video_id: str) -> _Video:
        lv2 = int(rng.choice(len(self.class_probs), p=self.class_probs))
        text_code = int(self.task.text_code[lv2])
        if rng.random() < self.text_noise:
            text_code = int(rng.integers(self.task.num_text_codes))
        visual_code = int(self.task.visual_code[lv2])
        if rng.random() < self.visual_noise:
            visual_code = int(rng.integers(NUM_VISUAL_CODES))
        num = int(rng.integers(self.min_frames, self.max_frames + 1))
        shown = np.where(
            rng.random(num) < SCENE_CUT_PROB, rng.integers(NUM_VISUAL_CODES, size=num), visual_code
        )
        title, asr, ocr = self._text(rng, text_code)
        record = {
            "id": video_id,
            "category_id": self.category_ids[lv2],
            "title": title,
            "asr": asr,
            "ocr": ocr,
        }
        return _Video(record, self._frames(rng, shown), self._feats(rng, shown))

    def mislabel(self, records: list[dict[str, Any]], rng: np.random.Generator) -> int:
        """Give each record, with probability ``label_noise``, a uniformly drawn other class; the number changed.

        ``rng`` is a stream of its own, so the videos are those of the noise-free set, only some annotations
        differ."""
        changed = 0
        for record, flip in zip(records, rng.random(len(records)) < self.label_noise):
            if flip:
                true = self.category_ids.index(record["category_id"])
                wrong = int(rng.integers(len(self.category_ids) - 1))
                record["category_id"] = self.category_ids[
                    wrong + (wrong >= true)
                ]  # any class but the true one
                changed += 1
        return changed

    # -- text
    def _chars(self, rng: np.random.Generator, low: int, high: int) -> list[str]:
        return list(self.filler[rng.integers(len(self.filler), size=int(rng.integers(low, high + 1)))])

    def _text(self, rng: np.random.Generator, text_code: int) -> tuple[str, str, list[dict[str, Any]]]:
        title = self._chars(rng, 6, 18)
        asr = self._chars(rng, 15, 60) if rng.random() >= 0.3 else []
        ocr_lines = [self._chars(rng, 4, 14) for _ in range(int(rng.choice(4, p=[0.25, 0.3, 0.25, 0.2])))]
        fields = [title] + ([asr] if asr else []) + ocr_lines
        lv1_kw = self.task.lv1_keywords[int(self.task.lv1_of_text_code[text_code])]
        target = title if rng.random() < 0.8 else fields[int(rng.integers(len(fields)))]
        _insert(rng, target, lv1_kw[int(rng.integers(len(lv1_kw)))])
        code_kw = self.task.code_keywords[text_code]
        for _ in range(2):
            _insert(rng, fields[int(rng.integers(len(fields)))], code_kw[int(rng.integers(len(code_kw)))])
        if rng.random() < 0.3:
            title += ["#", *self._chars(rng, 2, 4)]
        times = np.sort(rng.integers(0, 60, size=len(ocr_lines)))
        ocr = [{"time": int(t), "text": "".join(line)} for t, line in zip(times, ocr_lines)]
        return "".join(title), "".join(asr), ocr

    # -- frames
    def _frames(self, rng: np.random.Generator, shown: np.ndarray) -> np.ndarray:
        num, size = len(shown), self.image_size
        f32 = np.float32  # float32 throughout: this function dominates the generation time
        colour = PALETTE[shown % len(PALETTE)] * rng.uniform(0.75, 1.1, size=(num, 1)).astype(f32)  # [n, 3]
        period = rng.uniform(6, 14, size=(num, 1)).astype(f32)
        phase = rng.uniform(0, 14, size=(num, 1)).astype(f32)
        band = ((self._coords[None, :] + phase) // (period / 2)) % 2  # [n, size], 0/1
        dark = 1.0 - f32(0.45) * band
        horizontal = (shown < len(PALETTE))[:, None, None]
        factor = np.where(horizontal, dark[:, :, None], dark[:, None, :])  # [n, rows, cols]
        # Channels-first while computing (broadcasting over a trailing axis of 3 is several times slower).
        images = colour[:, :, None, None] * factor[:, None]  # [n, 3, rows, cols]
        for k in range(num):  # one random-coloured rectangle per frame
            h, w = rng.integers(size // 8, size // 3 + 1, size=2)
            y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            images[k, :, y : y + h, x : x + w] = rng.uniform(0, 255, size=(3, 1, 1))
        # Pixel noise, uniform in [-16, 15]; drawn as raw bytes because that is ~4x faster than integers().
        images += (np.frombuffer(rng.bytes(images.size), dtype=np.uint8) >> 3).reshape(images.shape)
        images -= 16
        images = np.clip(images, 0, 255, out=images).astype(np.uint8)
        return np.ascontiguousarray(images.transpose(0, 2, 3, 1))

    def _feats(self, rng: np.random.Generator, shown: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal((len(shown), self.prototypes.shape[1]), dtype=np.float32)
        return (self.prototypes[shown] + noise).astype(np.float16)


class _TagSampler(_Sampler):
    """Multilabel videos: 0-4 tags each, drawn from the long-tailed class frequencies, with co-occurrence.

    Every class has a fixed *partner* class; a drawn tag brings its partner along half of the time, so label
    co-occurrence is structured (what PMI label embeddings can learn). Each class is one of two kinds
    (fixed, about 40/60): a *text* tag is announced by a keyword character of its own, put twice into random
    text fields, and shows nothing in the frames; a *combination* tag puts its text-code keyword into the text
    (shared by the 2-3 classes of its text sub-group) and shows its visual code in some frames (shared by ~17
    classes): only both together name it. Frames show the visual codes of the video's combination tags (and
    scene cuts); the text noise and visual noise of the single-label set apply per tag.
    """

    PARTNER_PROB = 0.5
    NUM_TAGS_PROBS = (0.05, 0.35, 0.3, 0.2, 0.1)  # P(0 tags), P(1 tag), ... P(4 tags) before partners

    def __init__(self, *args: Any, long_tail: float | None = None) -> None:
        super().__init__(*args, long_tail=long_tail)
        num_classes = len(self.class_probs)
        rng = np.random.default_rng([WORLD_SEED, 17])  # fixed, like the rest of the task
        self.partner = rng.permutation(num_classes)
        self.text_kind = rng.random(num_classes) < 0.4
        if num_classes + _MIN_FILLER > len(self.filler):
            raise SyntheticDataError(f"too many classes ({num_classes}) for the synthetic tagging text")
        self.class_keywords = self.filler[-num_classes:]  # taken out of the filler: disjoint from it
        self.filler = self.filler[:-num_classes]

    def video(self, rng: np.random.Generator, video_id: str) -> _Video:
        num_classes = len(self.class_probs)
        wanted = int(rng.choice(len(self.NUM_TAGS_PROBS), p=self.NUM_TAGS_PROBS))
        tags: list[int] = []
        while len(tags) < wanted:
            c = int(rng.choice(num_classes, p=self.class_probs))
            for t in (c, int(self.partner[c])) if rng.random() < self.PARTNER_PROB else (c,):
                if t not in tags:
                    tags.append(t)
        keywords, visual = [], []
        for t in tags:
            if self.text_kind[t]:
                keywords += [self.class_keywords[t]] * 2
                continue
            code = int(self.task.text_code[t])
            if rng.random() < self.text_noise:
                code = int(rng.integers(self.task.num_text_codes))
            keywords += list(self.task.code_keywords[code])
            vis = int(self.task.visual_code[t])
            visual.append(int(rng.integers(NUM_VISUAL_CODES)) if rng.random() < self.visual_noise else vis)
        num = int(rng.integers(self.min_frames, self.max_frames + 1))
        shown = rng.integers(NUM_VISUAL_CODES, size=num)  # scene cuts, or everything without a visual tag
        if visual:
            own = rng.random(num) >= SCENE_CUT_PROB
            shown[own] = np.asarray(visual)[rng.integers(len(visual), size=int(own.sum()))]
        title, asr, ocr = self._tag_text(rng, keywords)
        clean = [self.category_ids[t] for t in sorted(tags)]
        record = {"id": video_id, "labels": clean, "title": title, "asr": asr, "ocr": ocr}
        record["noisy_labels"] = self._noisy(rng, sorted(tags))
        return _Video(record, self._frames(rng, shown), self._feats(rng, shown))

    def _noisy(self, rng: np.random.Generator, tags: list[int]) -> list[str]:
        kept = [t for t in tags if rng.random() >= self.label_noise]
        if rng.random() < self.label_noise:
            extra = int(rng.integers(len(self.class_probs)))
            kept = sorted(set(kept) | {extra})
        return [self.category_ids[t] for t in kept]

    def _tag_text(
        self, rng: np.random.Generator, keywords: list[str]
    ) -> tuple[str, str, list[dict[str, Any]]]:
        title = self._chars(rng, 6, 18)
        asr = self._chars(rng, 15, 60) if rng.random() >= 0.3 else []
        ocr_lines = [self._chars(rng, 4, 14) for _ in range(int(rng.choice(4, p=[0.25, 0.3, 0.25, 0.2])))]
        fields = [title] + ([asr] if asr else []) + ocr_lines
        for keyword in keywords:
            _insert(rng, fields[int(rng.integers(len(fields)))], keyword)
        times = np.sort(rng.integers(0, 60, size=len(ocr_lines)))
        ocr = [{"time": int(t), "text": "".join(line)} for t, line in zip(times, ocr_lines)]
        return "".join(title), "".join(asr), ocr


def _insert(rng: np.random.Generator, chars: list[str], char: str) -> None:
    chars.insert(int(rng.integers(len(chars) + 1)), char)


def _new_id(rng: np.random.Generator, taken: set[str]) -> str:
    """A fresh 20-digit id (first digit non-zero), unique across all splits."""
    while True:
        video_id = f"{int(rng.integers(10**9, 10**10))}{int(rng.integers(10**10)):010d}"
        if video_id not in taken:
            taken.add(video_id)
            return video_id


def _write_split(
    out: Path,
    split: str,
    count: int,
    rng: np.random.Generator,
    sampler: _Sampler,
    taken_ids: set[str],
    encoder: Any,
    num_videos: int,
) -> tuple[list[dict[str, Any]], int, int]:
    records: list[dict[str, Any]] = []
    frames_written = videos_written = 0
    frames_dir = out / names.FRAMES_DIR / split
    with zipfile.ZipFile(out / "zip_feats" / f"{split}.zip", "w", zipfile.ZIP_STORED) as feats_zip:
        for index in range(count):
            video_id = _new_id(rng, taken_ids)
            video = sampler.video(rng, video_id)
            records.append(video.record)
            _write_frame_zip(frames_dir / video_id[-3:] / f"{video_id}.zip", video.frames)
            buffer = io.BytesIO()
            np.save(buffer, video.feats)
            feats_zip.writestr(_zip_info(f"{video_id}.npy"), buffer.getvalue())
            frames_written += len(video.frames)
            if index < num_videos:
                encoder(out / "videos" / split / f"{video_id}.mp4", video.frames)
                videos_written += 1
    return records, frames_written, videos_written


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.external_attr = 0o644 << 16  # rw-r--r-- when extracted
    return info


def _write_frame_zip(path: Path, frames: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # JPEG is already compressed: store, as the real zips do.
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for k, frame in enumerate(frames):
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
            archive.writestr(_zip_info(f"{k:04d}.jpg"), buffer.getvalue())


def _write_json(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with atomic_writer(path, "w", encoding="utf-8") as handle:
        json.dump(list(records), handle, ensure_ascii=False)


# --------------------------------------------------------------------------------------------------- videos
def _video_encoder() -> Any:
    """A function writing ``[n, H, W, 3]`` uint8 frames to an .mp4 file, or an error if PyAV is missing."""
    try:
        import av  # optional: only needed to write video files
    except ImportError as exc:
        raise RuntimeError(
            "videos > 0 needs a video encoder: install PyAV (pip install av); "
            "zip_frames and zip_feats need nothing extra"
        ) from exc

    def encode(path: Path, frames: np.ndarray, fps: int = 4) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())  # flush the encoder

    return encode
