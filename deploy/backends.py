"""The inference backends: one :class:`BackendInfo` record per backend, and nothing else to edit elsewhere.

``mmcls export --format``, ``predict``/``bench``/``serve --backend``, the artifact check (``export.json``'s
format and model file), the :class:`~mmcls.deploy.predictor.Predictor`'s runtime dispatch and the Triton
repository writer all read :data:`BACKENDS`. Importing this module is cheap: exporters and runtimes are named
by ``"module:attribute"`` paths and imported only when :meth:`BackendInfo.exporter`/:meth:`BackendInfo.runtime`
are called.

Adding a backend ``xyz`` = one new file + one line here:

1. ``deploy/xyz.py`` with an export function ``export_xyz(graph, example, dims, folder, *, fp16, frame_input,
   config)`` that writes ``folder / model_file`` (see :func:`mmcls.deploy.export.export_onnx_file`), and a
   runtime class ``XyzBackend(path, device, info, *, precision, threads)`` subclassing
   :class:`mmcls.deploy.predictor.Backend` (``__call__(batch) -> (probs, lv1_probs)`` as NumPy arrays);
2. a ``BackendInfo("xyz", ...)`` line in :data:`BACKENDS` below, and ``"xyz"`` added to
   :data:`mmcls.names.Backend`, the import-free name list the CLI takes its ``choices`` from (a test checks
   that both list the same names).

A backend that can run int8 (``mmcls export --quantize int8``) lists ``"int8"`` in its precisions and names a
quantizer ``quantize_xyz(model_path, plan, assets, info) -> dict`` that rewrites the exported FP32 model file
in place and returns ``export.json``'s ``quantization`` entry (see :mod:`mmcls.deploy.quantize`). int8 is a
precision, not a backend: the artifact keeps its model file, inputs, outputs and runtime.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from mmcls import names


@dataclass(frozen=True)
class BackendInfo:
    """What mmcls needs to know about one inference backend.

    ``precisions``: what it runs (``--precision``; an exported backend runs the precision fixed at export,
    ``--fp16`` or not). ``cpu_precisions``: the subset it runs on the CPU. ``devices``: the device types it
    runs on. ``triton_platform``: Triton's native backend that can serve the bare exported graph beside the
    Python-backend model (``mmcls_graph``), None where there is none. ``quantize_path``: the int8 quantizer of
    the exported model file (``export --quantize int8``), None where the backend has no int8 path.
    """

    name: str
    model_file: str  # in the artifact folder (torch: the weights file of a model folder)
    runtime_path: str  # "module:attribute" of the runtime class (a Backend subclass)
    export_path: str | None = None  # "module:attribute" of the export function; None: runs the model folder
    precisions: tuple[str, ...] = ("fp32", "fp16")
    cpu_precisions: tuple[str, ...] = ("fp32", "fp16")
    devices: tuple[str, ...] = ("cpu", "cuda")
    triton_platform: str | None = None
    cpu_hint: str = ""  # what to use instead of a precision this backend cannot run on the CPU
    quantize_path: str | None = None  # "module:attribute" of the int8 quantizer; None: no int8 export
    quantize_hint: str = ""  # why there is no int8 export, for the error of --quantize

    @property
    def exportable(self) -> bool:
        return self.export_path is not None

    def exporter(self) -> Any:
        """The export function (imported now)."""
        if self.export_path is None:
            raise ValueError(f"the {self.name} backend runs a model folder; it has no export")
        return _load(self.export_path)

    def runtime(self) -> Any:
        """The runtime class (imported now)."""
        return _load(self.runtime_path)

    def quantizer(self) -> Any:
        """The int8 quantizer (imported now); an ArtifactError naming the backends that have one."""
        if self.quantize_path is None:
            from mmcls.deploy.artifact import ArtifactError

            able = [info.name for info in BACKENDS.values() if info.quantize_path]
            raise ArtifactError(
                f"--quantize with --format {self.name}: no int8 export for this backend{self.quantize_hint}; "
                f"use --format {' or '.join(able)}"
            )
        return _load(self.quantize_path)

    def precision_problem(self, precision: str, device_type: str) -> str | None:
        """Why ``precision`` cannot run on ``device_type`` with this backend, or None."""
        if precision not in self.precisions:
            return f"--precision {precision}: the {self.name} backend runs {', '.join(self.precisions)}"
        if device_type == "cpu" and precision not in self.cpu_precisions:
            return (
                f"--precision {precision} with the {self.name} backend needs CUDA; on the CPU use "
                f"{' or '.join(self.cpu_precisions)}{self.cpu_hint}"
            )
        return None


BACKENDS: dict[str, BackendInfo] = {
    info.name: info
    for info in (
        BackendInfo(
            "torch",
            names.WEIGHTS_FILE,
            "mmcls.deploy.predictor:TorchBackend",
            precisions=("fp32", "bf16", "fp16"),
            cpu_precisions=("bf16", "fp32"),
            cpu_hint=", or an FP16 ONNX export (mmcls export --format onnx --fp16)",
        ),
        BackendInfo(
            "onnx",
            "model.onnx",
            "mmcls.deploy.predictor:OnnxBackend",
            "mmcls.deploy.export:export_onnx_file",
            # int8: ONNX Runtime's quantizer (dynamic or calibrated QDQ), run by the same CPU/CUDA session.
            precisions=("fp32", "fp16", "int8"),
            cpu_precisions=("fp32", "fp16", "int8"),
            triton_platform="onnxruntime_onnx",
            quantize_path="mmcls.deploy.quantize:quantize_onnx_file",
        ),
        BackendInfo(
            "aoti",
            "model.pt2",
            "mmcls.deploy.predictor:AotiBackend",
            "mmcls.deploy.export:export_aoti_file",
            # torch's PT2E int8 quantizer left torch.ao for torchao (absent from torch 2.14), not a dependency.
            quantize_hint=" (torch.ao has no PT2E int8 quantizer in this torch; it moved to torchao)",
        ),
        BackendInfo(
            "tensorrt",
            "model.plan",
            "mmcls.deploy.tensorrt:TensorRTBackend",
            "mmcls.deploy.tensorrt:export_tensorrt_file",
            devices=("cuda",),
            cpu_precisions=(),
            triton_platform="tensorrt_plan",
        ),
    )
}

#: Backends with an export step, by name: ``export --format`` takes these (and ``triton``).
EXPORTABLE: dict[str, BackendInfo] = {name: info for name, info in BACKENDS.items() if info.exportable}

assert tuple(BACKENDS) == names.BACKENDS, (
    "mmcls.names.Backend and deploy/backends.py must list the same backends"
)
assert (*EXPORTABLE, names.TRITON_FORMAT) == names.EXPORT_FORMATS, (
    "exportable backends differ from EXPORT_FORMATS"
)


def get_backend(name: str) -> BackendInfo:
    """The record of ``name``; an ArtifactError naming the choices for an unknown one."""
    from mmcls.deploy.artifact import ArtifactError

    try:
        return BACKENDS[name]
    except KeyError:
        raise ArtifactError(f"--backend {name!r}: use one of {names.BACKENDS}") from None


def _load(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
