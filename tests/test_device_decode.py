"""``data.frames.decoder: cuda``: workers hand on JPEG bytes, the batch is decoded on the device.

The decoding code is device-agnostic (``torchvision.io.decode_jpeg`` runs on the CPU too), so everything but
nvJPEG itself is tested here on the CPU; ``check_frame_decoder`` is what refuses ``cuda`` off a GPU.
"""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mmcls.config import Config, ConfigError, FrameConfig
from mmcls.data.annotations import annotation_path, load_records
from mmcls.data.builders import build_dataset, build_loader
from mmcls.data.categories import official_categories
from mmcls.data.dataset import VideoTextDataset, collate_batch
from mmcls.data.device_decode import EncodedFrameBatch, decode_batch, fit_square
from mmcls.data.frames import EncodedFrames, EncodedZipFramesSource, FrameError, build_frame_source
from mmcls.data.synthetic import make_synthetic_dataset
from mmcls.data.text import TextEncoder
from mmcls.engine.distributed import check_frame_decoder
from mmcls.engine.prefetch import DevicePrefetcher

CPU = torch.device("cpu")
INPUTS = ("input_ids", "attention_mask", "frames", "frame_mask")


def smooth_image(height: int, width: int) -> np.ndarray:
    """An RGB image of gradients and waves (resampling differences on random noise say nothing)."""
    y, x = np.mgrid[0:height, 0:width]
    planes = [x * 255 / width, y * 255 / height, 128 + 100 * np.sin(x / 7) * np.cos(y / 5)]
    return np.stack(planes, -1).clip(0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("device-decode")
    make_synthetic_dataset(root, 16, 0, 6, seed=3, num_frames=5, image_size=32)
    return root


def batches(root, decoder: str, bert_tokenizer, **overrides) -> list[dict]:
    cfg = Config.from_yaml("tiny", [f"data.frames.{k}={v}" for k, v in overrides.items()])
    categories = official_categories()
    records = load_records(annotation_path(root, "test"), categories=categories)
    dataset = build_dataset(
        cfg, root, "test", records, bert_tokenizer, categories, train=False, frame_decoder=decoder
    )
    loader = build_loader(dataset, 4, None, 0, 0)
    return list(DevicePrefetcher(loader, CPU, INPUTS))


def test_decoded_batches_equal_the_pil_path_at_the_stored_size(synthetic_root, bert_tokenizer):
    pil = batches(synthetic_root, "pil", bert_tokenizer, image_size=32)
    device = batches(synthetic_root, "cuda", bert_tokenizer, image_size=32)
    assert len(pil) == len(device) == 2
    for a, b in zip(pil, device):
        assert b["frames"].dtype == torch.uint8 and b["frames"].shape == a["frames"].shape
        assert torch.equal(a["frame_mask"], b["frame_mask"])
        assert torch.equal(a["frames"], b["frames"])  # same libjpeg decode, no resampling: identical
        assert a["ids"] == b["ids"] and torch.equal(a["input_ids"], b["input_ids"])


def test_resized_frames_stay_close_to_the_pil_path(synthetic_root, bert_tokenizer):
    # 32 px frames to 24 px: PIL resizes after a full decode, the device path resizes with torch's bicubic.
    pil = batches(synthetic_root, "pil", bert_tokenizer, image_size=24)
    device = batches(synthetic_root, "cuda", bert_tokenizer, image_size=24)
    for a, b in zip(pil, device):
        assert torch.equal(a["frame_mask"], b["frame_mask"])
        diff = (a["frames"].int() - b["frames"].int()).abs().float()
        assert diff.mean() < 4


@pytest.mark.parametrize("height,width", [(40, 64), (64, 40), (33, 33)])
def test_fit_square_matches_pil_imageops_fit(height, width):
    image = smooth_image(height, width)
    expected = np.asarray(ImageOps.fit(Image.fromarray(image), (24, 24), Image.Resampling.BICUBIC))
    fitted = fit_square(torch.from_numpy(image).permute(2, 0, 1)[None], 24)[0].permute(1, 2, 0).numpy()
    assert fitted.shape == (24, 24, 3)
    assert np.abs(fitted.astype(int) - expected.astype(int)).max() <= 2


def encoded_batch(
    videos: list[list[bytes]], on_error: str = "text_only", size: int = 16, worker_errors: tuple = ()
) -> dict:
    """A collated batch as the workers make it; ``worker_errors``: what the worker refused in each video."""
    samples = [
        {
            "index": i,
            "id": f"v{i}",
            "input_ids": torch.tensor([101, 7 + i, 102]),
            "frames": EncodedFrames(
                data,
                f"/d/v{i}.zip",
                size,
                4,
                on_error,
                list(worker_errors),
            ),
            "frame_mask": torch.arange(4) < len(data),
            "label": i,
            "frame_errors": list(worker_errors),
        }
        for i, data in enumerate(videos)
    ]
    batch = collate_batch(samples)
    assert isinstance(batch["frames"], EncodedFrameBatch)
    return batch


def test_undecodable_frames_are_skipped_counted_and_the_rest_packed_first():
    good = encode(smooth_image(16, 16))
    truncated = good[: len(good) // 2]  # a valid header: only decoding finds the problem
    png = encode(smooth_image(16, 16), "PNG")  # nvJPEG's refusal: decoded by PIL instead
    batch = decode_batch(encoded_batch([[truncated, good, png], [good]]), CPU)
    assert batch["frame_mask"].tolist() == [[True, True, False, False], [True, False, False, False]]
    assert batch["frame_errors"] == Counter(bad_image=1)
    assert batch["frames"][0, 2:].eq(0).all()
    expected = torch.from_numpy(smooth_image(16, 16)).permute(2, 0, 1).int()
    assert (batch["frames"][0, 1].int() - expected).abs().max() == 0  # the PNG (lossless) in slot 1
    for jpeg in (batch["frames"][0, 0], batch["frames"][1, 0]):
        assert (jpeg.int() - expected).abs().float().mean() < 3


@pytest.mark.parametrize("on_error", ["text_only", "drop", "raise"])
def test_a_video_without_any_decodable_frame_follows_on_error(on_error):
    good = encode(smooth_image(16, 16))
    batch = encoded_batch([[good], [b"\xff\xd8 broken", good[:40]], [good]], on_error=on_error)
    if on_error == "raise":
        with pytest.raises(FrameError, match="/d/v1.zip: bad_image"):
            decode_batch(batch, CPU)
        return
    out = decode_batch(batch, CPU)
    if on_error == "text_only":
        assert out["frame_mask"].sum(dim=1).tolist() == [1, 0, 1]
        assert out["frame_errors"] == Counter(bad_image=1) and out["dropped"] == 0
        return
    assert out["ids"] == ["v0", "v2"] and out["index"].tolist() == [0, 2] and out["labels"].tolist() == [0, 2]
    assert out["input_ids"].shape[0] == out["frames"].shape[0] == out["frame_mask"].shape[0] == 2
    assert out["dropped"] == 1 and out["frame_errors"] == Counter()


def test_a_video_failing_in_the_worker_and_on_the_device_counts_once_as_on_the_pil_path():
    # The worker refused one frame (a corrupt member: bad_zip), the device could not decode the other one. The
    # PIL path raises FrameError(first kind) for such a video, and the dataset counts that one kind.
    batch = encoded_batch([[b"\xff\xd8 broken"]], worker_errors=("bad_zip",))
    assert batch["frame_errors"] == Counter(bad_zip=1)
    out = decode_batch(batch, CPU)
    assert out["frame_mask"].sum() == 0 and out["frame_errors"] == Counter(bad_zip=1)
    with pytest.raises(FrameError, match="/d/v0.zip: bad_zip: none of the 2 sampled frames"):
        decode_batch(encoded_batch([[b"\xff\xd8 broken"]], "raise", worker_errors=("bad_zip",)), CPU)


def test_workers_check_the_zip_and_headers_but_send_bytes(tmp_path, write_zip):
    cfg = FrameConfig(image_size=16, max_frames=4, decoder="cuda", max_image_pixels=64 * 64)
    root = tmp_path / "zip_frames" / "test"
    members = {"0.jpg": encode(smooth_image(16, 16)), "1.jpg": encode(smooth_image(128, 128))}
    write_zip(root / "123" / "v123.zip", members)
    source = build_frame_source(cfg, tmp_path, "test")
    assert isinstance(source, EncodedZipFramesSource)
    clip = source.read("v123")
    assert clip.frames.data == [members["0.jpg"]]
    assert clip.errors == ["bad_image"]  # 128 x 128 > max_image_pixels, refused from the header
    assert clip.mask.tolist() == [True, False, False, False]
    with pytest.raises(FrameError, match="missing_file"):
        source.read("v999")


def test_the_dataset_passes_its_on_error_to_the_device(tmp_path, write_zip, bert_tokenizer):
    cfg = Config.from_yaml("tiny", ["data.frames.decoder=cuda"])
    write_zip(tmp_path / "zip_frames" / "test" / "001" / "v001.zip", {"0.jpg": encode(smooth_image(8, 8))})
    from mmcls.data.annotations import Record

    dataset = VideoTextDataset(
        [Record(id="v001", title="t", asr="", ocr=[], category_id=None)],
        TextEncoder(bert_tokenizer, cfg.data.text),
        build_frame_source(cfg.data.frames, tmp_path, "test"),
        official_categories(),
        train=True,
        on_error="drop",
    )
    assert dataset[0]["frames"].on_error == "drop"


def test_cuda_decoder_is_refused_off_the_gpu_and_off_frame_zips():
    with pytest.raises(
        ConfigError, match="data.frames.decoder=cuda .* on the cpu; use data.frames.decoder=pil"
    ):
        check_frame_decoder("cuda", CPU)
    check_frame_decoder("pil", CPU)
    with pytest.raises(ConfigError, match="data.frames.decoder=cuda decodes JPEG frame zips"):
        Config.from_yaml("feats", ["data.frames.decoder=cuda"])


def test_predict_refuses_the_gpu_decoder_on_the_cpu(tmp_path, capsys):
    from mmcls.cli import main

    code = main(
        [
            "predict",
            str(tmp_path / "m"),
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "r.csv"),
            "--device",
            "cpu",
            "--frame-decoder",
            "cuda",
        ]
    )
    assert code != 0
    assert "--frame-decoder=cuda decodes the JPEG frames on the GPU" in capsys.readouterr().err


def test_bench_times_the_device_decoding_and_refuses_it_off_the_gpu(synthetic_root, capsys):
    from mmcls import bench
    from mmcls.cli import main

    cfg = Config.from_yaml("tiny", ["data.frames.decoder=cuda", "data.frames.image_size=32"])
    opts = bench.BenchOptions(split="test", batch_size=2, repeats=1, warmup=0, batches=2)
    dataset, pad_id = bench._dataset(cfg, synthetic_root, opts, train=True)
    assert bench._device_decode_rate(dataset, pad_id, opts) > 0  # decoding on the CPU: the same code path

    args = ["bench", "data", "tiny", "--data-root", str(synthetic_root), "--set", "data.frames.decoder=cuda"]
    assert main(args) != 0
    assert "data.frames.decoder=cuda decodes the JPEG frames on the GPU" in capsys.readouterr().err
