"""Frame sources: JPEG frame zips, precomputed feature zips and plain video files, behind one interface.

Every source returns a :class:`FrameClip` padded to ``cfg.max_frames``: images as uint8 pixels ``[T, 3, S, S]``
(shorter side resized to ``S = cfg.image_size``, then centre-cropped), features as float32 ``[T, D]``. Images
stay uint8 through worker processes, pinned memory and the copy to the device (a quarter of float32's bytes);
the model's frame encoder scales and normalises them there (``data.frames.mean``/``std``). Which frames are taken is decided by :func:`sample_frame_indices`: uniform and deterministic for
evaluation, a random sorted subset for training.

Safety and robustness rules:

* Zip member names are only ever used as keys (``ZipFile.open(info)``), never as file-system paths.
* A record's own ``video`` path (``data.frames.source: video``) is read only inside the data root when it is
  relative: a ``..`` component, or a path whose resolved form (symlinks followed) lies outside the resolved
  data root, is that record's ``unsafe_path`` frame error. An absolute path is the user's explicit choice.
* Members larger than ``cfg.max_member_bytes`` or compressed more than ``cfg.max_compression_ratio`` times are
  refused (zip-bomb guard); reads are bounded even if a member's header lies about its size.
* Zip files are opened lazily in the process that reads them. DataLoader workers are forked: a ``ZipFile``
  opened in the parent shares its file offset with every child, and concurrent seeks corrupt reads (the
  challenge's own baseline crashed on this). The split-wide feature zip is therefore cached per process id.
* Problems raise :class:`FrameError` with a ``kind`` the dataset can count; a single undecodable JPEG inside a
  zip is skipped and recorded in ``FrameClip.errors`` instead.
"""

from __future__ import annotations

import ast
import io
import os
import re
import zipfile
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from mmcls import names
from mmcls.config import ConfigError, FrameConfig
from mmcls.data.annotations import Record
from mmcls.errors import MmclsError, unwrap_worker_report
from mmcls.files import InputFileError, check_regular_file, open_regular

FRAME_ERROR_KINDS = (
    "missing_file",
    "bad_zip",
    "bad_image",
    "no_frames",
    "bad_npy",
    "wrong_shape",
    "unsafe_member",
    "bad_video",
    "unsafe_path",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Errors that reading one zip member can raise: CRC mismatch (BadZipFile), broken deflate stream, short
# file, encrypted member (RuntimeError), unsupported compression method (NotImplementedError).
_MEMBER_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError)
_VIDEO_ID = re.compile(r"[A-Za-z0-9_-]+")


class FrameError(MmclsError):
    """The frames of one video cannot be read. ``kind`` is one of :data:`FRAME_ERROR_KINDS`.

    ``FrameError(kind, path, detail, member)`` is the normal form. ``FrameError(message)`` (one string) exists
    because torch's DataLoader re-raises an exception from a worker process as ``type(exc)(report)``, where
    ``report`` is the worker's formatted traceback: the original one-line message is recovered from it and
    ``kind``/``path``/``detail``/``member`` are parsed back, so the main process sees the same type, message
    and fields (the whole report is kept in ``worker_traceback``). Without this the re-creation fails and
    torch raises a bare RuntimeError that the CLI cannot report as one clean line.
    """

    def __init__(
        self, kind: str, path: str | Path | None = None, detail: str = "", member: str | None = None
    ):
        self.worker_traceback: str | None = None
        if path is None:
            message, self.worker_traceback = unwrap_worker_report(kind, type(self).__name__)
            self.kind, self.path, self.detail, self.member = _parse_frame_message(message)
            super().__init__(message)
            return
        self.kind = kind
        self.path = str(path)
        self.detail = detail
        self.member = member
        where = self.path + (f" (member {member!r})" if member is not None else "")
        super().__init__(f"{where}: {kind}" + (f": {detail}" if detail else ""))

    def __reduce__(self):  # picklable with its structured fields (exceptions cross process boundaries)
        return (type(self), (str(self),), self.__dict__.copy())


_FRAME_MESSAGE = re.compile(
    r"(?P<path>.*?)(?: \(member (?P<member>'.*?'|\".*?\")\))?: (?P<kind>"
    + "|".join(FRAME_ERROR_KINDS)
    + r")(?:: (?P<detail>.*))?",
    re.DOTALL,
)


def _parse_frame_message(message: str) -> tuple[str, str, str, str | None]:
    """``(kind, path, detail, member)`` of a :class:`FrameError` message; kind ``"unknown"`` if it has another form."""
    match = _FRAME_MESSAGE.fullmatch(message)
    if match is None:
        return "unknown", "", message, None
    member = match["member"]
    return (
        match["kind"],
        match["path"],
        match["detail"] or "",
        None if member is None else ast.literal_eval(member),
    )


@dataclass
class FrameClip:
    # [max_frames, 3, H, W] uint8 pixels or [max_frames, D] float32 features, zero padded; or the still
    # encoded frames (EncodedFrames, data.frames.decoder=cuda)
    frames: torch.Tensor | EncodedFrames
    mask: torch.Tensor  # [max_frames] bool, True = real frame
    errors: list[str] = field(default_factory=list)  # kinds of non-fatal problems (e.g. one bad JPEG skipped)


def sample_frame_indices(num_available: int, max_frames: int, rng: np.random.Generator | None) -> list[int]:
    """Indices (sorted, distinct) of the frames to use.

    All frames when there are at most ``max_frames``. Otherwise: with ``rng=None`` (evaluation) the centre
    frame of each of ``max_frames`` equal segments, so the same video always gives the same clip; with an
    ``rng`` (training) a uniformly random sorted subset.
    """
    if num_available <= 0 or max_frames <= 0:
        return []
    if num_available <= max_frames:
        return list(range(num_available))
    if rng is None:
        # Segments are wider than one frame here, so the centres are distinct.
        return [int((i + 0.5) * num_available / max_frames) for i in range(max_frames)]
    return sorted(int(i) for i in rng.choice(num_available, size=max_frames, replace=False))


class FrameSource(ABC):
    """Reads the frames (or frame features) of one video by id."""

    def __init__(self, cfg: FrameConfig):
        self.cfg = cfg
        self.max_frames = cfg.max_frames

    @property
    @abstractmethod
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one frame in the output: ``(3, S, S)`` or ``(D,)``."""

    #: dtype of ``FrameClip.frames``: uint8 pixels for image sources, float32 for features.
    dtype: torch.dtype = torch.float32

    @abstractmethod
    def read(self, video_id: str, rng: np.random.Generator | None = None) -> FrameClip:
        """The clip of ``video_id``; ``rng`` selects training sampling. Raises :class:`FrameError`."""

    def read_record(self, record: Record, rng: np.random.Generator | None = None) -> FrameClip:
        """The clip of ``record`` (what the dataset calls): by its id here; a video source honours ``video``."""
        return self.read(record.id, rng)

    def empty(self) -> FrameClip:
        """An all-padding clip (mask all False), used when a sample falls back to text only."""
        return self._padded(self._zero_frames(), 0, [])

    def _zero_frames(self) -> torch.Tensor:
        return torch.zeros((self.max_frames, *self.item_shape), dtype=self.dtype)

    def _padded(self, frames: torch.Tensor, n: int, errors: list[str]) -> FrameClip:
        """The clip of zero-padded ``frames`` whose first ``n`` are real."""
        mask = torch.zeros(self.max_frames, dtype=torch.bool)
        mask[:n] = True
        return FrameClip(frames=frames, mask=mask, errors=errors)

    def _pad(self, items: torch.Tensor, errors: list[str]) -> FrameClip:
        frames = self._zero_frames()
        n = min(len(items), self.max_frames)
        frames[:n] = items[:n]
        return self._padded(frames, n, errors)


def fit_image(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size``, centre crop to a square (bicubic): the RGB ``size x size`` frame a model sees.

    A frame that is already RGB and ``size x size`` (the usual case for frame zips) is taken as is: no copy.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        image = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    return image


class _ImageSource(FrameSource):
    """Shared resizing for sources that yield RGB images (uint8; normalised later, on the model's device)."""

    dtype = torch.uint8

    def __init__(self, cfg: FrameConfig):
        super().__init__(cfg)
        self.image_size = cfg.image_size

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def _clip(self, images: list[Image.Image], errors: list[str]) -> FrameClip:
        """Copy ``S x S`` RGB images straight into a padded uint8 ``[T, 3, S, S]`` clip.

        Channel by channel (``Image.split``): each plane is one contiguous copy. Stacking ``[S, S, 3]`` arrays
        and permuting them to channels-first afterwards cost a strided copy per frame plus two more full copies,
        which profiled as a quarter of a video's time in the worker.
        """
        frames = self._zero_frames()
        pixels = frames.numpy()  # shares memory with the tensor
        n = min(len(images), self.max_frames)
        for i, image in enumerate(images[:n]):
            for channel, plane in enumerate(image.split()):
                pixels[i, channel] = np.asarray(plane)
        return self._padded(frames, n, errors)


class ZipFramesSource(_ImageSource):
    """``{root}/{id[-3:]}/{id}.zip`` with one JPEG per frame; frame order = ``sorted(namelist())``.

    ``root`` is ``DATA_ROOT/zip_frames/{split}``. Each read opens and closes its own small zip, so nothing is
    shared between DataLoader workers.
    """

    def __init__(self, cfg: FrameConfig, root: str | Path):
        super().__init__(cfg)
        self.root = Path(root)

    def path(self, video_id: str) -> Path:
        _check_video_id(video_id)
        return self.root / video_id[-3:] / f"{video_id}.zip"

    def read(self, video_id: str, rng: np.random.Generator | None = None) -> FrameClip:
        return self.read_path(self.path(video_id), rng)

    def read_path(self, path: Path, rng: np.random.Generator | None = None) -> FrameClip:
        """The clip of the frame zip at ``path`` (``mmcls predict --video FRAMES.zip`` names one directly)."""
        with _open_zip(path, self.cfg) as zf:
            members, guessed = _frame_members(zf)
            if not members:
                raise FrameError("no_frames", path, "the zip holds no image member")
            # One refused member makes the whole zip untrusted, whichever frames the sampler picks.
            for info in members:
                _check_member_safe(info, path, self.cfg)
            frames, errors = [], []
            for k in sample_frame_indices(len(members), self.max_frames, rng):
                frame, error = self._take_member(zf, members[k], path)
                if error is None:
                    frames.append(frame)
                else:
                    errors.append(error)
        if not frames:
            if guessed:  # members without an image suffix were tried and none was an image
                raise FrameError("no_frames", path, f"none of the {len(members)} members is a readable image")
            raise FrameError(errors[0], path, f"none of the {len(errors)} sampled frames could be read")
        return self._frames_clip(frames, path, errors)

    def _take_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> tuple[Any, str | None]:
        """``(frame, None)`` or ``(None, error kind)`` for one sampled member (the frame: see :meth:`_frame`)."""
        try:
            data = _read_member(zf, info, path, self.cfg)
        except _MEMBER_READ_ERRORS:
            return None, "bad_zip"
        try:
            with Image.open(io.BytesIO(data)) as image:
                _check_pixels(image, self.cfg)  # from the header, before any pixel is decoded
                return self._frame(image, data), None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None, "bad_image"

    def _frame(self, image: Image.Image, data: bytes) -> Any:
        """What a readable member becomes: here the decoded ``S x S`` RGB image."""
        # Let the JPEG decoder downscale by 1/2..1/8 while staying >= the target size: much faster.
        image.draft("RGB", (self.image_size, self.image_size))
        image.load()  # decode now, inside the caller's try: a broken JPEG fails here
        return fit_image(image, self.image_size)

    def _frames_clip(self, frames: list[Any], path: Path, errors: list[str]) -> FrameClip:
        return self._clip(frames, errors)


@dataclass
class EncodedFrames:
    """The sampled frames of one video still encoded (``data.frames.decoder: cuda``), decoded later in batches.

    Plain ``bytes``, not tensors: DataLoader workers send tensors through shared memory, one file handle per
    tensor, which for 8 small JPEGs per video costs more than pickling the bytes. ``path`` (the zip) names the
    video in errors. See :mod:`mmcls.data.device_decode`.
    """

    data: list[bytes]
    path: str
    image_size: int
    max_frames: int
    on_error: str = "text_only"  # what the dataset does with a video none of whose frames decode
    worker_errors: list[str] = field(default_factory=list)  # kinds of the sampled frames the worker refused

    def __len__(self) -> int:
        return len(self.data)


class EncodedZipFramesSource(ZipFramesSource):
    """A :class:`ZipFramesSource` that leaves decoding to the device (``data.frames.decoder: cuda``).

    The worker still does everything that protects the process: the zip checks, frame sampling, and the
    header's pixel count (PIL reads only the header here). What it hands on is each sampled JPEG's bytes.
    """

    def _frame(self, image: Image.Image, data: bytes) -> bytes:
        return data  # the header was read and checked; decoding waits for the device

    def _frames_clip(self, frames: list[Any], path: Path, errors: list[str]) -> FrameClip:
        n = min(len(frames), self.max_frames)
        encoded = EncodedFrames(
            frames[:n], str(path), self.image_size, self.max_frames, worker_errors=list(errors)
        )
        return FrameClip(encoded, torch.arange(self.max_frames) < n, errors)

    def empty(self) -> FrameClip:
        encoded = EncodedFrames([], "", self.image_size, self.max_frames)
        return FrameClip(encoded, torch.zeros(self.max_frames, dtype=torch.bool), [])


class ZipFeatsSource(FrameSource):
    """``DATA_ROOT/zip_feats/{split}.zip`` with one member ``{id}.npy`` per video: float16 ``[n, D]``.

    The split zip stays open between reads, one handle per process (see the module docstring); the map from
    video id to member is built once per process when the zip is opened.
    """

    def __init__(self, cfg: FrameConfig, zip_path: str | Path):
        super().__init__(cfg)
        self.zip_path = Path(zip_path)
        self.feature_dim = cfg.feature_dim
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, zipfile.ZipInfo] = {}
        self._pid: int | None = None

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (self.feature_dim,)

    def __getstate__(self) -> dict[str, Any]:
        # An open ZipFile is neither picklable nor shareable: workers open their own.
        state = self.__dict__.copy()
        state.update(_zip=None, _members={}, _pid=None)
        return state

    def close(self) -> None:
        if self._zip is not None and self._pid == os.getpid():
            self._zip.close()
        self._zip, self._members, self._pid = None, {}, None

    def read(self, video_id: str, rng: np.random.Generator | None = None) -> FrameClip:
        zf = self._open()
        member = f"{video_id}.npy"
        info = self._members.get(video_id)
        if info is None:
            raise FrameError("missing_file", self.zip_path, "no such member in the feature zip", member)
        member = info.filename
        try:
            data = _read_member(zf, info, self.zip_path, self.cfg)
        except _MEMBER_READ_ERRORS as exc:
            raise FrameError("bad_zip", self.zip_path, f"cannot read member: {exc}", member) from None
        features = self._parse_npy(data, member)
        indices = sample_frame_indices(len(features), self.max_frames, rng)
        chosen = features[indices].astype(np.float32)
        if not np.isfinite(chosen).all():
            raise FrameError("bad_npy", self.zip_path, "non-finite values", member)
        return self._pad(torch.from_numpy(chosen), [])

    def _parse_npy(self, data: bytes, member: str) -> np.ndarray:
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise FrameError("bad_npy", self.zip_path, f"not a readable .npy: {exc}", member) from None
        if not isinstance(array, np.ndarray):  # np.load returns an NpzFile for .npz content
            raise FrameError("bad_npy", self.zip_path, "not a single .npy array", member)
        if array.dtype.kind not in "fiu":
            raise FrameError("bad_npy", self.zip_path, f"non-numeric dtype {array.dtype}", member)
        if array.ndim != 2 or array.shape[1] != self.feature_dim:
            raise FrameError(
                "wrong_shape", self.zip_path, f"shape {array.shape}, expected [n, {self.feature_dim}]", member
            )
        if array.shape[0] == 0:
            raise FrameError("no_frames", self.zip_path, "zero feature rows", member)
        return array

    def _open(self) -> zipfile.ZipFile:
        pid = os.getpid()
        if self._zip is None or self._pid != pid:
            # A handle inherited through fork is dropped, not closed: it belongs to the parent.
            zf = _open_zip(self.zip_path, self.cfg)
            members: dict[str, zipfile.ZipInfo] = {}
            for info in zf.infolist():
                name = info.filename
                if not info.is_dir() and name.lower().endswith(".npy"):
                    members.setdefault(name.rsplit("/", 1)[-1][: -len(".npy")], info)
            self._zip, self._members, self._pid = zf, members, pid
        return self._zip


class VideoFileSource(_ImageSource):
    """``{video_dir}/{id}{ext}``, or a record's own ``video`` path, decoded with decord; frames resized like JPEGs.

    A relative ``video`` path is relative to ``data_root`` (default: ``video_dir``) and must stay inside it
    (see the module docstring); an absolute one is read where it is.
    """

    def __init__(
        self,
        cfg: FrameConfig,
        video_dir: str | Path | None,
        ext: str | None = None,
        data_root: str | Path | None = None,
    ):
        super().__init__(cfg)
        # None: no folder of {id}{ext} files, only records' absolute paths and encoded bytes (read_video)
        self.video_dir = None if video_dir is None else Path(video_dir)
        self.ext = cfg.video_ext if ext is None else ext
        self.data_root = Path(data_root) if data_root is not None else self.video_dir

    def path(self, video_id: str) -> Path:
        _check_video_id(video_id)
        if self.video_dir is None:
            raise FrameError("missing_file", video_id, "no video folder: the record must name its video")
        return self.video_dir / f"{video_id}{self.ext}"

    def record_path(self, video: str) -> Path:
        """Where a record's ``video`` is read; a relative path that would leave the data root raises ``unsafe_path``."""
        path = Path(video)
        if path.is_absolute():
            return path
        if self.data_root is None:
            raise FrameError("unsafe_path", path, "a relative video path needs a data root")
        joined = self.data_root / path
        if ".." in path.parts:
            raise FrameError("unsafe_path", joined, "a relative video path may not contain '..'")
        try:
            root, target = self.data_root.resolve(), joined.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise FrameError("bad_video", joined, f"cannot resolve the path: {exc}") from None
        if not target.is_relative_to(root):
            raise FrameError("unsafe_path", joined, f"resolves to {target}, outside the data root {root}")
        return target  # the checked path, so a symlink changed later cannot redirect the read

    def read(self, video_id: str, rng: np.random.Generator | None = None) -> FrameClip:
        return self._read_file(self.path(video_id), rng)

    def read_record(self, record: Record, rng: np.random.Generator | None = None) -> FrameClip:
        if record.video is None:
            return self.read(record.id, rng)
        return self._read_file(self.record_path(record.video), rng)

    def _read_file(self, path: Path, rng: np.random.Generator | None) -> FrameClip:
        try:
            check_regular_file(path, self.cfg.max_file_bytes, what="video file")
        except FileNotFoundError:
            raise FrameError("missing_file", path, "no such video file") from None
        except InputFileError as exc:
            raise FrameError("bad_video", path, exc.problem) from None
        except OSError as exc:  # e.g. a path through a file, or too long a name
            raise FrameError("missing_file", path, f"cannot open: {exc.strerror or exc}") from None
        return self.read_video(open_video(str(path), path), path, rng)

    def read_video(self, reader: Any, where: str | Path, rng: np.random.Generator | None = None) -> FrameClip:
        """The clip of an opened video (:func:`open_video`: a file, or the bytes a server received); ``where``
        names it in errors. Sampling and resizing are the file source's, whatever the video came from."""
        import decord

        try:
            indices = sample_frame_indices(len(reader), self.max_frames, rng)
            if not indices:
                raise FrameError("bad_video", where, "the video has no frames")
            decoded = reader.get_batch(indices).asnumpy()
        except (RuntimeError, decord.DECORDError) as exc:
            raise FrameError("bad_video", where, f"cannot decode: {_first_line(exc)}") from None
        return self._clip([fit_image(Image.fromarray(frame), self.image_size) for frame in decoded], [])


def open_video(video: str | bytes, where: str | Path) -> Any:
    """A ``decord.VideoReader`` over a video file's path or an encoded video's bytes (read from memory, no
    temporary file); raises ``bad_video`` naming ``where``. One decoding thread: DataLoader workers (or the
    server's instances) already provide the parallelism."""
    import decord  # lazy: decord wheels are missing on some platforms that only use zips

    source = io.BytesIO(video) if isinstance(video, bytes) else video
    try:
        return decord.VideoReader(source, num_threads=1)
    # decord asserts a frame count > 0 after opening: an AssertionError is an empty or broken video too
    except (RuntimeError, AssertionError, decord.DECORDError) as exc:
        raise FrameError("bad_video", where, f"cannot decode: {_first_line(exc)}") from None


def video_seconds(reader: Any) -> float:
    """The duration of an opened video (frames / average frame rate); 0 when the container gives no rate."""
    fps = float(reader.get_avg_fps() or 0.0)
    return len(reader) / fps if fps > 0 else 0.0


def build_frame_source(cfg: FrameConfig, data_root: str | Path, split: str) -> FrameSource | None:
    """The source ``cfg.source`` names for ``split`` of the official layout; ``None`` for ``"none"``."""
    root = Path(data_root)
    if cfg.decoder == "cuda" and cfg.source != "zip_frames":
        raise ConfigError(
            f"data.frames.decoder=cuda decodes JPEG frame zips, not data.frames.source={cfg.source}"
        )
    if cfg.source == "zip_frames":
        source_type = EncodedZipFramesSource if cfg.decoder == "cuda" else ZipFramesSource
        return source_type(cfg, root / names.FRAMES_DIR / split)
    if cfg.source == "zip_feats":
        return ZipFeatsSource(cfg, root / names.FEATURES_DIR / f"{split}.zip")
    if cfg.source == "video":
        video_dir = Path(cfg.video_dir) if cfg.video_dir else root / "videos" / split
        return VideoFileSource(cfg, video_dir, cfg.video_ext, data_root=root)
    if cfg.source == "none":
        return None
    raise ConfigError(
        f"data.frames.source: unknown frame source {cfg.source!r}; use zip_frames, zip_feats, video or none"
    )


# ------------------------------------------------------------------------------------------------ helpers


def _check_video_id(video_id: str) -> None:
    # Ids become file names: refuse anything that could leave the data directory.
    if not isinstance(video_id, str) or not _VIDEO_ID.fullmatch(video_id):
        raise ValueError(f"invalid video id {video_id!r}: expected letters, digits, '_' or '-'")


def _open_zip(path: Path, cfg: FrameConfig) -> zipfile.ZipFile:
    """Open a zip that is a regular file of at most ``cfg.max_file_bytes`` (not a FIFO, not ``/dev/zero``)."""
    try:
        handle = open_regular(path, cfg.max_file_bytes, what="zip file")
    except FileNotFoundError:
        raise FrameError("missing_file", path, "no such zip file") from None
    except InputFileError as exc:
        raise FrameError("bad_zip", path, exc.problem) from None
    except OSError as exc:
        raise FrameError("bad_zip", path, f"cannot open: {exc.strerror or exc}") from None
    try:
        return _OwnedZipFile(handle)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        handle.close()
        raise FrameError("bad_zip", path, f"not a readable zip file: {exc}") from None


class _OwnedZipFile(zipfile.ZipFile):
    """A ZipFile that closes the file object it was opened on (a plain ZipFile leaves a given file open)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle  # first: a failed __init__ still runs close() from __del__
        super().__init__(handle)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._handle.close()


def _is_image_member(info: zipfile.ZipInfo) -> bool:
    return not info.is_dir() and info.filename.lower().endswith(IMAGE_SUFFIXES)


def _frame_members(zf: zipfile.ZipFile) -> tuple[list[zipfile.ZipInfo], bool]:
    """The frame members in name order, and whether they were guessed.

    Members with an image suffix when there are any (other members, e.g. a ``meta.txt``, are left out);
    otherwise every file member is tried, as the official baseline does (it decodes every member), so frames
    stored without a suffix still count.
    """
    files = [i for i in zf.infolist() if not i.is_dir()]
    images = [i for i in files if _is_image_member(i)]
    chosen, guessed = (images, False) if images else (files, True)
    return sorted(chosen, key=lambda i: i.filename), guessed


def _check_pixels(image: Image.Image, cfg: FrameConfig) -> None:
    """Refuse an image whose header claims more than ``cfg.max_image_pixels`` (a decompression bomb)."""
    width, height = image.size
    if width * height > cfg.max_image_pixels:
        raise Image.DecompressionBombError(
            f"{width}x{height} pixels > max_image_pixels={cfg.max_image_pixels}"
        )


def _check_member_safe(info: zipfile.ZipInfo, path: Path, cfg: FrameConfig) -> None:
    if info.file_size > cfg.max_member_bytes:
        raise FrameError(
            "unsafe_member",
            path,
            f"{info.file_size} bytes > max_member_bytes={cfg.max_member_bytes}",
            info.filename,
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if ratio > cfg.max_compression_ratio:
        raise FrameError(
            "unsafe_member",
            path,
            f"compression ratio {ratio:.0f} > max_compression_ratio={cfg.max_compression_ratio:g}",
            info.filename,
        )


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, cfg: FrameConfig) -> bytes:
    """The bytes of a member, refusing unsafe ones.

    zipfile stops decompressing at the header's ``file_size`` (a header that understates the size then fails
    the CRC check with BadZipFile), so checking the header bounds the memory a read can take.
    """
    _check_member_safe(info, path, cfg)
    return zf.read(info)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def decode_image_clip(
    images: list[bytes], image_size: int, max_pixels: int = 50_000_000
) -> tuple[torch.Tensor, list[int]]:
    """Encoded images (JPEG, PNG, ...) -> uint8 ``[n, 3, S, S]`` and the positions that could not be decoded.

    The same resize as the frame sources (shorter side to ``image_size``, centre crop, bicubic; the JPEG
    decoder's draft mode first), for callers that receive image bytes instead of a zip, such as the inference
    server. An image is refused before its pixels are decoded when its header claims more than ``max_pixels``
    (a small file can announce a huge image). ``n`` counts the decodable images only.
    """
    decoded, failed = [], []
    for position, data in enumerate(images):
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > max_pixels:
                    raise ValueError(f"{image.width}x{image.height} pixels")
                image.draft("RGB", (image_size, image_size))
                decoded.append(np.asarray(fit_image(image, image_size)))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            failed.append(position)
    if not decoded:
        return torch.zeros((0, 3, image_size, image_size), dtype=torch.uint8), failed
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).contiguous(), failed
