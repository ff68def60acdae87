#!/usr/bin/env bash
# CPU inference: int8 (issue #20). Builds a random-init PRESET model folder and a synthetic test split (224 px
# JPEGs), exports ONNX FP32, ONNX int8 dynamic and ONNX int8 static, and times all four side by side with
# `mmcls bench infer --compare` (torch FP32 first: agreement is against it).
#
#   OMP_NUM_THREADS=1 benchmarks/int8_cpu.sh WORK PRESET [bench infer options...]
set -euo pipefail
WORK=${1:?work folder}; PRESET=${2:?preset (tiny, base)}; shift 2
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
"$PY" - "$WORK" "$PRESET" <<'PYTHON'
import argparse, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from deploy_throughput import build_inputs  # random init, nothing downloaded
build_inputs(argparse.Namespace(work=Path(sys.argv[1]), preset=sys.argv[2], num_test=64))
PYTHON
M=$WORK/model_$PRESET D=$WORK/data
[ -e "$WORK/${PRESET}_onnx" ] || "$PY" -m mmcls export "$M" --format onnx --out "$WORK/${PRESET}_onnx"
[ -e "$WORK/${PRESET}_int8_dynamic" ] || "$PY" -m mmcls export "$M" --format onnx --quantize int8 \
    --out "$WORK/${PRESET}_int8_dynamic"
[ -e "$WORK/${PRESET}_int8_static" ] || "$PY" -m mmcls export "$M" --format onnx --quantize int8 \
    --quantize-mode static --data-root "$D" --calibration-split labeled --out "$WORK/${PRESET}_int8_static"
"$PY" -m mmcls bench infer --compare "$M" "$WORK/${PRESET}_onnx" "$WORK/${PRESET}_int8_dynamic" \
    "$WORK/${PRESET}_int8_static" --data-root "$D" --clock cpu "$@"
