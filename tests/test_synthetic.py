import importlib.util
import io
import json
import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmcls.data.categories import official_categories
from mmcls.data.synthetic import PALETTE, make_synthetic_dataset, synthetic_task
from mmcls.metrics import compute_scores

SMALL = {"num_frames": 4, "image_size": 32, "feature_dim": 16}


def _records(root: Path, split: str) -> list[dict]:
    return json.loads((root / "annotations" / f"{split}.json").read_text(encoding="utf-8"))


def _frame_zip(root: Path, split: str, video_id: str) -> Path:
    return root / "zip_frames" / split / video_id[-3:] / f"{video_id}.zip"


def _feats(root: Path, split: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(root / "zip_feats" / f"{split}.zip") as archive:
        return {name: np.load(io.BytesIO(archive.read(name))) for name in archive.namelist()}


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    summary = make_synthetic_dataset(root, 40, 15, 25, seed=3, **SMALL)
    return root, summary


def test_layout_is_exactly_the_official_one(small):
    root, summary = small
    splits = {split: _records(root, split) for split in ("labeled", "unlabeled", "test")}
    expected = {f"annotations/{s}.json" for s in ("labeled", "unlabeled", "test", "test_labels")}
    expected.add(".mmcls-data")  # the marker that lets make-data recognise (and only replace) its own output
    for split, records in splits.items():
        expected.add(f"zip_feats/{split}.zip")
        expected |= {f"zip_frames/{split}/{r['id'][-3:]}/{r['id']}.zip" for r in records}
    assert set(_all_files(root)) == expected
    assert {s: len(r) for s, r in splits.items()} == {"labeled": 40, "unlabeled": 15, "test": 25}
    assert summary["counts"] == {"labeled": 40, "unlabeled": 15, "test": 25}
    assert summary["num_classes"] == len({r["category_id"] for r in splits["labeled"]})
    assert Path(summary["paths"]["zip_feats"]) == root / "zip_feats"


def test_records_have_the_official_fields(small):
    root, _ = small
    known = set(official_categories().category_ids)
    all_ids = []
    for split in ("labeled", "unlabeled", "test"):
        for record in _records(root, split):
            keys = {"id", "title", "asr", "ocr"} | ({"category_id"} if split == "labeled" else set())
            assert set(record) == keys
            assert re.fullmatch(r"[1-9]\d{19}", record["id"])
            assert isinstance(record["title"], str) and record["title"]
            assert isinstance(record["asr"], str)
            assert isinstance(record["ocr"], list)
            for line in record["ocr"]:
                assert set(line) == {"time", "text"}
                assert type(line["time"]) is int and isinstance(line["text"], str)
            times = [line["time"] for line in record["ocr"]]
            assert times == sorted(times)
            if split == "labeled":
                assert record["category_id"] in known
            all_ids.append(record["id"])
    assert len(all_ids) == len(set(all_ids))  # unique across splits
    # Empty ASR and empty OCR both occur (the real data has both).
    labeled = _records(root, "labeled")
    assert any(not r["asr"] for r in labeled) and any(not r["ocr"] for r in labeled)


def test_test_labels_match_test_ids(small):
    root, _ = small
    labels = json.loads((root / "annotations" / "test_labels.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in labels] == [r["id"] for r in _records(root, "test")]
    assert all(set(r) == {"id", "category_id"} for r in labels)
    assert {r["category_id"] for r in labels} <= set(official_categories().category_ids)


def test_frames_and_feats_are_consistent(small):
    root, _ = small
    for split in ("labeled", "unlabeled", "test"):
        records = _records(root, split)
        feats = _feats(root, split)
        assert sorted(feats) == sorted(f"{r['id']}.npy" for r in records)
        counts = set()
        for record in records:
            with zipfile.ZipFile(_frame_zip(root, split, record["id"])) as archive:
                names = sorted(archive.namelist())
                assert all(re.fullmatch(r"\d{4}\.jpg", n) for n in names)
                image = Image.open(io.BytesIO(archive.read(names[0])))
                assert image.format == "JPEG" and image.mode == "RGB" and image.size == (32, 32)
            array = feats[f"{record['id']}.npy"]
            assert array.dtype == np.float16 and array.shape == (len(names), 16)
            counts.add(len(names))
        assert counts <= set(range(2, 7)) and len(counts) > 1  # 4 frames asked: 2..6, varying


def test_deterministic_by_seed(tmp_path, small):
    root, _ = small
    again = make_synthetic_dataset(tmp_path / "again", 40, 15, 25, seed=3, **SMALL)
    assert _all_files(Path(again["root"])) == _all_files(root)
    other = make_synthetic_dataset(tmp_path / "other", 40, 15, 25, seed=4, **SMALL)
    assert _records(Path(other["root"]), "labeled") != _records(root, "labeled")


def test_empty_splits(tmp_path):
    make_synthetic_dataset(tmp_path, 5, 0, 0, **SMALL)
    assert _records(tmp_path, "unlabeled") == [] and _records(tmp_path, "test") == []
    assert _feats(tmp_path, "test") == {}


def test_labels_follow_the_real_imbalance(tmp_path):
    cats = official_categories()
    make_synthetic_dataset(tmp_path, 1000, 0, 0, seed=1, num_frames=1, image_size=16, feature_dim=2)
    counts = Counter(r["category_id"] for r in _records(tmp_path, "labeled"))
    real_order = [cats.category_ids[i] for i in np.argsort(cats.labeled_counts)[::-1]]
    assert counts.most_common(1)[0][0] in real_order[:2]
    # 13 classes hold half of the real data.
    share = sum(counts[c] for c in real_order[:13]) / 1000
    assert 0.4 < share < 0.6
    assert len(counts) < 185  # the rarest classes are mostly absent from a small sample


def test_code_assignment_splits_the_signal():
    task = synthetic_task()
    cats = official_categories()
    lv1 = np.asarray(cats.lv1_of_lv2)
    pairs = set(zip(task.text_code.tolist(), task.visual_code.tolist()))
    assert len(pairs) == cats.num_lv2  # both codes together identify the class
    for code in range(task.num_text_codes):
        members = np.flatnonzero(task.text_code == code)
        assert 2 <= len(members) <= 3  # text alone cannot tell these apart...
        assert set(lv1[members]) == {task.lv1_of_text_code[code]}  # ...but gives the lv1 class
    for code in range(task.num_visual_codes):
        members = np.flatnonzero(task.visual_code == code)
        assert len(members) >= 12 and len(set(lv1[members])) >= 8  # frames alone: many classes
    # Keywords are single vocabulary tokens, distinct from each other and from the filler.
    vocab = set(
        (Path(__file__).parents[1] / "mmcls/assets/bert_chinese_vocab.txt").read_text("utf-8").split("\n")
    )
    keywords = "".join(task.lv1_keywords + task.code_keywords)
    assert len(set(keywords)) == len(keywords)
    assert not set(keywords) & set(task.filler)
    assert set(keywords) | set(task.filler) <= vocab


def _decode_text_code(task, record) -> int:
    owner = {ch: code for code, kws in enumerate(task.code_keywords) for ch in kws}
    text = record["title"] + record["asr"] + "".join(line["text"] for line in record["ocr"])
    return Counter(owner[ch] for ch in text if ch in owner).most_common(1)[0][0]


def _decode_visual_code_from_frames(archive: zipfile.ZipFile) -> int:
    votes = []
    chroma = PALETTE / PALETTE.sum(axis=1, keepdims=True)
    for name in sorted(archive.namelist()):
        image = np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB"), dtype=np.float32)
        mean = image.reshape(-1, 3).mean(axis=0)
        colour = int(np.argmin(((chroma - mean / mean.sum()) ** 2).sum(axis=1)))
        grey = image.mean(axis=2)
        vertical = grey.mean(axis=0).std() > grey.mean(axis=1).std()  # columns vary more than rows
        votes.append(colour + len(PALETTE) * int(vertical))
    return Counter(votes).most_common(1)[0][0]


def test_noise_free_codes_are_recoverable_from_the_files(tmp_path):
    task = synthetic_task()
    cats = official_categories()
    make_synthetic_dataset(
        tmp_path, 60, 0, 0, num_frames=8, image_size=32, feature_dim=64, text_noise=0, visual_noise=0
    )
    prototypes = task.prototypes(64)
    feats = _feats(tmp_path, "labeled")
    frames_ok = feats_ok = 0
    for record in _records(tmp_path, "labeled"):
        lv2 = cats.lv2_index(record["category_id"])
        assert _decode_text_code(task, record) == task.text_code[lv2]
        with zipfile.ZipFile(_frame_zip(tmp_path, "labeled", record["id"])) as archive:
            frames_ok += _decode_visual_code_from_frames(archive) == task.visual_code[lv2]
        shown = np.argmax(feats[f"{record['id']}.npy"].astype(np.float32) @ prototypes.T, axis=1)
        feats_ok += Counter(shown.tolist()).most_common(1)[0][0] == task.visual_code[lv2]
    # Scene cuts (20% of the frames show another code) can outvote the true code in a short video.
    assert frames_ok >= 54 and feats_ok >= 54


def test_fusion_beats_each_modality(tmp_path):
    """Best possible predictions from decoded codes: text alone, frames alone, both (with label noise)."""
    task = synthetic_task()
    cats = official_categories()
    prior = np.asarray(cats.labeled_counts, dtype=np.float64)
    make_synthetic_dataset(tmp_path, 400, 0, 0, seed=5, num_frames=4, image_size=16, feature_dim=64)
    records = _records(tmp_path, "labeled")
    feats = _feats(tmp_path, "labeled")
    prototypes = task.prototypes(64)

    def most_frequent(mask: np.ndarray) -> str:
        return cats.category_id(int(np.argmax(np.where(mask, prior, -1))))

    text_pred, visual_pred, fused_pred = [], [], []
    for record in records:
        text_code = _decode_text_code(task, record)
        shown = np.argmax(feats[f"{record['id']}.npy"].astype(np.float32) @ prototypes.T, axis=1)
        visual_code = Counter(shown.tolist()).most_common(1)[0][0]
        text_pred.append(most_frequent(task.text_code == text_code))
        visual_pred.append(most_frequent(task.visual_code == visual_code))
        both = task.class_of(text_code, visual_code)
        fused_pred.append(text_pred[-1] if both is None else cats.category_id(both))
    truth = [r["category_id"] for r in records]
    text, visual, fused = (compute_scores(truth, p) for p in (text_pred, visual_pred, fused_pred))
    assert fused["mean_f1"] > text["mean_f1"] + 0.1
    assert fused["mean_f1"] > visual["mean_f1"] + 0.3
    assert text["lv1_micro_f1"] > 0.8  # lv1 comes from the text
    # Label noise keeps fusion from being perfect.
    assert 0.7 < fused["lv2_micro_f1"] < 0.97


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_labeled"):
        make_synthetic_dataset(tmp_path, -1, 0, 0)
    with pytest.raises(ValueError, match="num_frames"):
        make_synthetic_dataset(tmp_path, 1, 0, 0, num_frames=33)
    with pytest.raises(ValueError, match="text_noise"):
        make_synthetic_dataset(tmp_path, 1, 0, 0, text_noise=1.5)


@pytest.mark.skipif(importlib.util.find_spec("av") is not None, reason="PyAV is installed")
def test_videos_without_encoder_fail_clearly(tmp_path):
    with pytest.raises(RuntimeError, match="PyAV"):
        make_synthetic_dataset(tmp_path, 2, 0, 0, videos=1, **SMALL)
    assert not (tmp_path / "annotations").exists()  # refused before writing anything


@pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="needs PyAV to encode video")
def test_videos_are_readable_with_decord(tmp_path):
    decord = pytest.importorskip("decord")
    summary = make_synthetic_dataset(tmp_path, 3, 0, 2, videos=2, num_frames=4, image_size=32, feature_dim=8)
    assert summary["videos"] == {"labeled": 2, "unlabeled": 0, "test": 2}
    for record in _records(tmp_path, "labeled")[:2]:
        reader = decord.VideoReader(str(tmp_path / "videos" / "labeled" / f"{record['id']}.mp4"))
        with zipfile.ZipFile(_frame_zip(tmp_path, "labeled", record["id"])) as archive:
            assert len(reader) == len(archive.namelist())
        assert reader[0].asnumpy().shape == (32, 32, 3)


def test_label_noise_and_long_tail_of_a_single_label_set(tmp_path, small):
    """``label_noise`` changes only labeled.json's category_id (to another class, about that often), never the
    text/frames or the test labels; ``long_tail`` imposes a Zipf tail; both off is the dataset made before."""
    clean_root, _ = small
    noisy = make_synthetic_dataset(tmp_path / "noisy", 40, 15, 25, seed=3, label_noise=0.5, **SMALL)
    root = Path(noisy["root"])
    clean, changed = _records(clean_root, "labeled"), _records(root, "labeled")
    differ = [a["category_id"] != b["category_id"] for a, b in zip(clean, changed)]
    assert noisy["noisy_labels"] == sum(differ) and 10 <= sum(differ) <= 30  # 40 draws at 0.5
    strip = [{k: v for k, v in r.items() if k != "category_id"} for r in clean]
    assert strip == [{k: v for k, v in r.items() if k != "category_id"} for r in changed]
    for split in ("unlabeled", "test"):
        assert _records(root, split) == _records(clean_root, split)
    assert (root / "annotations/test_labels.json").read_bytes() == (
        clean_root / "annotations/test_labels.json"
    ).read_bytes()
    off = make_synthetic_dataset(tmp_path / "off", 40, 15, 25, seed=3, label_noise=0.0, **SMALL)
    assert _all_files(Path(off["root"])) == _all_files(clean_root) and off["noisy_labels"] == 0

    make_synthetic_dataset(tmp_path / "tail", 2000, 0, 0, seed=1, num_frames=1, image_size=16, feature_dim=2,
                           long_tail=1.0)  # fmt: skip
    counts = Counter(r["category_id"] for r in _records(tmp_path / "tail", "labeled"))
    ids = official_categories().category_ids
    zipf = 1 / np.arange(1, 201)
    assert counts[ids[0]] / 2000 == pytest.approx(zipf[0] / zipf.sum(), abs=0.03)  # ~17% in the first class
    assert counts[ids[0]] > 5 * counts[ids[9]]  # against the real list's 1,544 vs 3,296 videos


def test_make_data_cli_noise_options(tmp_path, capsys):
    from commands import run_main

    args = [
        "make-data",
        str(tmp_path / "d"),
        "--num-labeled",
        "30",
        "--num-unlabeled",
        "0",
        "--num-test",
        "5",
    ]
    args += ["--num-frames", "1", "--image-size", "16"]
    out, _ = run_main(*args, "--label-noise", "1", "--modality-noise", "0", "--long-tail", "0")
    summary = json.loads(out)
    assert summary["noisy_labels"] == 30 and summary["long_tail"] == 0.0
    from mmcls.cli import main

    with pytest.raises(SystemExit) as refused:
        main([*args, "--long-tail", "-1"])
    assert refused.value.code == 2 and "--long-tail: must be at least 0" in capsys.readouterr().err
