"""``mmcls export MODEL_DIR --format onnx|aoti|tensorrt|triton --out ARTIFACT_DIR [--fp16 | --quantize int8]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmcls import names
from mmcls.cli.options import add_device_option, logit_adjust_value, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="compile a model folder into an artifact folder (ONNX, AOTInductor, TensorRT, Triton repository)",
        epilog="example: mmcls export runs/tiny --format onnx --out artifacts/tiny-onnx",
    )
    p.add_argument("model_dir", type=Path, help="a model folder, or a run directory (its best model)")
    p.add_argument("--format", required=True, choices=names.EXPORT_FORMATS, dest="fmt")
    p.add_argument("--out", type=Path, required=True, help="artifact folder to create (must not exist)")
    p.add_argument("--fp16", action="store_true", help="FP16 weights and arithmetic (outputs stay FP32)")
    add_device_option(p, default="cpu", help="where an AOTI/TensorRT artifact will run", auto=False)
    p.add_argument(
        "--max-batch", type=positive_int, default=64, help="largest batch of a TensorRT profile / Triton"
    )
    p.add_argument(
        "--backend",
        default=None,
        choices=names.BACKENDS,
        help="--format triton: the runtime inside the Triton model (default torch)",
    )
    q = p.add_argument_group("int8 quantization (--format onnx)")
    q.add_argument(
        "--quantize",
        default=None,
        choices=names.QUANTIZE_PRECISIONS,
        help="int8 weights (ONNX Runtime's quantizer)",
    )
    q.add_argument(
        "--quantize-mode",
        default="dynamic",
        choices=names.QUANTIZE_MODES,
        help="dynamic: int8 MatMul/Gemm weights, no data; static: calibrated QDQ (needs --data-root)",
    )
    q.add_argument("--data-root", type=Path, default=None, help="static: the calibration videos' data root")
    q.add_argument(
        "--calibration-split", default=None, help="static: annotation split to calibrate on (default: train)"
    )
    q.add_argument(
        "--calibration-size",
        type=positive_int,
        default=None,
        help="static: videos to calibrate on (default 256)",
    )
    p.add_argument(
        "--logit-adjust",
        type=logit_adjust_value,
        default="auto",
        metavar="TAU",
        help="bake -TAU * log prior (the training split's class counts) into the classifier bias: the "
        "artifact predicts as `mmcls predict --logit-adjust TAU` does. Default auto: the TAU the training run "
        "chose on validation (0 for folders without one); 0: none",
    )
    return p


def run(args: argparse.Namespace) -> int:
    import json

    from mmcls.deploy.export import export_model
    from mmcls.output_guard import check_outputs, model_inputs

    check_outputs([("--out", args.out)], model_inputs(args.model_dir))
    if args.device == "cuda":
        import torch

        from mmcls.config import ConfigError

        if not torch.cuda.is_available():
            raise ConfigError(
                "--device cuda: no CUDA device is visible; export with --device cpu (or on a GPU)"
            )

    out = export_model(
        args.model_dir,
        args.out,
        args.fmt,
        fp16=args.fp16,
        device=args.device,
        max_batch=args.max_batch,
        backend=args.backend,
        quantize=args.quantize,
        quantize_mode=args.quantize_mode,
        data_root=args.data_root,
        calibration_split=args.calibration_split,
        calibration_size=args.calibration_size,
        logit_adjust=args.logit_adjust,
    )
    info = out / names.EXPORT_FILE
    summary = json.loads(info.read_text()) if info.is_file() else {"format": args.fmt}
    quantization = summary.get("quantization") or {}
    mode = f", {quantization['mode']}" if quantization else ""
    print(f"wrote {summary['format']} artifact ({summary.get('precision', '')}{mode}) to {out}")
    return 0
