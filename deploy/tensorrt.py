"""TensorRT: an engine built from the exported ONNX file, and a runtime that binds the named inputs/outputs.

Written against TensorRT 10's documented Python API (``trt.Builder``, ``OnnxParser``, ``BuilderFlag.FP16``,
one optimization profile, a timing cache, ``execute_async_v3`` with tensor addresses). TensorRT's libraries
are not installable on the project's CI machines, so the engine path is NOT run in CI: only the parts before
it (the ONNX it parses, the profile shapes, the error when ``tensorrt`` is missing) are tested there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcls import names
from mmcls.deploy.artifact import ArtifactError
from mmcls.deploy.backends import BACKENDS
from mmcls.deploy.predictor import Backend
from mmcls.errors import MmclsError

logger = logging.getLogger(__name__)
TIMING_CACHE_FILE = "timing.cache"
_TORCH_DTYPES = {"int64": torch.long, "uint8": torch.uint8, "float32": torch.float32, "bool": torch.bool}


class TensorRTUnavailable(MmclsError, ImportError):
    """The ``tensorrt`` package (and its libnvinfer libraries) is not importable here."""


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise TensorRTUnavailable(
            f"TensorRT is not available ({exc}): install NVIDIA TensorRT 10 for your CUDA version "
            "(pip install tensorrt, which needs libnvinfer.so and libnvonnxparser.so) on a machine with an "
            "NVIDIA GPU, or use --format onnx / aoti"
        ) from None
    return trt


def profile_shapes(
    dims: Mapping[str, tuple[int, int]], frame_input: str, config: Any, opt_batch: int | None = None
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``input -> (min, opt, max)`` shapes of the one optimization profile.

    Batch, text and frames take their ranges from the export's dynamic dimensions; ``opt`` is tuned for full
    clips and full text (what the data path produces) at ``opt_batch`` (default: half the maximum batch).
    """
    (b_min, b_max), (l_min, l_max), (t_min, t_max) = dims["batch"], dims["text"], dims["frames"]
    b_opt = opt_batch or max(1, b_max // 2)
    t_opt = min(config.data.frames.max_frames, t_max)
    frames = config.data.frames
    item = (3, frames.image_size, frames.image_size) if frame_input == "pixels" else (frames.feature_dim,)
    text = ((b_min, l_min), (b_opt, l_max), (b_max, l_max))
    mask = ((b_min, t_min), (b_opt, t_opt), (b_max, t_max))
    return {
        names.INPUT_IDS: text,
        names.ATTENTION_MASK: text,
        names.FRAMES: (mask[0] + item, mask[1] + item, mask[2] + item),
        names.FRAME_MASK: mask,
    }


def export_tensorrt_file(
    graph: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    dims: Mapping[str, tuple[int, int]],
    folder: Path,
    *,
    fp16: bool,
    frame_input: str,
    config: Any,
) -> None:
    """The ``tensorrt`` backend's export: the ONNX graph (kept beside it), then the engine built from it."""
    from mmcls.deploy.export import export_onnx

    import_tensorrt()  # before the ONNX export: a missing TensorRT is reported in a second, not a minute
    onnx_path = folder / BACKENDS["onnx"].model_file
    export_onnx(graph, example, dims, onnx_path)
    plan_path = folder / BACKENDS["tensorrt"].model_file
    build_engine(onnx_path, plan_path, dims, fp16=fp16, frame_input=frame_input, config=config)


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    dims: Mapping[str, tuple[int, int]],
    *,
    fp16: bool,
    frame_input: str,
    config: Any,
    timing_cache: Path | None = None,
    workspace_bytes: int = 4 << 30,
) -> None:
    """Parse ``onnx_path``, build a serialized engine into ``plan_path`` (+ the timing cache next to it)."""
    trt = import_tensorrt()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        problems = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"{onnx_path}: TensorRT could not parse the ONNX graph: {problems}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        builder_config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(dims, frame_input, config).items():
        profile.set_shape(name, low, opt, high)
    builder_config.add_optimization_profile(profile)
    cache_path = timing_cache or plan_path.with_name(TIMING_CACHE_FILE)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = builder_config.create_timing_cache(cache_bytes)
    builder_config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise ArtifactError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    plan_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(builder_config.get_timing_cache().serialize()))


class TensorRTBackend(Backend):
    """Runs a ``model.plan`` on CUDA: named input shapes and device addresses, one stream."""

    def __init__(
        self, path: Path, device: torch.device, info: dict[str, Any], *, precision: str, threads: int | None
    ):
        trt = import_tensorrt()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{path}: not an engine for this TensorRT version/GPU; export it again here")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=device)
        self.dtypes = {name: _TORCH_DTYPES[spec["dtype"]] for name, spec in info["inputs"].items()}
        self.device = device

    @torch.no_grad()
    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        with torch.cuda.stream(self.stream):
            bound = {}
            for name in names.MODEL_INPUTS:
                tensor = inputs[name].to(self.device, self.dtypes[name], non_blocking=True).contiguous()
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
                bound[name] = tensor  # keep alive until the engine has run
            outputs = {}
            for name in names.GRAPH_OUTPUTS:
                shape = tuple(self.context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=torch.float32, device=self.device)
                self.context.set_tensor_address(name, outputs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (see its log)")
        self.stream.synchronize()
        probs, lv1 = (outputs[name].cpu().numpy() for name in names.GRAPH_OUTPUTS)
        return probs, lv1
