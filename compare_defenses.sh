#!/usr/bin/env bash
# No defense, NT, adversarial training (FGSM and PGD) and JPEG re-compression, side by side on the
# synthetic data set: one data pipeline, one schedule (the quick start's, sized for two CPU cores),
# one evaluation.
#
#   1. trains HyperIQA from scratch four times: baseline, NT (--if_grad), AT fgsm, AT pgd;
#   2. evaluates the four checkpoints on 8 images of the test split with evaluate_robustness.py (fgsm,
#      ifgsm, pgd, mifgsm and the gradient-free square attack at eps 1, 2, 4 and 8 /255, with the
#      integral robustness scores), then the baseline behind JPEG re-compression.
#
# Writes results/at_comparison/ (checkpoints/, train_*.log, robustness/, robustness_jpeg/). Run from
# anywhere: bash compare_defenses.sh
# Environment: PY (the Python with requirements.txt installed, default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")"

PY=${PY:-.venv/bin/python}
OUT=results/at_comparison
SEED=919

# The quick start's training settings (see quickstart.sh and the README's quick start).
EPOCHS=3
TRAIN_PATCHES=2
TEST_PATCHES=2
BATCH_SIZE=8
NT_WEIGHT=0.01  # 10x the paper's, as in the quick start: three short epochs need the stronger penalty
EVAL_EPS="0.0039216 0.0078431 0.0156863 0.0313725"  # 1, 2, 4 and 8 /255, pixel units (AT trains at 4/255)
EVAL_IMAGES=8  # test images (of 17), to keep the square attack's queries affordable on 2 CPU cores
EVAL_PATCHES=1  # patches per test image
SQUARE_QUERIES=100  # score queries per image of the square attack
JPEG_QUALITY=75

step() { printf '\n=== [%s, %ds] %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*"; }
mkdir -p "$OUT"

train() {  # train <label> [extra flags...]
    local label=$1
    shift
    step "Training the $label model"
    "$PY" train_test_IQA_sparsity.py --dataset synthetic --no_pretrained --epochs "$EPOCHS" \
        --train_patch_num "$TRAIN_PATCHES" --test_patch_num "$TEST_PATCHES" --batch_size "$BATCH_SIZE" \
        --seed "$SEED" --checkpoint_dir "$OUT/checkpoints" --log_file "$OUT/train_$label.log" "$@"
}
train baseline
train NT --if_grad --weight "$NT_WEIGHT"
train AT_fgsm --adv_train fgsm
train AT_pgd --adv_train pgd

name() {  # name <JSON of TrainConfig fields beyond the common ones>: the checkpoint the training script wrote
    "$PY" -c 'import json, sys; from train_config import TrainConfig; print(TrainConfig(**json.loads(sys.argv[1])).checkpoint_name())' \
        "{\"dataset\": \"synthetic\", \"batch_size\": $BATCH_SIZE, $1}"
}
BASELINE="$OUT/checkpoints/$(name '"if_grad": false')"
NT="$OUT/checkpoints/$(name "\"if_grad\": true, \"weight\": $NT_WEIGHT")"
AT_FGSM="$OUT/checkpoints/$(name '"adv_train": "fgsm"')"
AT_PGD="$OUT/checkpoints/$(name '"adv_train": "pgd"')"

evaluate() {  # evaluate <out dir> <checkpoints...> [-- extra flags]
    local out=$1
    shift
    # shellcheck disable=SC2086
    "$PY" evaluate_robustness.py --dataset synthetic --dataset_path data/synthetic --seed "$SEED" \
        --limit "$EVAL_IMAGES" --patch_num "$EVAL_PATCHES" --attack fgsm ifgsm pgd mifgsm square \
        --eps $EVAL_EPS --queries "$SQUARE_QUERIES" --out_dir "$out" --checkpoint "$@"
}
step "Robustness of the four models"
evaluate "$OUT/robustness" "$BASELINE" "$NT" "$AT_FGSM" "$AT_PGD"
step "Robustness of the baseline behind JPEG re-compression (quality $JPEG_QUALITY)"
evaluate "$OUT/robustness_jpeg" "$BASELINE" --jpeg_quality "$JPEG_QUALITY"
echo "Total time: ${SECONDS}s. Tables in $OUT/robustness/ and $OUT/robustness_jpeg/."
