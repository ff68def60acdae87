#!/usr/bin/env bash
# CPU inference: int8 (issue #20). Builds a random-init PRESET model folder and a synthetic test split (224 px
# JPEGs), exports ONNX FP32, ONNX int8 dynamic and ONNX int8 static, and times all four side by side with
# `mmcls bench infer --compare` (torch FP32 first: agreement is against it).
#
# The distilled student's rows come from the same run: a random-init copy of PRESET with STUDENT_LAYERS
# (default 2) text/fusion transformer layers, the architecture `train.distill_from` + `model.init_from` produce
# (speed does not depend on the weights), exported ONNX FP32 and int8 dynamic. PRESETs that have no more than
# STUDENT_LAYERS layers (tiny: 2) are their own student, so no student rows are added for them.
#
#   OMP_NUM_THREADS=1 [STUDENT_LAYERS=2] benchmarks/int8_cpu.sh WORK PRESET [bench infer options...]
set -euo pipefail
WORK=${1:?work folder}; PRESET=${2:?preset (tiny, base)}; shift 2
PY=${PY:-.venv/bin/python}
STUDENT_LAYERS=${STUDENT_LAYERS:-2}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
STUDENT=$("$PY" - "$WORK" "$PRESET" "$STUDENT_LAYERS" <<'PYTHON'
import argparse, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from deploy_throughput import build_inputs  # random init, nothing downloaded
work, preset, layers = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
model_dir, _ = build_inputs(argparse.Namespace(work=work, preset=preset, num_test=64))
student = work / f"model_{preset}_student{layers}"
if not student.exists():
    import torch
    from mmcls.config import Config
    from mmcls.data.categories import official_categories
    from mmcls.data.text import load_tokenizer
    from mmcls.models import build_model, save_model_dir
    if Config.from_yaml(model_dir / "config.yaml").model.bert_config["num_hidden_layers"] <= layers:
        sys.exit(0)  # the preset is its own student
    config = Config.from_yaml(model_dir / "config.yaml", [f"model.bert_config.num_hidden_layers={layers}"])
    tokenizer = load_tokenizer("builtin:bert-base-chinese")
    torch.manual_seed(0)
    model = build_model(config, vocab_size=len(tokenizer)).eval()
    save_model_dir(student, model, config, tokenizer, official_categories())
print(student)
PYTHON
)
M=$WORK/model_$PRESET D=$WORK/data
[ -e "$WORK/${PRESET}_onnx" ] || "$PY" -m mmcls export "$M" --format onnx --out "$WORK/${PRESET}_onnx"
[ -e "$WORK/${PRESET}_int8_dynamic" ] || "$PY" -m mmcls export "$M" --format onnx --quantize int8 \
    --out "$WORK/${PRESET}_int8_dynamic"
[ -e "$WORK/${PRESET}_int8_static" ] || "$PY" -m mmcls export "$M" --format onnx --quantize int8 \
    --quantize-mode static --data-root "$D" --calibration-split labeled --out "$WORK/${PRESET}_int8_static"
MODELS=("$M" "$WORK/${PRESET}_onnx" "$WORK/${PRESET}_int8_dynamic" "$WORK/${PRESET}_int8_static")
if [ -n "$STUDENT" ]; then
    S=$WORK/${PRESET}_student${STUDENT_LAYERS}
    [ -e "${S}_onnx" ] || "$PY" -m mmcls export "$STUDENT" --format onnx --out "${S}_onnx"
    [ -e "${S}_int8_dynamic" ] || "$PY" -m mmcls export "$STUDENT" --format onnx --quantize int8 \
        --out "${S}_int8_dynamic"
    MODELS+=("${S}_onnx" "${S}_int8_dynamic")
fi
"$PY" -m mmcls bench infer --compare "${MODELS[@]}" --data-root "$D" --clock cpu "$@"
