#!/usr/bin/env bash
# CPU inference: int8 (issue #20). Builds a random-init PRESET model folder and a synthetic test split (224 px
# JPEGs), exports ONNX FP32, ONNX int8 dynamic and ONNX int8 static, and times all four side by side with
# `mmcls bench infer --compare` (torch FP32 first: agreement is against it).
#
# The distilled student's rows come from the same run: a random-init copy of PRESET with STUDENT_LAYERS
# (default 2) text/fusion transformer layers, the architecture `train.distill_from` + `model.init_from` produce
# (speed does not depend on the weights), exported ONNX FP32 and int8 dynamic. PRESETs that have no more than
# STUDENT_LAYERS layers (tiny: 2) are their own student, so no student rows are added for them.
# STUDENT_VIT_LAYERS (default 4; 0 = none) adds a second student that also keeps only that many of the open_clip
# frame encoder's blocks (`model.frame_encoder.kwargs.vision_cfg.layers`; `model.init_frame_layers` picks which
# of a teacher's): on `base` the ViT over 8 frames is most of the work, so a faster CPU student must cut there.
#
#   OMP_NUM_THREADS=1 [STUDENT_LAYERS=2] [STUDENT_VIT_LAYERS=4] benchmarks/int8_cpu.sh WORK PRESET [bench options]
set -euo pipefail
WORK=${1:?work folder}; PRESET=${2:?preset (tiny, base)}; shift 2
PY=${PY:-.venv/bin/python}
STUDENT_LAYERS=${STUDENT_LAYERS:-2}
STUDENT_VIT_LAYERS=${STUDENT_VIT_LAYERS:-4}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Prints the student model folders to time, one per line (none when the preset is its own student).
STUDENTS=$("$PY" - "$WORK" "$PRESET" "$STUDENT_LAYERS" "$STUDENT_VIT_LAYERS" <<'PYTHON'
import argparse, json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from deploy_throughput import build_inputs  # random init, nothing downloaded
work, preset, layers, vit_layers = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model_dir, _ = build_inputs(argparse.Namespace(work=work, preset=preset, num_test=64))

def student(name: str, settings: list[str]) -> Path:
    folder = work / f"model_{preset}_{name}"
    if not folder.exists():
        import torch
        from mmcls.config import Config
        from mmcls.data.categories import official_categories
        from mmcls.data.text import load_tokenizer
        from mmcls.models import build_model, save_model_dir
        config = Config.from_yaml(model_dir / "config.yaml", settings)
        tokenizer = load_tokenizer("builtin:bert-base-chinese")
        torch.manual_seed(0)
        model = build_model(config, vocab_size=len(tokenizer)).eval()
        save_model_dir(folder, model, config, tokenizer, official_categories())
    return folder

from mmcls.config import Config
teacher = Config.from_yaml(model_dir / "config.yaml").model
if teacher.bert_config["num_hidden_layers"] > layers:
    text = [f"model.bert_config.num_hidden_layers={layers}"]
    print(student(f"student{layers}", text))
    if vit_layers and teacher.frame_encoder.type == "open_clip":
        import open_clip
        vision = dict(open_clip.get_model_config(teacher.frame_encoder.name)["vision_cfg"], layers=vit_layers)
        frames = [f"model.frame_encoder.kwargs={json.dumps({'vision_cfg': vision})}"]
        print(student(f"student{layers}_vit{vit_layers}", text + frames))
PYTHON
)
M=$WORK/model_$PRESET D=$WORK/data
[ -e "$WORK/${PRESET}_onnx" ] || "$PY" -m mmcls export "$M" --format onnx --out "$WORK/${PRESET}_onnx"
[ -e "$WORK/${PRESET}_int8_dynamic" ] || "$PY" -m mmcls export "$M" --format onnx --quantize int8 \
    --out "$WORK/${PRESET}_int8_dynamic"
[ -e "$WORK/${PRESET}_int8_static" ] || "$PY" -m mmcls export "$M" --format onnx --quantize int8 \
    --quantize-mode static --data-root "$D" --calibration-split labeled --out "$WORK/${PRESET}_int8_static"
MODELS=("$M" "$WORK/${PRESET}_onnx" "$WORK/${PRESET}_int8_dynamic" "$WORK/${PRESET}_int8_static")
for STUDENT in $STUDENTS; do
    S=$WORK/${STUDENT#"$WORK/model_"}  # model_base_student2 -> base_student2
    [ -e "${S}_onnx" ] || "$PY" -m mmcls export "$STUDENT" --format onnx --out "${S}_onnx"
    [ -e "${S}_int8_dynamic" ] || "$PY" -m mmcls export "$STUDENT" --format onnx --quantize int8 \
        --out "${S}_int8_dynamic"
    MODELS+=("${S}_onnx" "${S}_int8_dynamic")
done
"$PY" -m mmcls bench infer --compare "${MODELS[@]}" --data-root "$D" --clock cpu "$@"
