#!/usr/bin/env bash
# The measurements of docs/workflows.md: single model vs 5-fold mean vs hill-climb ensemble, a pseudo-label
# round, a distilled student against its teacher ensemble. Usage: benchmarks/workflows.sh OUT_DIR
# Everything is on make-data's synthetic data with the tiny preset (CPU); numbers go to OUT_DIR/*.json.
set -euo pipefail
OUT=${1:?usage: benchmarks/workflows.sh OUT_DIR}
MMCLS=${MMCLS:-mmcls}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
D=$OUT/data
ANN=$D/annotations/test_labels.json
S=(--set train.epochs=5 --set train.progress_bar=false --set train.tensorboard=false)
mkdir -p "$OUT"

$MMCLS make-data "$D" --num-labeled 500 --num-unlabeled 1000 --num-test 300 --seed 0 --num-frames 4 \
  --image-size 32 > /dev/null
score() { $MMCLS evaluate --pred "$1" --ann "$ANN" > "${1%.csv}.score.json"; echo "$1: $(grep mean_f1 "${1%.csv}.score.json")"; }

# 1. one model (10 % hold-out), and 5-fold runs of two variants (fusion, text only) for the ensembles
$MMCLS train tiny --data-root "$D" --out "$OUT/single" "${S[@]}" > /dev/null
$MMCLS predict "$OUT/single" --data-root "$D" --out "$OUT/single.csv" > /dev/null; score "$OUT/single.csv"
$MMCLS kfold tiny --data-root "$D" --out "$OUT/kfold_a" --folds 5 "${S[@]}" > "$OUT/kfold_a.json"
$MMCLS kfold tiny --data-root "$D" --out "$OUT/kfold_b" --folds 5 "${S[@]}" --set train.seed=1 \
  --set data.frames.source=none > "$OUT/kfold_b.json"  # text only: another view, and cheap on a CPU

# 2. ensembles on the test split
$MMCLS ensemble "$OUT/kfold_a" --data-root "$D" --out "$OUT/kfold_a_mean.csv" > /dev/null; score "$OUT/kfold_a_mean.csv"
$MMCLS ensemble "$OUT/kfold_a" "$OUT/kfold_b" --data-root "$D" --out "$OUT/ab_mean.csv" > /dev/null
score "$OUT/ab_mean.csv"
$MMCLS ensemble "$OUT/kfold_a" "$OUT/kfold_b" --data-root "$D" --out "$OUT/ab_hill.csv" --weights hill-climb \
  > /dev/null; score "$OUT/ab_hill.csv"

# 3. a pseudo-label round: the ensemble labels the unlabeled split, one model retrains with the extra records
$MMCLS pseudo-label "$OUT/kfold_a" "$OUT/kfold_b" --data-root "$D" --split unlabeled --out "$OUT/pseudo.json" \
  --min-confidence 0.5 --soft > "$OUT/pseudo.summary.json"
$MMCLS train tiny --data-root "$D" --out "$OUT/single_pl" "${S[@]}" --set "data.extra_train=[$OUT/pseudo.json]" \
  > /dev/null
$MMCLS predict "$OUT/single_pl" --data-root "$D" --out "$OUT/single_pl.csv" > /dev/null; score "$OUT/single_pl.csv"

# 4. distillation: the hill-climb ensemble's probabilities on the labeled split teach a 1-layer student with
#    2 frames that starts from the single model's lowest layer; the same student without a teacher for reference
$MMCLS ensemble "$OUT/kfold_a" "$OUT/kfold_b" --data-root "$D" --split labeled --out "$OUT/teacher_labeled.csv" \
  --weights hill-climb --save-probs "$OUT/teacher_labeled.npy" > /dev/null
STUDENT=(--set model.bert_config.num_hidden_layers=1 --set data.frames.max_frames=2 --set "model.init_from=$OUT/single")
$MMCLS train tiny --data-root "$D" --out "$OUT/student" "${S[@]}" "${STUDENT[@]}" > /dev/null
$MMCLS predict "$OUT/student" --data-root "$D" --out "$OUT/student.csv" > /dev/null; score "$OUT/student.csv"
$MMCLS train tiny --data-root "$D" --out "$OUT/student_kd" "${S[@]}" "${STUDENT[@]}" \
  --set "train.distill_from=$OUT/teacher_labeled.npy" > /dev/null
$MMCLS predict "$OUT/student_kd" --data-root "$D" --out "$OUT/student_kd.csv" > /dev/null; score "$OUT/student_kd.csv"

# 5. inference speed on the test split (in-process; each member runs once to warm up, then is timed)
python - "$OUT" <<'PY' | tee "$OUT/speed.json"
import json, sys, time
from mmcls.workflows.members import PredictOptions, load_member
out, opts = sys.argv[1], PredictOptions(batch_size=64, num_workers=0, device="cpu")
speed = {}
for name in ("single", "student_kd", "kfold_a", "kfold_b"):
    member = load_member(f"{out}/{name}")
    member.predict(f"{out}/data", "test", opts)  # warm-up: imports, first kernels, file caches
    start = time.perf_counter()
    ids, _ = member.predict(f"{out}/data", "test", opts)
    speed[name] = round(len(ids) / (time.perf_counter() - start), 1)
speed["kfold_a + kfold_b (10 models)"] = round(1 / (1 / speed["kfold_a"] + 1 / speed["kfold_b"]), 1)
print(json.dumps({"videos_per_s": speed}))
PY
