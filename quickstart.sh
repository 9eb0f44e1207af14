#!/usr/bin/env bash
# Quick start: the whole method on a CPU, with nothing to download but the Python packages.
#
#   1. creates .venv (if missing) and installs requirements.txt into it;
#   2. trains HyperIQA from scratch (--no_pretrained) on the synthetic data set built from examples/,
#      once as the baseline and once with the NT gradient-norm regularizer (--if_grad);
#   3. on an example photo, prints both models' gradient norm (quality_and_norm_demo.py) and
#      attacks both with FGSM (FGSM_demo.py, which also draws comparison.png);
#   4. attacks both on test images of the synthetic set with I-FGSM, which follows the gradient, and
#      with the square attack, which uses none (evaluate_robustness.py);
#   5. prints a summary: gradient norm and score change under each attack, baseline vs NT.
#
# Everything it writes goes to data/synthetic/ (the data set) and results/quickstart/ (checkpoints,
# logs, crops, adversarial patches, robustness tables and plots). Run from anywhere: bash quickstart.sh
# Environment: PYTHON (interpreter that creates the venv, default python3), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
DATA=data/synthetic
OUT=results/quickstart
IMAGE=examples/coffee.jpg
SEED=919

# Training settings: small enough for two CPU cores (see the README's quick start section).
EPOCHS=3
TRAIN_PATCHES=2  # random 224x224 patches per training image and epoch
TEST_PATCHES=2  # patches per test image, averaged into its predicted score
BATCH_SIZE=8
# Weight of the gradient-norm penalty: 10x the paper's 1e-3, so that three short epochs from scratch
# are enough for the effect to show (with 1e-3 it is there, but small: about 15% lower gradient norm).
NT_WEIGHT=0.01
NT_H=0.01  # the paper's finite-difference step
DEMO_PATCHES=4  # patches of the example photo for both demos
EPS=0.03  # FGSM l_inf bound, [0, 1] pixel units (the demo's default)
ALPHA=0.01  # FGSM step, [0, 1] pixel units (the demo's default: one step of 0.01)
# Robustness on the synthetic test set (17 images of one photo): I-FGSM as above, and the gradient-free
# square attack with a small budget, both at eps $EPS.
EVAL_IMAGES=8
EVAL_PATCHES=1
SQUARE_QUERIES=100  # score queries per patch (the attack's default is 1000; 100 keep this step near a minute)

step() { printf '\n=== [%s, %ds] %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*"; }

step "Python environment in $VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt
mkdir -p "$OUT"

train() {  # train <label> [extra flags...]: one from-scratch training run, table and log in $OUT
    local label=$1
    shift
    step "Training the $label model (from scratch, $EPOCHS epochs, CPU-sized settings)"
    "$PY" train_test_IQA_sparsity.py --dataset synthetic --dataset_path "$DATA" --no_pretrained \
        --epochs "$EPOCHS" --train_patch_num "$TRAIN_PATCHES" --test_patch_num "$TEST_PATCHES" \
        --batch_size "$BATCH_SIZE" --seed "$SEED" --checkpoint_dir "$OUT/checkpoints" \
        --log_file "$OUT/train_$label.log" "$@"
}
train baseline
train NT --if_grad --weight "$NT_WEIGHT" --h "$NT_H"

checkpoint() {  # checkpoint <if_grad 0|1>: the path the training script saved to
    "$PY" -c 'import sys, checkpoints; print(checkpoints.checkpoint_name("synthetic", int(sys.argv[1]), bool(int(sys.argv[2])), float(sys.argv[3]), float(sys.argv[4])))' \
        "$BATCH_SIZE" "$1" "$NT_WEIGHT" "$NT_H"
}
BASELINE_CKPT="$OUT/checkpoints/$(checkpoint 0)"
NT_CKPT="$OUT/checkpoints/$(checkpoint 1)"

step "Gradient norm and score of $IMAGE under both models"
"$PY" quality_and_norm_demo.py --img_name "$IMAGE" --patch_num "$DEMO_PATCHES" --seed "$SEED" \
    --baseline_checkpoint "$BASELINE_CKPT" --nt_checkpoint "$NT_CKPT" \
    --crop_dir "$OUT/crops" --regenerate_crops | tee "$OUT/quality_and_norm.txt"

for label in baseline NT; do
    step "FGSM attack on the $label model (eps $EPS, one step of $ALPHA)"
    ckpt=$BASELINE_CKPT
    [[ $label == NT ]] && ckpt=$NT_CKPT
    "$PY" FGSM_demo.py --img_name "$IMAGE" --checkpoint "$ckpt" --patch_num "$DEMO_PATCHES" --seed "$SEED" \
        --eps "$EPS" --alp "$ALPHA" --step 1 --save_dir "$OUT/adv_$label" | tee "$OUT/fgsm_$label.txt"
done

step "I-FGSM and square attack on $EVAL_IMAGES synthetic test images, both models (eps $EPS, $SQUARE_QUERIES queries)"
"$PY" evaluate_robustness.py --dataset synthetic --dataset_path "$DATA" --checkpoint "$BASELINE_CKPT" "$NT_CKPT" \
    --attack ifgsm square --eps "$EPS" --alp "$ALPHA" --step 1 --queries "$SQUARE_QUERIES" \
    --limit "$EVAL_IMAGES" --patch_num "$EVAL_PATCHES" --seed "$SEED" --out_dir "$OUT/robustness" \
    | tee "$OUT/robustness.txt"

# The numbers, read back from the demos' printed lines and the evaluation's summary.csv.
value() { grep -m1 -F "$2" "$1" | sed 's/.*://'; }  # value <file> <line prefix>: the number after the colon
norm_line() { grep -A2 -F 'L_1 norm' "$OUT/quality_and_norm.txt" | grep -m1 -F "$1" | sed 's/.*://'; }
summary_row() {  # summary_row <label> <gradient norm> <fgsm output file>
    local clean attacked
    clean=$(value "$3" 'Predicted Score (Unattacked):')
    attacked=$(value "$3" 'Predicted Score (Attacked):')
    awk -v l="$1" -v g="$2" -v c="$clean" -v a="$attacked" \
        'BEGIN { d = a - c; if (d < 0) d = -d; printf "%-9s %14.2f %12.2f %14.2f %18.2f\n", l, g, c, a, d }'
}
robustness_rows() {  # the rows of summary.csv, the checkpoints named baseline and NT
    awk -F, -v base="$(basename "$BASELINE_CKPT" .pth)" -v nt="$(basename "$NT_CKPT" .pth)" '
        NR == 1 { for (i = 1; i <= NF; i++) column[$i] = i; next }
        { model = $column["model"] == base ? "baseline" : ($column["model"] == nt ? "NT" : $column["model"])
          srocc = $column["srocc_at_eps_max"] == "" ? "-" : sprintf("%.3f", $column["srocc_at_eps_max"])
          printf "%-9s %-7s %21.2f %23s\n", model, $column["attack"], $column["mae_at_eps_max"], srocc }' \
        "$OUT/robustness/summary.csv"
}
step "Summary"
echo "FGSM demo on $IMAGE ($DEMO_PATCHES patches, eps $EPS, one step of $ALPHA):"
printf '%-9s %14s %12s %14s %18s\n' model 'gradient norm' 'clean score' 'attacked score' '|score change|'
summary_row baseline "$(norm_line 'HyperIQA:')" "$OUT/fgsm_baseline.txt"
summary_row NT "$(norm_line 'HyperIQA+NT:')" "$OUT/fgsm_NT.txt"
echo
echo "$EVAL_IMAGES synthetic test images ($EVAL_PATCHES patch per image), eps $EPS; ifgsm follows the gradient, square uses none:"
printf '%-9s %-7s %21s %23s\n' model attack 'mean |score change|' 'SROCC(clean, attacked)'
robustness_rows
echo "Expected: NT has the lower gradient norm and the smaller score change under attack. If its change"
echo "is smaller under the square attack too, its robustness is not only a hidden gradient."
echo "Total time: ${SECONDS}s. Outputs in $OUT/."
