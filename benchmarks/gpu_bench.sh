#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md in one go (about 10-12 minutes on one H100, plus the served-vs-offline sweep; each result is written as it comes,
# so a run cut short by a time limit still returns the steps it finished). Not yet run: no GPU was lent to the
# session that wrote it. Usage, from the repository root of a machine with a CUDA GPU:
#
#   benchmarks/gpu_bench.sh [OUT_DIR]          # default OUT_DIR=${OUT:-/tmp/gpu_bench}
#
# Each step prints one JSON object (mmcls bench --json) into OUT_DIR/*.json and the log to OUT_DIR/log.txt.
# Random-init `base` architecture (CLIP ViT-B/16 on 8 frames at 224 px + 12-layer BERT on 256 tokens), synthetic
# 224 px JPEG zips, as in issue #8. If the machine lacks packages (open_clip_torch, ftfy, ...), carry them as
# wheels in .whl/ (see /work/.library/device/README.md); they are installed to /tmp/site first.
set -euo pipefail
OUT_DIR=${1:-${OUT:-/tmp/gpu_bench}}
WORK=${WORK:-/tmp/gpu_bench_work}
WORKERS=${WORKERS:-12}
mkdir -p "$OUT_DIR" "$WORK"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
PY=${PYTHON:-python3}
mmcls() { "$PY" -m mmcls "$@"; }
log() { echo "[$(date -u +%T)] $*" | tee -a "$OUT_DIR/log.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT_DIR/log.txt"
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])" | tee -a "$OUT_DIR/log.txt"

BASE=(--set model.text_encoder=null --set model.frame_encoder.pretrained=null
      --set data.text.tokenizer=builtin:bert-base-chinese)
if [ ! -d "$WORK/data" ]; then
  log "make-data"
  mmcls make-data "$WORK/data" --num-labeled 4096 --num-unlabeled 0 --num-test 2048 --image-size 224 >/dev/null
fi
if [ ! -d "$WORK/base_model" ]; then
  log "base model folder (random init)"
  "$PY" - "$WORK/base_model" <<'PYEOF'
import sys
from mmcls.config import Config
from mmcls.data.categories import official_categories
from mmcls.data.text import load_tokenizer
from mmcls.models import build_model, save_model_dir
cfg = Config.from_yaml("base", ["model.text_encoder=null", "model.frame_encoder.pretrained=null",
                                "data.text.tokenizer=builtin:bert-base-chinese"])
tok = load_tokenizer(cfg.data.text.tokenizer)
save_model_dir(sys.argv[1], build_model(cfg, vocab_size=len(tok)), cfg, tok, official_categories())
PYEOF
fi
D=(--data-root "$WORK/data" --device cuda --json)

log "bench data (DataLoader alone, $WORKERS workers)"
mmcls bench data base "${D[@]}" "${BASE[@]}" --workers "$WORKERS" --batch-size 32 --batches 20 >"$OUT_DIR/data.json"
log "bench data, JPEGs decoded on the GPU (data.frames.decoder=cuda)"
mmcls bench data base "${D[@]}" "${BASE[@]}" --set data.frames.decoder=cuda --workers "$WORKERS" --batch-size 128 \
  --batches 8 >"$OUT_DIR/data_cuda_decoder.json"
log "bench infer fp16 batch 128, --frame-decoder cuda"
mmcls bench infer "$WORK/base_model" "${D[@]}" --split test --precision fp16 --batch-size 128 \
  --workers 15 --batches 4 --frame-decoder cuda >"$OUT_DIR/infer_fp16_cuda_decoder.json"
for prec in fp16 bf16; do
  log "bench infer $prec batch 128"
  mmcls bench infer "$WORK/base_model" "${D[@]}" --split test --precision $prec --batch-size 128 \
    --workers 15 --batches 4 >"$OUT_DIR/infer_$prec.json"
done
for extra in "" "--set train.compile=true" "--set train.grad_checkpointing=true"; do
  name=train${extra:+_$(echo "$extra" | sed 's/.*train\.\([a-z_]*\)=.*/\1/')}
  log "bench train bf16 batch 32 $extra"
  mmcls bench train base "${D[@]}" "${BASE[@]}" $extra --precision bf16 --batch-size 32 --workers "$WORKERS" \
    --batches 10 --repeats 3 >"$OUT_DIR/$name.json"
done
log "predict end to end, fp16, 2048 videos"
start=$(date +%s.%N)
"$PY" -m mmcls predict "$WORK/base_model" --data-root "$WORK/data" --split test \
  --out "$WORK/pred.csv" --precision fp16 --batch-size 128 --num-workers 15 >/dev/null
"$PY" -c "import sys; s = float(sys.argv[2]) - float(sys.argv[1]); print({'predict_2048_videos_s': s, 'videos_per_s': 2048 / s})" \
  "$start" "$(date +%s.%N)" | tee "$OUT_DIR/predict.txt"
log "predict end to end, fp16, 2048 videos, --frame-decoder cuda"
start=$(date +%s.%N)
"$PY" -m mmcls predict "$WORK/base_model" --data-root "$WORK/data" --split test --frame-decoder cuda \
  --out "$WORK/pred_cuda.csv" --precision fp16 --batch-size 128 --num-workers 15 >/dev/null
"$PY" -c "import sys; s = float(sys.argv[2]) - float(sys.argv[1]); print({'predict_2048_videos_s': s, 'videos_per_s': 2048 / s})" \
  "$start" "$(date +%s.%N)" | tee "$OUT_DIR/predict_cuda_decoder.txt"
log "extract-features, 2048 test videos"
mmcls extract-features "$WORK/base_model" --data-root "$WORK/data" --split test --precision fp16 --batch-size 64 \
  --num-workers 15 --out "$WORK/feats_test.zip" --overwrite >"$OUT_DIR/extract_features.json"
log "served vs offline (issue #24): mmcls serve --device cuda + client --bench at 1/8/32, beside bench infer"
if "$PY" -c "import pytriton, tritonclient.http, tritonclient.grpc" 2>/dev/null; then
  # mmcls.deploy lives in deploy/ (a package-dir mapping), so serve needs mmcls installed, not just on PYTHONPATH;
  # the Triton Python-backend stub imports it from the same environment (PYTHONPATH is passed on to it).
  "$PY" -m pip install -q --no-deps --no-build-isolation --target /tmp/mmcls_pkg .
  PYTHONPATH=/tmp/mmcls_pkg:$PYTHONPATH "$PY" benchmarks/serve_vs_offline.py --work "$WORK/serve" --presets base \
    --device cuda --num-test 512 --python "$PY" --serve-args "--precision fp16 --max-batch 128" \
    --infer-args "--precision fp16 --batch-size 128 --workers 15 --batches 4" 2>&1 | tee "$OUT_DIR/serve_vs_offline.log"
  tail -n 1 "$OUT_DIR/serve_vs_offline.log" >"$OUT_DIR/serve_vs_offline.json"
else
  log "skipped: nvidia-pytriton and tritonclient are not installed (carry their wheels in .whl/)"
fi
log "done"; cat "$OUT_DIR"/*.json
