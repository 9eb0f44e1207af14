#!/usr/bin/env bash
# No defense, NT, adversarial training (FGSM and PGD) and JPEG re-compression, side by side on the
# synthetic data set: one data pipeline, one schedule (the quick start's, sized for two CPU cores),
# one evaluation.
#
#   1. trains HyperIQA from scratch four times: baseline, NT (--if_grad), AT fgsm, AT pgd;
#   2. evaluates the four checkpoints on 8 images of the test split with evaluate_robustness.py (fgsm,
#      ifgsm, pgd, mifgsm and the gradient-free square attack at eps 1, 2, 4 and 8 /255, with the
#      integral robustness scores);
#   3. evaluates the four behind JPEG re-compression on 4 images with the gradient attacks, attacked
#      without knowing it (the attack made against the bare model, the attacked image then compressed),
#      then attacked through it (--adaptive: BPDA, the identity as JPEG's gradient);
#   4. certifies their scores on 4 images by median smoothing at three l2 radii (1000 noisy scores per
#      image and model: the costliest step);
#   5. prints the integral stability of the three runs side by side, and the certified widths.
#
# Writes results/at_comparison/ (checkpoints/, train_*.log, robustness/, robustness_jpeg/,
# robustness_jpeg_adaptive/, certified/). Run from anywhere: bash compare_defenses.sh
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
JPEG=jpeg:50  # the defense of step 3: JPEG re-compression at quality 50
DEFENSE_IMAGES=4  # test images of steps 3 and 4 (the first of the 8)
DEFENSE_ATTACKS="fgsm ifgsm pgd mifgsm"  # the attacks of step 3: those an adaptive attack changes
CERTIFY_RADII="0.05 0.1 0.25"  # l2 radii of the certificates, pixel units (noise sigma 0.12, 1000 samples: the defaults)

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
# (a flag given twice: the later value counts, so these narrow evaluate's defaults)
step "The four models behind JPEG ($JPEG), attacked without knowing it"
# shellcheck disable=SC2086
evaluate "$OUT/robustness_jpeg" "$BASELINE" "$NT" "$AT_FGSM" "$AT_PGD" --defense "$JPEG" \
    --limit "$DEFENSE_IMAGES" --attack $DEFENSE_ATTACKS
step "The four models behind JPEG ($JPEG), attacked through it (--adaptive)"
# shellcheck disable=SC2086
evaluate "$OUT/robustness_jpeg_adaptive" "$BASELINE" "$NT" "$AT_FGSM" "$AT_PGD" --defense "$JPEG" --adaptive \
    --limit "$DEFENSE_IMAGES" --attack $DEFENSE_ATTACKS
step "Certified intervals of the four models at l2 radii $CERTIFY_RADII"
# shellcheck disable=SC2086
evaluate "$OUT/certified" "$BASELINE" "$NT" "$AT_FGSM" "$AT_PGD" --limit "$DEFENSE_IMAGES" --attack fgsm \
    --eps 0.0313725 --certify --certify_eps $CERTIFY_RADII

LABELS="$(basename "$BASELINE" .pth)=baseline,$(basename "$NT" .pth)=NT,$(basename "$AT_FGSM" .pth)=AT_fgsm,$(basename "$AT_PGD" .pth)=AT_pgd"
side_by_side() {  # side_by_side <summary.csv...>: integral_stability (mean |change| at the largest eps) per run
    awk -F, -v labels="$LABELS" '
        BEGIN { n = split(labels, pairs, ","); for (i = 1; i <= n; i++) { split(pairs[i], kv, "="); label[kv[1]] = kv[2] } }
        { sub(/\r$/, "") }  # the CSV lines end in CR LF
        FNR == 1 { run++; for (i = 1; i <= NF; i++) column[$i] = i; next }
        { key = $column["model"] SUBSEP $column["attack"]
          if (run == 1) order[++rows] = key
          cell[run, key] = sprintf("%.3f (%.1f)", $column["integral_stability"], $column["mae_at_eps_max"]) }
        END { for (r = 1; r <= rows; r++) { split(order[r], k, SUBSEP)
                  line = sprintf("%-9s %-7s", label[k[1]], k[2])
                  for (f = 1; f <= run; f++) line = line sprintf(" %15s", cell[f, order[r]])
                  print line } }' "$@"
}
certified_widths() {  # the mean certified widths per model and radius, from certified.csv
    awk -F, -v labels="$LABELS" '
        BEGIN { n = split(labels, pairs, ","); for (i = 1; i <= n; i++) { split(pairs[i], kv, "="); label[kv[1]] = kv[2] } }
        { sub(/\r$/, "") }
        NR == 1 { for (i = 1; i <= NF; i++) column[$i] = i; next }
        { printf "%-9s %6s %14.2f %12.4f %12s\n", label[$column["model"]], $column["radius"], $column["mean_width"],
                 $column["width_share"], $column["uncertified"] }' "$OUT/certified/certified.csv"
}
step "Summary"
echo "Integral stability (mean |score change| at 8/255): no defense ($EVAL_IMAGES images), $JPEG, $JPEG adaptive ($DEFENSE_IMAGES images)"
printf '%-9s %-7s %15s %15s %15s\n' model attack none "$JPEG" "$JPEG adaptive"
side_by_side "$OUT/robustness/summary.csv" "$OUT/robustness_jpeg/summary.csv" "$OUT/robustness_jpeg_adaptive/summary.csv"
echo
echo "Certified score intervals by median smoothing (mean width over the $DEFENSE_IMAGES images, score units and share of the range)"
printf '%-9s %6s %14s %12s %12s\n' model radius 'mean width' share uncertified
certified_widths
echo "Total time: ${SECONDS}s. Tables in $OUT/robustness/, $OUT/robustness_jpeg/, $OUT/robustness_jpeg_adaptive/ and $OUT/certified/."
