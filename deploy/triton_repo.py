"""A Triton model repository for the model ``mmcls`` (Python backend running the mmcls Predictor).

Layout::

    REPO/mmcls/config.pbtxt      inputs title/asr/ocr (BYTES [1]) + frames (BYTES [-1], one JPEG each, optional)
                                 and video (BYTES [1], an encoded video file, optional) or frame_feats
                                 (FP32 [-1, D]); outputs category_id, category_name, lv1_id (BYTES [1]),
                                 probs (FP32 [C]), errors (BYTES [1], a JSON list); dynamic batching
    REPO/mmcls/1/model.py        re-exports mmcls.deploy.triton_model.TritonPythonModel
    REPO/mmcls/1/model/          the model folder or artifact folder it serves (``export --format triton``);
                                 ``mmcls serve`` points at the user's folder instead of copying it
    REPO/mmcls_graph/            with --backend onnx|tensorrt only: the bare graph for Triton's own
                                 ``onnxruntime``/``tensorrt`` backends (tensor inputs as in export.json, no JPEG
                                 decoding or tokenizing), for clients that preprocess themselves. The
                                 nvidia-pytriton wheel ships only the Python backend, so ``mmcls serve`` loads
                                 ``mmcls`` alone; a full Triton (NGC container) loads both.

The Python backend runs in a stub process that imports ``mmcls``: the server needs the Python environment
mmcls is installed in (``mmcls serve`` sets that up; see :mod:`mmcls.deploy.server`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mmcls import names
from mmcls.deploy.artifact import is_artifact, load_assets
from mmcls.deploy.backends import BACKENDS, get_backend
from mmcls.deploy.request_decoder import VideoLimits

MODEL_NAME = names.TRITON_MODEL
MODEL_PY = '''"""Triton Python-backend entry point written by mmcls; the model lives in mmcls.deploy.triton_model."""

from mmcls.deploy.triton_model import TritonPythonModel  # noqa: F401
'''


@dataclass
class TritonModelOptions:
    max_batch: int = 64
    # 0: while the instance is busy requests queue anyway and become its next batch; a wait only adds latency
    # (BENCHMARKS.md: tiny, 8 clients, 118 -> 160 videos/s and p50 52 -> 41 ms from 2000 us to 0)
    max_queue_delay_us: int = 0
    instances: int = 1
    backend: str | None = None  # None: torch for a model folder, the artifact's own format otherwise
    device: str = "auto"
    precision: str | None = None
    threads: int | None = None
    decode_threads: int | None = None  # None: the cores of the machine shared out between the instances
    # input ``video``: refused above this many bytes or seconds (mmcls.deploy.request_decoder.VideoLimits)
    max_video_bytes: int = VideoLimits.max_bytes
    max_video_seconds: float = VideoLimits.max_seconds


def write_triton_repository(
    model: str | Path,
    repo: Path,
    *,
    backend: str = "torch",
    fp16: bool = False,
    device: str = "cpu",
    options: TritonModelOptions | None = None,
) -> Path:
    """``export --format triton``: a self-contained repository with the model (exported for ``backend``) inside."""
    from mmcls.models.model_dir import resolve_model_dir

    options = options or TritonModelOptions()
    record = get_backend(backend)
    version_dir = repo / MODEL_NAME / "1"
    version_dir.mkdir(parents=True)
    inner = version_dir / "model"
    if not record.exportable:
        shutil.copytree(resolve_model_dir(model), inner)
    else:
        from mmcls.deploy.export import export_model

        export_model(model, inner, backend, fp16=fp16, device=device, max_batch=options.max_batch)
    options.backend = backend
    options.device = device
    write_model_config(repo, Path("model"), options)
    if record.triton_platform is not None:
        write_graph_model(repo, inner, backend, options)
    return repo


_TRITON_TYPES = {"int64": "TYPE_INT64", "uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "bool": "TYPE_BOOL"}


def write_graph_model(repo: Path, artifact: Path, backend: str, options: TritonModelOptions) -> None:
    """``mmcls_graph``: the exported graph as a model of Triton's native backend (see the module docstring)."""
    assets = load_assets(artifact)
    info = assets.export_info
    assert info is not None, f"{artifact}: not an exported artifact"  # callers pass `mmcls export` folders
    platform, filename = BACKENDS[backend].triton_platform, BACKENDS[backend].model_file
    version_dir = repo / names.TRITON_GRAPH_MODEL / "1"
    version_dir.mkdir(parents=True)
    shutil.copy2(artifact / filename, version_dir / filename)

    def entries(specs: dict) -> str:
        rows = []
        for name, spec in specs.items():
            dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in spec["shape"][1:])
            rows.append(_entry(name, _TRITON_TYPES[spec["dtype"]], dims))
        return ",\n".join(rows)

    text = f"""# Written by mmcls: the bare exported graph (inputs/outputs as in export.json of {MODEL_NAME}/1/model).
name: "{names.TRITON_GRAPH_MODEL}"
platform: "{platform}"
max_batch_size: {options.max_batch}
dynamic_batching {{ max_queue_delay_microseconds: {options.max_queue_delay_us} }}
input [
{entries(info["inputs"])}
]
output [
{entries(info["outputs"])}
]
"""
    (repo / names.TRITON_GRAPH_MODEL / "config.pbtxt").write_text(text, encoding="utf-8")


def write_model_config(repo: Path, model_path: Path, options: TritonModelOptions) -> None:
    """``config.pbtxt`` + ``1/model.py`` for serving ``model_path`` (relative: inside the version folder)."""
    version_dir = repo / MODEL_NAME / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.py").write_text(MODEL_PY, encoding="utf-8")
    source = model_path if model_path.is_absolute() else version_dir / model_path
    assets = load_assets(source)
    (repo / MODEL_NAME / "config.pbtxt").write_text(model_config_text(assets, model_path, options), "utf-8")


def model_config_text(assets, model_path: Path, options: TritonModelOptions) -> str:
    frames = assets.config.data.frames
    if assets.frame_input == "features":
        frame_input = _entry(names.SERVED_FRAME_FEATS, "TYPE_FP32", f"-1, {frames.feature_dim}")
    else:  # JPEG frames or one encoded video file: either may be left out
        frame_input = ",\n".join(
            [
                _entry(names.SERVED_FRAMES, "TYPE_STRING", "-1", optional=True),
                _entry(names.SERVED_VIDEO, "TYPE_STRING", "1", optional=True),
            ]
        )
    inputs = [*(_entry(name, "TYPE_STRING", "1") for name in names.SERVED_TEXT_INPUTS), frame_input]
    outputs = [
        _entry(names.SERVED_CATEGORY_ID, "TYPE_STRING", "1"),
        _entry(names.SERVED_CATEGORY_NAME, "TYPE_STRING", "1"),
        _entry(names.SERVED_LV1_ID, "TYPE_STRING", "1"),
        _entry(names.SERVED_PROBS, "TYPE_FP32", str(assets.config.model.num_classes)),
        _entry(names.SERVED_ERRORS, "TYPE_STRING", "1"),
    ]
    if assets.config.data.task == "multilabel":  # the tags above the thresholds: as many as there are
        outputs += [_entry(name, "TYPE_STRING", "-1") for name in names.SERVED_TAG_OUTPUTS]
    input_list, output_list = ",\n".join(inputs), ",\n".join(outputs)
    params = {
        "mmcls_model": str(model_path),
        "backend": options.backend or "",
        "device": options.device,
        "precision": options.precision or "",
        "threads": str(options.threads or ""),
        "decode_threads": str(options.decode_threads or ""),
        "max_frames": str(frames.max_frames),
        "frame_input": assets.frame_input,
        "max_video_bytes": str(options.max_video_bytes),
        "max_video_seconds": str(options.max_video_seconds),
    }
    parameters = "\n".join(
        f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}' for key, value in params.items()
    )
    kind = "KIND_GPU" if options.device == "cuda" else "KIND_CPU"
    return f"""# Written by mmcls (mmcls.deploy.triton_repo). Python backend running the mmcls Predictor.
name: "{MODEL_NAME}"
backend: "python"
max_batch_size: {options.max_batch}
dynamic_batching {{
  max_queue_delay_microseconds: {options.max_queue_delay_us}
}}
input [
{input_list}
]
output [
{output_list}
]
instance_group [ {{ kind: {kind} count: {options.instances} }} ]
{parameters}
"""


def _entry(name: str, data_type: str, dims: str, *, optional: bool = False) -> str:
    """One tensor of a ``config.pbtxt`` input/output list (an ``optional`` input may be left out of a request)."""
    flag = " optional: true" if optional else ""
    return f'  {{ name: "{name}" data_type: {data_type} dims: [ {dims} ]{flag} }}'


def describe(model: str | Path) -> str:
    """One line for logs: what is served."""
    kind = "artifact" if is_artifact(model) else "model folder"
    return f"{kind} {model}"
