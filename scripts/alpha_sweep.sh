#!/usr/bin/env bash
# Paper Fig. 5: RKLU(+KL) forget quality / model utility against the unlearning strength alpha.
#   scripts/alpha_sweep.sh [PRESET] [SPLIT]   (default tofu-llama2-7b forget10; ALPHAS="0 1 2 4 8 16 32")
# Reuses the original / retain oracle / augmented models that scripts/tofu.sh leaves in runs/PRESET/.
set -euo pipefail
. "$(dirname "$0")/lib/dry_run.sh"
preset=${1:-tofu-llama2-7b}
split=${2:-forget10}
out=${OUT:-runs/$preset/$split}
launch=${LAUNCH:-rklu}
case "$split" in forget01) retain=retain99 ;; forget05) retain=retain95 ;; forget10) retain=retain90 ;; esac
ORIGINAL=${ORIGINAL:-$out/../original/model}
RETAIN_EVAL_DIR=${RETAIN_EVAL_DIR:-$out/$retain/eval}
for path in "$ORIGINAL" "$out/augmented/model" "$RETAIN_EVAL_DIR"; do
  [ -e "$path" ] || dry_run || { echo "missing $path: run scripts/tofu.sh $preset $split rklu+kl first" >&2; exit 2; }
done
for alpha in ${ALPHAS:-0 1 2 4 8 16 32}; do
  run=$out/alpha_sweep/rklu+kl_alpha$alpha
  [ -d "$run/model" ] && continue
  resume=(); [ -d "$run/checkpoints" ] && resume=(--resume)
  run $launch unlearn --preset "$preset" --method rklu+kl --alpha "$alpha" --model "$ORIGINAL" \
    --augmented "$out/augmented/model" --forget "tofu:$split" --retain "tofu:$retain" --output-dir "$run" \
    "${resume[@]}" --eval-tofu "$split" --retain-eval-dir "$RETAIN_EVAL_DIR"
done
run rklu report "$out"/alpha_sweep/* --out "$out/alpha_sweep_report"   # writes the metric-vs-alpha PNG
