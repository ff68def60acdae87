"""``mmcls export``: a model folder -> an artifact folder (ONNX, AOTInductor, TensorRT engine, Triton repository).

Every format compiles the same function, :class:`InferenceGraph`: the four named model inputs -> level-2
probabilities ``probs`` and level-1 probabilities ``lv1_probs``. Softmax and the level-1 sums are inside the
graph, so every runtime returns what ``predict`` writes, and FP16 graphs still return FP32 probabilities.

Dimensions kept dynamic: ``batch``, ``text`` (token count) and ``frames`` (frame count). Their example sizes are
all >= 2 because ``torch.export`` specialises a dimension traced at size 1.

Two options change the compiled model itself, and ``export.json`` says so: ``--quantize int8`` (the backend's
int8 quantizer, :mod:`mmcls.deploy.quantize`; ``quantization``) and ``--logit-adjust TAU`` (``-TAU * log prior``
folded into the classifier bias, the prior being the model folder's training-split class counts, exactly as
``mmcls predict --logit-adjust TAU`` adjusts; ``logit_adjust``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from mmcls import names
from mmcls.data.categories import CategoryMap
from mmcls.deploy.artifact import ArtifactError, Assets, build_export_info
from mmcls.deploy.backends import BACKENDS, EXPORTABLE
from mmcls.models.fusion import MultimodalClassifier, lv1_probs

if TYPE_CHECKING:
    from mmcls.deploy.quantize import QuantizePlan

logger = logging.getLogger(__name__)

FORMATS = names.EXPORT_FORMATS
ONNX_OPSET = 18


class InferenceGraph(nn.Module):
    """What is exported: ``(input_ids, attention_mask, frames, frame_mask) -> (probs, lv1_probs)``, both FP32.

    ``multilabel`` (a tagging model, ``data.task: multilabel``): ``probs`` are per-class sigmoids and
    ``lv1_probs`` the highest of them in each label dimension (level-1 group).
    """

    def __init__(self, model: MultimodalClassifier, categories: CategoryMap, multilabel: bool = False):
        super().__init__()
        self.model = model
        self.categories = categories
        self.multilabel = multilabel

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(input_ids, attention_mask, frames, frame_mask)[names.LOGITS].float()
        if self.multilabel:
            probs = logits.sigmoid()
            matrix = torch.as_tensor(self.categories.lv2_to_lv1_matrix(), device=probs.device)
            return probs, (probs.unsqueeze(2) * matrix).amax(dim=1)
        return logits.softmax(dim=-1), lv1_probs(logits, self.categories)


def export_model(
    model_dir: str | Path,
    out: str | Path,
    fmt: str,
    *,
    fp16: bool = False,
    device: str = "cpu",
    max_batch: int = 64,
    backend: str | None = None,
    quantize: str | None = None,
    quantize_mode: str = "dynamic",
    data_root: str | Path | None = None,
    calibration_split: str | None = None,
    calibration_size: int | None = None,
    logit_adjust: float | str = "auto",
) -> Path:
    """Write the artifact folder ``out`` for ``model_dir`` in ``fmt``; returns ``out``.

    ``out`` must not exist or be empty: a user's files are never overwritten. The folder is assembled under a
    temporary name next to ``out`` and renamed at the end, so a failed export leaves nothing half-written.
    ``backend`` is for ``fmt="triton"``: which runtime the Triton model runs (default: torch).
    ``quantize`` (``int8``), ``quantize_mode`` and the calibration settings: see :mod:`mmcls.deploy.quantize`;
    they are checked, and the calibration split read, before anything is loaded or traced.
    ``logit_adjust``: TAU of the logit adjustment baked into the classifier bias (``auto``: the one the
    training run chose, if any; 0: none).
    """
    from mmcls.models import load_model_dir

    if fmt not in FORMATS:
        raise ArtifactError(f"--format {fmt!r}: use one of {FORMATS}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArtifactError(f"{out}: already exists and is not an empty folder; choose a new --out")
    if fmt == names.TRITON_FORMAT and (quantize or logit_adjust not in ("auto", 0)):
        raise ArtifactError(
            "--quantize/--logit-adjust: not with --format triton; export --format onnx with them, then "
            "`mmcls serve` the artifact"
        )
    plan = None
    if quantize is not None:
        plan = _plan_quantization(
            model_dir, fmt, quantize, quantize_mode, fp16, data_root, calibration_split, calibration_size
        )
    elif (quantize_mode, calibration_split, calibration_size) != ("dynamic", None, None):
        raise ArtifactError(
            "--quantize-mode/--calibration-split/--calibration-size: only with --quantize int8"
        )
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if fmt == names.TRITON_FORMAT:
            from mmcls.deploy.triton_repo import write_triton_repository

            write_triton_repository(model_dir, tmp, backend=backend or "torch", fp16=fp16, device=device)
        else:
            loaded = load_model_dir(model_dir, device="cpu")
            _export_into(
                loaded,
                tmp,
                fmt,
                fp16=fp16,
                device=device,
                max_batch=max_batch,
                plan=plan,
                logit_adjust=logit_adjust,
            )
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _plan_quantization(
    model_dir, fmt: str, quantize: str, mode: str, fp16: bool, data_root, split, size
) -> QuantizePlan:
    """The checked ``--quantize`` settings with the calibration records (read from the model's own config)."""
    from mmcls.deploy.artifact import load_assets
    from mmcls.deploy.quantize import plan_quantization

    record = EXPORTABLE[fmt]
    record.quantizer()  # no int8 path for this format: the error names the ones that have one
    if fp16:
        raise ArtifactError("--quantize int8 and --fp16: choose one precision")
    assets = load_assets(model_dir)
    return plan_quantization(
        quantize,
        mode,
        config=assets.config,
        categories=assets.categories,
        data_root=data_root,
        split=split,
        size=size,
    )


def export_tau(loaded, logit_adjust: float | str) -> float:
    """The TAU an artifact bakes in: ``auto`` = the one the model folder's training run chose on validation
    (``mmcls.engine.tau``; 0 for folders without one, and for tagging models, whose thresholds decide); else
    the number given (refused for a tagging model)."""
    from mmcls.engine.tau import saved_tau
    from mmcls.inference.predict import LogitAdjustError

    multilabel = loaded.config.data.task == "multilabel"
    if logit_adjust == "auto":
        return 0.0 if multilabel else saved_tau(loaded.path)
    if multilabel and float(logit_adjust):
        raise LogitAdjustError("--logit-adjust: single-label only; this model tags (data.task=multilabel)")
    return float(logit_adjust)


def bake_logit_adjustment(loaded, tau: float) -> None:
    """Fold ``-tau * log prior`` into the fused classifier's bias (``mmcls predict --logit-adjust`` in the graph).

    The prior is :func:`mmcls.engine.losses.log_prior` of the model folder's ``train_counts`` and the shift is
    :func:`~mmcls.engine.losses.adjust_logits`, the functions ``predict`` applies to its log-probabilities
    (they equal the logits up to a per-row constant, so both give the same softmax and the same labels).
    """
    from mmcls.engine.losses import adjust_logits, log_prior
    from mmcls.inference.predict import LogitAdjustError

    if loaded.train_counts is None:
        raise LogitAdjustError(
            f"--logit-adjust: {loaded.path}/{names.CATEGORIES_FILE} has no train_counts (the training split's "
            "class counts, saved by training); retrain, or export without --logit-adjust"
        )
    linear = loaded.model.classifier[-1]
    if not isinstance(linear, nn.Linear) or linear.bias is None:
        raise ArtifactError(f"{loaded.path}: the classifier has no bias to fold --logit-adjust into")
    bias = linear.bias.detach().double().cpu().numpy()
    adjusted = adjust_logits(bias[None, :], log_prior(loaded.train_counts), float(tau))[0]
    with torch.no_grad():
        linear.bias.copy_(torch.from_numpy(adjusted).to(linear.bias))


def _export_into(
    loaded,
    folder: Path,
    fmt: str,
    *,
    fp16: bool,
    device: str,
    max_batch: int,
    plan: QuantizePlan | None = None,
    logit_adjust: float | str = "auto",
) -> None:
    """Compile ``loaded`` (a :class:`~mmcls.models.model_dir.LoadedModel`) into ``folder`` with its assets."""
    config = loaded.config
    if config.data.frames.source == "none":
        raise ArtifactError(f"{loaded.path}: text-only models (data.frames.source=none) are not exportable")
    if fmt == "aoti" and config.model.frame_aggregator in ("lstm", "gru"):
        # torch.export cannot trace nn.LSTM/GRU over a dynamic frame axis (the ONNX exporter maps them to ops).
        raise ArtifactError(
            f"{loaded.path}: model.frame_aggregator={config.model.frame_aggregator} cannot be exported as aoti; "
            "use --format onnx"
        )
    tau = export_tau(loaded, logit_adjust)
    if tau:
        bake_logit_adjustment(loaded, tau)
    frame_input = "features" if config.model.frame_encoder.type == "identity" else "pixels"
    torch_device = torch.device(device)
    model = loaded.model.to(torch_device)
    if fp16:
        model = model.half()
    graph = InferenceGraph(model, loaded.categories, config.data.task == "multilabel").eval()
    example = example_inputs(config, frame_input, torch_device)
    dims = dynamic_dims(config, max_batch)
    backend = EXPORTABLE[fmt]
    export = backend.exporter()
    export(graph, example, dims, folder, fp16=fp16, frame_input=frame_input, config=config)
    precision = "fp16" if fp16 else "fp32"
    info = build_export_info(
        config,
        fmt=fmt,
        precision=precision,
        model_file=backend.model_file,
        device=torch_device.type,
        frame_input=frame_input,
        dynamic_dims=dims,
        num_lv1=loaded.categories.num_lv1,
    )
    info["quantization"] = None
    if plan is not None:
        assets = Assets(loaded.path, config, loaded.tokenizer, loaded.categories, export_info=None)
        info["quantization"] = backend.quantizer()(folder / backend.model_file, plan, assets, info)
        info["precision"] = plan.precision
    info["logit_adjust"] = (
        {
            "tau": tau,
            "chosen_by": "the training run (validation mean_f1)"
            if logit_adjust == "auto"
            else "--logit-adjust",
            "prior": f"train_counts of {names.CATEGORIES_FILE} (add-one smoothed)",
            "baked_into": "classifier bias",
        }
        if tau
        else None
    )
    copy_assets(loaded.path, folder, loaded.tokenizer)
    _write_json(folder / names.EXPORT_FILE, info)


def copy_assets(model_folder: Path, folder: Path, tokenizer) -> None:
    """The preprocessing files of a model folder: config, categories, tokenizer (and a tagging model's
    thresholds)."""
    for name in (names.CONFIG_FILE, names.CATEGORIES_FILE):
        shutil.copy2(model_folder / name, folder / name)
    if (model_folder / names.THRESHOLDS_FILE).is_file():
        shutil.copy2(model_folder / names.THRESHOLDS_FILE, folder / names.THRESHOLDS_FILE)
    tokenizer.save_pretrained(str(folder))


def example_inputs(config, frame_input: str, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with: batch 2, 2..8 tokens, 2 frames (no dimension of size 1, see the module doc)."""
    g = torch.Generator().manual_seed(0)
    batch, text, num_frames = 2, max(2, min(8, config.data.text.max_length)), 2
    vocab = 100  # any ids below the vocabulary size
    input_ids = torch.randint(1, vocab, (batch, text), generator=g)
    attention_mask = torch.ones(batch, text, dtype=torch.long)
    frames_cfg = config.data.frames
    if frame_input == "pixels":
        size = frames_cfg.image_size
        frames = torch.randint(0, 256, (batch, num_frames, 3, size, size), generator=g, dtype=torch.uint8)
    else:
        frames = torch.randn(batch, num_frames, frames_cfg.feature_dim, generator=g)
    frame_mask = torch.ones(batch, num_frames, dtype=torch.bool)
    return tuple(t.to(device) for t in (input_ids, attention_mask, frames, frame_mask))


def dynamic_dims(config, max_batch: int) -> dict[str, tuple[int, int]]:
    """``name -> (min, max)`` for batch, text and frames: what the graph (and a TensorRT profile) accepts."""
    return {
        "batch": (1, max(2, max_batch)),
        "text": (1, config.data.text.max_length),
        "frames": (1, config.model.max_frames),
    }


def _torch_dynamic_shapes(dims: Mapping[str, tuple[int, int]]) -> dict[str, dict[int, object]]:
    # Batch gets no upper bound in the graph itself (ONNX/AOTI need none); TensorRT's profile uses the max.
    batch = torch.export.Dim("batch", min=1)
    text = torch.export.Dim("text", min=1, max=dims["text"][1])
    frames = torch.export.Dim("frames", min=1, max=dims["frames"][1])
    return {
        names.INPUT_IDS: {0: batch, 1: text},
        names.ATTENTION_MASK: {0: batch, 1: text},
        names.FRAMES: {0: batch, 1: frames},
        names.FRAME_MASK: {0: batch, 1: frames},
    }


def export_onnx(
    graph: nn.Module, example: tuple[torch.Tensor, ...], dims: Mapping[str, tuple[int, int]], path: Path
) -> None:
    """``torch.onnx.export(dynamo=True)`` with named inputs/outputs and dynamic dims; checked with onnx.checker.

    The dynamo exporter keeps the frame count dynamic (the legacy TorchScript exporter baked it into a Reshape).
    """
    import onnx

    program = torch.onnx.export(
        graph,
        example,
        input_names=list(names.MODEL_INPUTS),
        output_names=list(names.GRAPH_OUTPUTS),
        dynamic_shapes=_torch_dynamic_shapes(dims),
        dynamo=True,
        opset_version=ONNX_OPSET,
        verbose=False,
    )
    assert program is not None  # dynamo=True always returns the ONNXProgram (None is the legacy exporter's)
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)


def export_aoti(
    graph: nn.Module, example: tuple[torch.Tensor, ...], dims: dict[str, tuple[int, int]], path: Path
) -> None:
    """``torch.export`` + ``aoti_compile_and_package``: a ``.pt2`` for the device the example lives on."""
    from torch._inductor import aoti_compile_and_package

    with torch.no_grad():
        program = torch.export.export(graph, example, dynamic_shapes=_torch_dynamic_shapes(dims))
        aoti_compile_and_package(program, package_path=str(path))


def export_onnx_file(
    graph: nn.Module,
    example: tuple[torch.Tensor, ...],
    dims: dict[str, tuple[int, int]],
    folder: Path,
    **_options: object,
) -> None:
    """The ``onnx`` backend's export (see :mod:`mmcls.deploy.backends` for the signature)."""
    export_onnx(graph, example, dims, folder / BACKENDS["onnx"].model_file)


def export_aoti_file(
    graph: nn.Module,
    example: tuple[torch.Tensor, ...],
    dims: dict[str, tuple[int, int]],
    folder: Path,
    *,
    fp16: bool,
    **_options: object,
) -> None:
    """The ``aoti`` backend's export, for the device the example lives on."""
    if fp16 and example[0].device.type == "cpu":
        logger.warning("FP16 AOTInductor on the CPU is slow (emulated half arithmetic); meant for CUDA")
    export_aoti(graph, example, dims, folder / BACKENDS["aoti"].model_file)


def _write_json(path: Path, values: dict) -> None:
    import json

    path.write_text(json.dumps(values, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
