from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mmcls.config import ConfigError, FrameConfig
from mmcls.data.frames import (
    FrameError,
    VideoFileSource,
    ZipFeatsSource,
    ZipFramesSource,
    build_frame_source,
    sample_frame_indices,
)

VIDEO_ID = "13477278056527828998"
SIZE = 16


def frame_cfg(**kw) -> FrameConfig:
    kw.setdefault("image_size", SIZE)
    kw.setdefault("max_frames", 8)
    return FrameConfig(**kw)


def grey_levels(clip) -> list[int]:
    """Recover the grey value (0-255) of each real frame of a clip made of uniform grey JPEGs."""
    red = clip.frames[clip.mask][:, 0].float()
    return [round(float(v)) for v in red.mean(dim=(1, 2))]


def value_of(i: int) -> int:
    return 10 + 20 * i


@pytest.fixture
def frames_root(tmp_path, jpeg_bytes, write_zip):
    """``zip_frames/test`` in the official layout; ``make(id, n, **extra)`` writes one video's zip."""
    root = tmp_path / "zip_frames" / "test"

    def make(video_id: str = VIDEO_ID, n: int = 5, extra: dict[str, bytes] | None = None, **kw) -> str:
        members = {f"{i:02d}.jpg": jpeg_bytes(value_of(i)) for i in range(n)}
        members.update(extra or {})
        # Written in reverse so that only sorting by name can give the right order.
        ordered = dict(reversed(list(members.items())))
        write_zip(root / video_id[-3:] / f"{video_id}.zip", ordered, **kw)
        return video_id

    make.root = root
    return make


# ------------------------------------------------------------------------------------------------ sampling


def test_eval_sampling_is_uniform_and_deterministic():
    assert sample_frame_indices(10, 4, None) == [1, 3, 6, 8]
    assert sample_frame_indices(100, 8, None) == sample_frame_indices(100, 8, None)
    assert sample_frame_indices(3, 8, None) == [0, 1, 2]
    assert sample_frame_indices(0, 8, None) == []
    many = sample_frame_indices(33, 32, None)
    assert len(set(many)) == 32 and many == sorted(many) and many[-1] <= 32


def test_train_sampling_is_random_sorted_and_seeded():
    draws = [sample_frame_indices(32, 8, np.random.default_rng(seed)) for seed in range(5)]
    for draw in draws:
        assert len(set(draw)) == 8 and draw == sorted(draw) and all(0 <= i < 32 for i in draw)
        assert all(isinstance(i, int) for i in draw)
    assert len({tuple(d) for d in draws}) > 1
    assert draws[0] == sample_frame_indices(32, 8, np.random.default_rng(0))
    assert sample_frame_indices(5, 8, np.random.default_rng(0)) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------- zip_frames


def test_zip_frames_sorted_resized_uint8_and_padded(frames_root):
    video_id = frames_root(n=5, extra={"sub/": b"", "meta.txt": b"not a frame"})
    clip = ZipFramesSource(frame_cfg(), frames_root.root).read(video_id)
    assert clip.frames.shape == (8, 3, SIZE, SIZE) and clip.frames.dtype == torch.uint8
    assert clip.mask.tolist() == [True] * 5 + [False] * 3
    assert torch.all(clip.frames[5:] == 0)
    assert clip.errors == []
    for got, want in zip(grey_levels(clip), [value_of(i) for i in range(5)]):
        assert abs(got - want) <= 2


def test_zip_frames_resize_matches_shorter_side_then_centre_crop(tmp_path, write_zip):
    # Left half black, right half white, 64x32: a centre crop keeps the middle 32x32 of a 32-high image.
    image = Image.new("RGB", (64, 32), (0, 0, 0))
    image.paste((255, 255, 255), (32, 0, 64, 32))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_zip(tmp_path / "998" / f"{VIDEO_ID}.zip", {"0.png": buffer.getvalue()})
    clip = ZipFramesSource(frame_cfg(), tmp_path).read(VIDEO_ID)
    expected = np.array(ImageOps.fit(image, (SIZE, SIZE), Image.Resampling.BICUBIC))
    assert torch.equal(clip.frames[0], torch.from_numpy(expected).permute(2, 0, 1))
    left, right = clip.frames[0, 0, :, :4].float().mean(), clip.frames[0, 0, :, -4:].float().mean()
    assert left < 0.05 * 255 and right > 0.95 * 255


def test_zip_frames_eval_deterministic_train_random(frames_root):
    video_id = frames_root(n=12)
    source = ZipFramesSource(frame_cfg(max_frames=4), frames_root.root)
    first, second = source.read(video_id), source.read(video_id)
    assert torch.equal(first.frames, second.frames)
    assert grey_levels(first) == [value_of(i) for i in sample_frame_indices(12, 4, None)]
    train = [grey_levels(source.read(video_id, np.random.default_rng(seed))) for seed in range(4)]
    assert len({tuple(t) for t in train}) > 1
    for seed, levels in enumerate(train):
        assert levels == [value_of(i) for i in sample_frame_indices(12, 4, np.random.default_rng(seed))]


def test_corrupt_jpeg_is_skipped_and_counted(frames_root, jpeg_bytes):
    good = jpeg_bytes(value_of(3))
    video_id = frames_root(
        n=3, extra={"03.jpg": b"\xff\xd8 not really a jpeg", "04.jpg": good[: len(good) // 2]}
    )
    clip = ZipFramesSource(frame_cfg(), frames_root.root).read(video_id)
    assert clip.mask.sum() == 3
    assert clip.errors == ["bad_image", "bad_image"]


def test_all_frames_corrupt_raises(frames_root):
    video_id = frames_root(n=0, extra={"0.jpg": b"garbage", "1.jpg": b"junk"})
    with pytest.raises(FrameError) as info:
        ZipFramesSource(frame_cfg(), frames_root.root).read(video_id)
    assert info.value.kind == "bad_image" and f"{VIDEO_ID}.zip" in str(info.value)


def test_zip_without_images_raises_no_frames(frames_root):
    video_id = frames_root(n=0, extra={"readme.txt": b"x"})
    with pytest.raises(FrameError) as info:
        ZipFramesSource(frame_cfg(), frames_root.root).read(video_id)
    assert info.value.kind == "no_frames"


def test_missing_zip(frames_root):
    source = ZipFramesSource(frame_cfg(), frames_root.root)
    with pytest.raises(FrameError) as info:
        source.read("12345")
    assert info.value.kind == "missing_file"
    assert str(source.path("12345")) in str(info.value) and source.path("12345").parent.name == "345"


@pytest.mark.parametrize("damage", ["truncate", "not_a_zip"])
def test_truncated_or_fake_zip(frames_root, damage):
    video_id = frames_root(n=4)
    path = frames_root.root / video_id[-3:] / f"{video_id}.zip"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3] if damage == "truncate" else b"just text, no zip here")
    with pytest.raises(FrameError) as info:
        ZipFramesSource(frame_cfg(), frames_root.root).read(video_id)
    assert info.value.kind == "bad_zip" and str(path) in str(info.value)


def test_oversized_member_refused(frames_root, jpeg_bytes):
    video_id = frames_root(n=3)
    size = len(jpeg_bytes(value_of(0)))
    with pytest.raises(FrameError) as info:
        ZipFramesSource(frame_cfg(max_member_bytes=size - 1), frames_root.root).read(video_id)
    assert info.value.kind == "unsafe_member" and info.value.member == "00.jpg"
    assert "'00.jpg'" in str(info.value) and "max_member_bytes" in str(info.value)


def test_high_compression_ratio_member_refused(frames_root):
    # 1 MB of zeros deflates about 1000 times: the signature of a zip bomb.
    video_id = frames_root(n=2, extra={"99.jpg": bytes(1 << 20)}, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(FrameError) as info:
        ZipFramesSource(frame_cfg(), frames_root.root).read(video_id)
    assert info.value.kind == "unsafe_member" and "'99.jpg'" in str(info.value)
    assert "compression ratio" in str(info.value)


def test_member_whose_header_understates_its_size(frames_root):
    """A bomb that lies about its size is cut at the stated size and fails the CRC check."""
    video_id = frames_root(n=0, extra={"00.jpg": bytes(1 << 20)}, compression=zipfile.ZIP_DEFLATED)
    path = frames_root.root / video_id[-3:] / f"{video_id}.zip"
    data = bytearray(path.read_bytes())
    compressed = zipfile.ZipFile(path).infolist()[0].compress_size
    # Uncompressed size: offset 22 in the local header, 24 in the central directory entry.
    struct.pack_into("<I", data, data.find(b"PK\x03\x04") + 22, compressed)
    struct.pack_into("<I", data, data.find(b"PK\x01\x02") + 24, compressed)
    path.write_bytes(bytes(data))
    with pytest.raises(FrameError) as info:
        ZipFramesSource(frame_cfg(), frames_root.root).read(video_id)
    assert info.value.kind == "bad_zip"


def test_video_id_cannot_escape_the_data_directory(frames_root):
    with pytest.raises(ValueError, match="invalid video id"):
        ZipFramesSource(frame_cfg(), frames_root.root).read("../../etc/passwd")


def test_empty_clip():
    clip = ZipFramesSource(frame_cfg(max_frames=3), "unused").empty()
    assert clip.frames.shape == (3, 3, SIZE, SIZE) and not clip.mask.any() and clip.errors == []


# ----------------------------------------------------------------------------------------------- zip_feats

DIM = 16


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture
def feats_zip(tmp_path, write_zip):
    rng = np.random.default_rng(0)
    arrays = {"111": rng.standard_normal((5, DIM)).astype(np.float16)}
    arrays["222"] = rng.standard_normal((40, DIM)).astype(np.float16)
    members = {f"{k}.npy": npy_bytes(v) for k, v in arrays.items()}
    members["333.npy"] = npy_bytes(np.zeros((4, DIM + 1), np.float16))  # wrong width
    members["444.npy"] = b"\x93NUMPY garbage"
    members["555.npy"] = npy_bytes(np.array([{"a": 1}], dtype=object))  # would need pickle
    path = write_zip(tmp_path / "zip_feats" / "test.zip", members, compression=zipfile.ZIP_DEFLATED)
    return path, arrays


def test_zip_feats_reads_float16_as_float32(feats_zip):
    path, arrays = feats_zip
    source = ZipFeatsSource(frame_cfg(feature_dim=DIM), path)
    short = source.read("111")
    assert short.frames.shape == (8, DIM) and short.frames.dtype == torch.float32
    assert short.mask.tolist() == [True] * 5 + [False] * 3
    assert torch.equal(short.frames[:5], torch.from_numpy(arrays["111"].astype(np.float32)))
    long = source.read("222")
    assert torch.equal(
        long.frames, torch.from_numpy(arrays["222"][sample_frame_indices(40, 8, None)]).float()
    )
    train = source.read("222", np.random.default_rng(3))
    picked = sample_frame_indices(40, 8, np.random.default_rng(3))
    assert torch.equal(train.frames, torch.from_numpy(arrays["222"][picked]).float())


def test_zip_feats_keeps_one_handle_per_process_and_pickles_without_it(feats_zip):
    path, arrays = feats_zip
    source = ZipFeatsSource(frame_cfg(feature_dim=DIM), path)
    assert source._zip is None  # nothing opened before the first read
    source.read("111")
    handle = source._zip
    source.read("222")
    assert source._zip is handle and source._pid == os.getpid()
    clone = pickle.loads(pickle.dumps(source))
    assert clone._zip is None
    assert torch.equal(clone.read("111").frames, source.read("111").frames)
    source._pid = -1  # as if inherited from a parent process: must not be reused
    source.read("111")
    assert source._zip is not handle
    source.close()


@pytest.mark.parametrize(
    ("video_id", "kind", "member"),
    [("333", "wrong_shape", "333.npy"), ("444", "bad_npy", "444.npy"), ("555", "bad_npy", "555.npy")],
)
def test_zip_feats_bad_members(feats_zip, video_id, kind, member):
    path, _ = feats_zip
    with pytest.raises(FrameError) as info:
        ZipFeatsSource(frame_cfg(feature_dim=DIM), path).read(video_id)
    assert info.value.kind == kind and str(path) in str(info.value) and f"'{member}'" in str(info.value)


def test_zip_feats_wrong_configured_width(feats_zip):
    path, _ = feats_zip
    with pytest.raises(FrameError, match=r"expected \[n, 768\]") as info:
        ZipFeatsSource(frame_cfg(feature_dim=768), path).read("111")
    assert info.value.kind == "wrong_shape"


def test_zip_feats_missing_member_and_missing_or_bad_zip(feats_zip, tmp_path):
    path, _ = feats_zip
    with pytest.raises(FrameError) as info:
        ZipFeatsSource(frame_cfg(feature_dim=DIM), path).read("999")
    assert info.value.kind == "missing_file" and "'999.npy'" in str(info.value)
    with pytest.raises(FrameError) as info:
        ZipFeatsSource(frame_cfg(feature_dim=DIM), tmp_path / "nope.zip").read("111")
    assert info.value.kind == "missing_file" and "nope.zip" in str(info.value)
    data = path.read_bytes()
    path.write_bytes(data[:-30])
    with pytest.raises(FrameError) as info:
        ZipFeatsSource(frame_cfg(feature_dim=DIM), path).read("111")
    assert info.value.kind == "bad_zip"


# ------------------------------------------------------------------------------------------------- videos


@pytest.fixture
def video_dir(tmp_path, shared_data):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / f"{VIDEO_ID}.mpg").symlink_to(shared_data / "cityCC0.mpg")
    return tmp_path / "videos"


def test_video_file_eval_frames_match_decord(video_dir):
    import decord

    source = VideoFileSource(frame_cfg(), video_dir, ".mpg")
    clip = source.read(VIDEO_ID)
    assert clip.frames.shape == (8, 3, SIZE, SIZE) and clip.mask.all() and clip.errors == []
    indices = sample_frame_indices(190, 8, None)
    reader = decord.VideoReader(str(video_dir / f"{VIDEO_ID}.mpg"))
    assert len(reader) == 190 and reader[0].shape == (405, 720, 3)
    raw = reader.get_batch(indices).asnumpy()
    expected = np.stack(
        [np.asarray(ImageOps.fit(Image.fromarray(f), (SIZE, SIZE), Image.Resampling.BICUBIC)) for f in raw]
    )
    assert torch.equal(clip.frames, torch.from_numpy(expected).permute(0, 3, 1, 2))
    assert torch.equal(source.read(VIDEO_ID).frames, clip.frames)  # deterministic


def test_video_file_train_sampling(video_dir):
    source = VideoFileSource(frame_cfg(max_frames=4), video_dir, ".mpg")
    clips = [source.read(VIDEO_ID, np.random.default_rng(seed)).frames for seed in (0, 1)]
    assert clips[0].shape == (4, 3, SIZE, SIZE)
    assert not torch.equal(clips[0], clips[1])


@pytest.mark.parametrize(
    ("content", "kind"), [(None, "missing_file"), (b"", "bad_video"), (b"x" * 999, "bad_video")]
)
def test_video_file_errors(tmp_path, content, kind):
    if content is not None:
        (tmp_path / "12.mp4").write_bytes(content)
    with pytest.raises(FrameError) as info:
        VideoFileSource(frame_cfg(), tmp_path).read("12")
    assert info.value.kind == kind and str(tmp_path / "12.mp4") in str(info.value)


# -------------------------------------------------------------------------------------------------- build


def test_build_frame_source(tmp_path):
    frames = build_frame_source(frame_cfg(), tmp_path, "test")
    assert isinstance(frames, ZipFramesSource) and frames.root == tmp_path / "zip_frames" / "test"
    feats = build_frame_source(frame_cfg(source="zip_feats"), tmp_path, "labeled")
    assert isinstance(feats, ZipFeatsSource) and feats.zip_path == tmp_path / "zip_feats" / "labeled.zip"
    video = build_frame_source(frame_cfg(source="video", video_ext=".mpg"), tmp_path, "test")
    assert isinstance(video, VideoFileSource) and video.path("7") == tmp_path / "videos" / "test" / "7.mpg"
    custom = build_frame_source(frame_cfg(source="video", video_dir=str(tmp_path / "v")), tmp_path, "test")
    assert custom.video_dir == tmp_path / "v"
    assert build_frame_source(frame_cfg(source="none"), tmp_path, "test") is None
    with pytest.raises(ConfigError, match="data.frames.source"):
        build_frame_source(frame_cfg(source="webcam"), tmp_path, "test")


def test_frame_error_pickles():
    error = FrameError("bad_zip", "/x.zip", "detail", "a.jpg")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.kind, clone.path, clone.member, str(clone)) == ("bad_zip", "/x.zip", "a.jpg", str(error))
