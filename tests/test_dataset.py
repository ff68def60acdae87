from __future__ import annotations

import io
import os
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmcls.config import FrameConfig, TextConfig
from mmcls.data.annotations import Record, annotation_path, load_records, write_records
from mmcls.data.categories import official_categories
from mmcls.data.dataset import VideoTextDataset, collate_batch
from mmcls.data.frames import FrameError, build_frame_source
from mmcls.data.text import TextEncoder

CATEGORIES = official_categories()
SIZE = 16
IDS = [f"{10**19 + i}" for i in range(6)]  # IDS[4]: no zip at all; IDS[5]: one corrupt frame


@pytest.fixture
def data_root(tmp_path, jpeg_bytes, write_zip):
    """A small labeled split in the official layout, with JPEG frame zips and a feature zip."""
    records = []
    for i, video_id in enumerate(IDS):
        category = CATEGORIES.category_id(i * 7) if i != 3 else None  # record 3 is unlabeled
        records.append(Record(video_id, "标题" * (i + 1), "语音", [(0.0, "字幕")], category))
        if i == 4:
            continue
        members = {f"{k:02d}.jpg": jpeg_bytes(10 * k + i) for k in range(3 + 3 * i)}
        if i == 5:
            members["99.jpg"] = b"broken"
        write_zip(tmp_path / "zip_frames" / "labeled" / video_id[-3:] / f"{video_id}.zip", members)
    write_records(annotation_path(tmp_path, "labeled"), records)
    feats = {}
    for i, video_id in enumerate(IDS[:4]):
        buffer = io.BytesIO()
        np.save(buffer, np.random.default_rng(i).standard_normal((10, 8)).astype(np.float16))
        feats[f"{video_id}.npy"] = buffer.getvalue()
    write_zip(tmp_path / "zip_feats" / "labeled.zip", feats)
    return tmp_path


def make_dataset(root, tokenizer, *, source="zip_frames", train=False, **kw) -> VideoTextDataset:
    records = load_records(annotation_path(root, "labeled"))
    cfg = FrameConfig(source=source, max_frames=4, image_size=SIZE, feature_dim=8)
    encoder = TextEncoder(tokenizer, TextConfig())
    return VideoTextDataset(
        records, encoder, build_frame_source(cfg, root, "labeled"), CATEGORIES, train=train, **kw
    )


def test_sample_contents(data_root, bert_tokenizer):
    dataset = make_dataset(data_root, bert_tokenizer)
    assert len(dataset) == 6
    sample = dataset[1]
    assert sample["index"] == 1 and sample["id"] == IDS[1]
    assert sample["input_ids"].dtype == torch.long and sample["input_ids"][0] == 101
    assert sample["frames"].shape == (4, 3, SIZE, SIZE)
    assert sample["frame_mask"].tolist() == [True] * 4  # 6 frames, 4 sampled
    assert sample["label"] == 7 and dataset[3]["label"] == -1
    assert sample["frame_errors"] == []
    assert dataset[5]["frame_errors"] == []  # the broken frame is not among the 4 sampled at evaluation


def test_training_sampling_depends_only_on_seed_epoch_index(data_root, bert_tokenizer):
    dataset = make_dataset(data_root, bert_tokenizer, train=True, seed=1)
    epoch0 = dataset[2]["frames"]
    assert torch.equal(dataset[2]["frames"], epoch0)
    dataset.set_epoch(1)
    epoch1 = dataset[2]["frames"]
    assert not torch.equal(epoch1, epoch0)  # 9 frames, 4 drawn: a new subset each epoch
    resumed = make_dataset(data_root, bert_tokenizer, train=True, seed=1)
    resumed.set_epoch(1)
    assert torch.equal(resumed[2]["frames"], epoch1)
    evaluation = make_dataset(data_root, bert_tokenizer)
    assert torch.equal(evaluation[2]["frames"], evaluation[2]["frames"])


def test_on_error_policies(data_root, bert_tokenizer):
    sample = make_dataset(data_root, bert_tokenizer, on_error="text_only")[4]
    assert sample["frame_errors"] == ["missing_file"]
    assert not sample["frame_mask"].any() and torch.all(sample["frames"] == 0)
    assert sample["frames"].shape == (4, 3, SIZE, SIZE) and len(sample["input_ids"]) > 4
    assert make_dataset(data_root, bert_tokenizer, on_error="drop")[4] is None
    with pytest.raises(FrameError, match="missing_file"):
        make_dataset(data_root, bert_tokenizer, on_error="raise")[4]
    with pytest.raises(ValueError, match="on_error"):
        make_dataset(data_root, bert_tokenizer, on_error="ignore")


def test_text_only_dataset(data_root, bert_tokenizer):
    dataset = make_dataset(data_root, bert_tokenizer, source="none")
    batch = collate_batch([dataset[0], dataset[1]])
    assert batch["frames"].shape == (2, 0) and batch["frame_mask"].shape == (2, 0)


def test_collate_pads_counts_and_drops(data_root, bert_tokenizer):
    dataset = make_dataset(data_root, bert_tokenizer)
    corrupt = make_dataset(data_root, bert_tokenizer, train=True)
    corrupt.set_epoch(next(e for e in range(50) if _draws_broken_frame(corrupt, e)))
    samples = [dataset[0], None, dataset[4], corrupt[5]]
    batch = collate_batch(samples, pad_token_id=0)
    assert batch["ids"] == [IDS[0], IDS[4], IDS[5]] and batch["index"].tolist() == [0, 4, 5]
    assert batch["dropped"] == 1
    assert batch["frame_errors"] == Counter({"missing_file": 1, "bad_image": 1})
    lengths = [len(s["input_ids"]) for s in samples if s is not None]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert torch.all(batch["input_ids"][batch["attention_mask"] == 0] == 0)
    assert batch["frames"].shape == (3, 4, 3, SIZE, SIZE) and batch["frame_mask"].shape == (3, 4)
    assert batch["labels"].tolist() == [0, 28, 35]


def _draws_broken_frame(dataset: VideoTextDataset, epoch: int) -> bool:
    dataset.set_epoch(epoch)
    return bool(dataset[5]["frame_errors"])


def test_collate_of_only_dropped_samples():
    batch = collate_batch([None, None])
    assert batch["dropped"] == 2 and batch["input_ids"].shape == (0, 0) and batch["ids"] == []


def test_dataset_pickles_after_reading(data_root, bert_tokenizer):
    dataset = make_dataset(data_root, bert_tokenizer, source="zip_feats")
    first = dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[0]["frames"], first["frames"])


@pytest.mark.parametrize("source", ["zip_frames", "zip_feats"])
def test_dataloader_with_two_workers_matches_in_process(data_root, bert_tokenizer, source):
    """Workers open their own zips: same batches as reading in this process, in any worker."""
    dataset = make_dataset(data_root, bert_tokenizer, source=source, train=True, seed=3)
    dataset.set_epoch(2)
    dataset[0]  # the parent opens the split feature zip first: workers must not reuse that handle
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=_collate_with_pids)
    batches, pids = [], set()
    for batch, worker_pid, opened_in in loader:
        batches.append(batch)
        pids.add(worker_pid)
        assert worker_pid != os.getpid()
        if source == "zip_feats":
            assert opened_in == worker_pid  # the worker's own handle, not the parent's
    assert [i for b in batches for i in b["index"].tolist()] == list(range(6))
    for batch in batches:
        expected = collate_batch([dataset[i] for i in batch["index"].tolist()])
        assert torch.equal(batch["input_ids"], expected["input_ids"])
        assert torch.equal(batch["frames"], expected["frames"])
        assert torch.equal(batch["frame_mask"], expected["frame_mask"])
        assert batch["frame_errors"] == expected["frame_errors"]
    assert len(pids) == 2
    errors = sum((b["frame_errors"] for b in batches), Counter())
    assert errors["missing_file"] == (1 if source == "zip_frames" else 2)


def _collate_with_pids(samples):
    """Runs in the worker: also report its pid and the pid that opened its feature zip."""
    dataset = torch.utils.data.get_worker_info().dataset
    return collate_batch(samples), os.getpid(), getattr(dataset.frame_source, "_pid", None)
