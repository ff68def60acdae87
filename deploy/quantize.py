"""``mmcls export --quantize int8``: an int8 ONNX artifact from the FP32 graph, with ONNX Runtime's quantizer.

Two modes (``--quantize-mode``):

* ``dynamic`` (default): :func:`onnxruntime.quantization.quantize_dynamic` stores the weights of every MatMul
  and Gemm (the text/fusion transformer, the ViT's linear layers, the classifier) as int8; activations are
  quantized per batch at run time, so no data is needed and no activation range can be wrong.
* ``static``: :func:`onnxruntime.quantization.quantize_static` in the QDQ format, weights per channel, with the
  activation ranges calibrated on ``--calibration-size`` videos of ``--calibration-split`` of ``--data-root``,
  fed through the model's own eval preprocessing (tokenizer, frame decoding, resizing: the artifact's
  ``config.yaml``). Conv (the ViT's patch embedding), MatMul and Gemm run in int8: the frame encoder's
  convolution only gains with fixed activation scales.

int8 is a *precision* of the ``onnx`` backend (``export.json`` ``precision: int8``), not a backend of its own:
the artifact is still ``model.onnx`` with the same inputs and outputs, run by the same ONNX Runtime session,
so ``predict``, ``bench infer``, ``ensemble`` members and ``serve`` take it unchanged. Which backends can
quantize is a fact of the registry (:attr:`mmcls.deploy.backends.BackendInfo.quantize_path`).

The calibration split is read and checked in :func:`plan_quantization`, before the model is loaded or traced:
a missing or corrupt annotation file is a one-line error that costs nothing.

ONNX Runtime's ``quant_pre_process`` (shape inference and graph optimisation before quantizing, which its
quantizer's warning recommends) is not run: measured (BENCHMARKS.md, "CPU inference: int8"), it quantized the
same operators, left every label of the distilled student unchanged in both modes, gave no speed difference on
``base`` beyond the run-order effect, and added minutes to the export of ``base``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmcls import names
from mmcls.deploy.artifact import ArtifactError

logger = logging.getLogger(__name__)

QUANTIZE_MODES = names.QUANTIZE_MODES
QUANTIZE_PRECISIONS = names.QUANTIZE_PRECISIONS
DEFAULT_CALIBRATION_SIZE = 256
#: The operators each mode quantizes (``op_types_to_quantize``).
DYNAMIC_OPS = ("MatMul", "Gemm")
STATIC_OPS = ("Conv", "MatMul", "Gemm")
#: Operators of a quantized graph that compute in integers (dynamic mode) or read int8 tensors (QDQ).
_INTEGER_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


@dataclass
class QuantizePlan:
    """What ``--quantize`` asks for, checked: the mode and, for ``static``, the calibration records."""

    precision: str
    mode: str
    data_root: Path | None = None
    split: str | None = None
    records: list[Any] = field(default_factory=list)

    def calibration_info(self) -> dict[str, Any] | None:
        """``export.json`` ``quantization.calibration``: where the activation ranges came from (None: dynamic)."""
        if self.mode != "static":
            return None
        return {"data_root": str(self.data_root), "split": self.split, "count": len(self.records)}


def plan_quantization(
    quantize: str,
    mode: str,
    *,
    config: Any,
    categories: Any,
    data_root: str | Path | None,
    split: str | None,
    size: int | None,
) -> QuantizePlan:
    """Check the ``--quantize`` settings and read the calibration records; an ArtifactError names the problem.

    ``config``/``categories`` are the model folder's (the calibration split is read as the model reads data:
    its ``data.annotations``; ``split`` defaults to its ``data.train_split``).
    """
    from mmcls.data.annotations import annotation_path, iter_records

    if quantize not in QUANTIZE_PRECISIONS:
        raise ArtifactError(f"--quantize {quantize!r}: use one of {QUANTIZE_PRECISIONS}")
    if mode not in QUANTIZE_MODES:
        raise ArtifactError(f"--quantize-mode {mode!r}: use one of {QUANTIZE_MODES}")
    if mode == "dynamic":
        if split is not None or size is not None:
            raise ArtifactError(
                "--calibration-split/--calibration-size: only for --quantize-mode static (dynamic "
                "quantization measures activations at run time and reads no data)"
            )
        return QuantizePlan(quantize, mode)
    if data_root is None:
        raise ArtifactError("--quantize-mode static: needs --data-root (the calibration videos' data root)")
    size = DEFAULT_CALIBRATION_SIZE if size is None else size
    if size < 1:
        raise ArtifactError(f"--calibration-size {size}: must be at least 1")
    split = split or config.data.train_split
    path = annotation_path(data_root, split, config.data.annotations)
    if not path.is_file():
        raise ArtifactError(f"{path}: calibration split {split!r} not found (--calibration-split)")
    records = []
    for record in iter_records(path, categories=categories):
        records.append(record)
        if len(records) == size:
            break
    if not records:
        raise ArtifactError(f"{path}: calibration split {split!r} has no records (--calibration-split)")
    return QuantizePlan(quantize, mode, Path(data_root), split, records)


def label_deciding_nodes(model_path: Path) -> list[str]:
    """The nodes static int8 leaves in FP32: the classifier heads' matmuls and what reads the probabilities.

    With activation scales fixed at calibration, the head's matmul turns the pooled features into logits
    whose top two can be a few quantization steps apart. On the test model of ``tests/test_quantize.py`` (the
    tiny preset with its default level-1 loss, whose top classes sit close within their group) keeping these
    in FP32 lowered the largest probability error against FP32 from 0.0099 to 0.0061 and the flipped labels
    from 3 to 2 of 80 (all near-ties, top-two gaps under 0.001). They are a sliver of the compute: one small
    matmul per head, and the level-1 sum of the probabilities (which int8 would only blur).
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    heads = {init.name for init in graph.initializer if "classifier" in init.name}
    return [
        node.name
        for node in graph.node
        if node.op_type in STATIC_OPS and any(name in heads or name == names.PROBS for name in node.input)
    ]


def quantize_onnx_file(model_path: Path, plan: QuantizePlan, assets: Any, info: dict[str, Any]) -> dict:
    """Replace the FP32 ``model_path`` by its int8 version; returns ``export.json``'s ``quantization`` entry.

    ``assets`` (:class:`~mmcls.deploy.artifact.Assets` of the model folder) and ``info`` (the artifact's
    ``export.json`` so far: input dtypes) feed the calibration of the static mode.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    fp32 = model_path.with_name(f"{model_path.stem}.fp32{model_path.suffix}")
    os.replace(model_path, fp32)
    try:
        if plan.mode == "dynamic":
            quantize_dynamic(
                fp32,
                model_path,
                op_types_to_quantize=list(DYNAMIC_OPS),
                per_channel=False,
                weight_type=QuantType.QInt8,
            )
        else:
            quantize_static(
                fp32,
                model_path,
                CalibrationReader(plan, assets, info),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(STATIC_OPS),
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                # The calibration graph reduces each tensor to its min/max per batch: memory stays small for any N.
                extra_options={"WeightSymmetric": True},
                nodes_to_exclude=label_deciding_nodes(fp32),
            )
    finally:
        fp32.unlink(missing_ok=True)
    return {
        "precision": plan.precision,
        "mode": plan.mode,
        "tool": "onnxruntime.quantization",
        "weight_type": "int8",
        "format": "QDQ" if plan.mode == "static" else "dynamic",
        "calibration": plan.calibration_info(),
        "operators": quantized_operators(model_path, STATIC_OPS if plan.mode == "static" else ()),
    }


def quantized_operators(path: Path, qdq_ops: tuple[str, ...] = ()) -> dict[str, int]:
    """``op_type -> count`` of the nodes that compute in int8 in the quantized graph at ``path``.

    Dynamic mode: the integer kernels (``MatMulInteger``, ...). QDQ: the nodes of ``qdq_ops`` fed by a
    ``DequantizeLinear`` (ONNX Runtime fuses each such pattern into its int8 kernel when it loads the graph;
    other nodes next to a QDQ pair still compute in float).
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    counts: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type in _INTEGER_OPS or (node.op_type in qdq_ops and dequantized.intersection(node.input)):
            counts[node.op_type] += 1
    return dict(sorted(counts.items()))


class CalibrationReader:
    """:class:`onnxruntime.quantization.CalibrationDataReader` over the calibration records, one batch each call.

    Batches come from the core's eval loader (``build_dataset`` + ``build_eval_loader`` with the model's own
    config and tokenizer), exactly what ``predict`` feeds the artifact, cast to ``export.json``'s dtypes.
    """

    # Small batches: ONNX Runtime's calibration session keeps every calibrated tensor alive until its min/max
    # is taken, so memory grows with the batch (the base model at 16 videos of 8 x 224 px took 18 GiB).
    BATCH_SIZE = 2

    def __init__(self, plan: QuantizePlan, assets: Any, info: dict[str, Any]):
        self.plan, self.assets = plan, assets
        self.dtypes = {name: np.dtype(spec["dtype"]) for name, spec in info["inputs"].items()}
        self._batches: Iterator[dict[str, np.ndarray]] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = self._feeds()
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = None

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        from mmcls.data.builders import build_dataset, build_eval_loader

        cfg, tokenizer = self.assets.config, self.assets.tokenizer
        # A static plan always names its calibration data (checked when the plan was made).
        assert self.plan.data_root is not None and self.plan.split is not None
        dataset = build_dataset(
            cfg,
            self.plan.data_root,
            self.plan.split,
            self.plan.records,
            tokenizer,
            self.assets.categories,
            train=False,
            on_error="text_only",
        )
        loader = build_eval_loader(dataset, self.BATCH_SIZE, 0, tokenizer.pad_token_id or 0)
        for batch in loader:
            if len(batch["index"]):
                yield {
                    name: np.ascontiguousarray(batch[name].numpy(), dtype=self.dtypes[name])
                    for name in names.MODEL_INPUTS
                }
