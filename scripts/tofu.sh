#!/usr/bin/env bash
# One TOFU experiment of the paper (Table 2 / 3): original -> retain oracle -> augmented -> every method,
# TOFU evaluation after every epoch, then the report (table + FQ-vs-MU plot).
#
#   scripts/tofu.sh PRESET SPLIT [METHOD ...]
#   PRESET: tofu-llama2-7b | tofu-phi-1.5        SPLIT: forget01 | forget05 | forget10
#
# Environment (all optional):
#   OUT=runs/...            where everything goes (default runs/PRESET/SPLIT)
#   ORIGINAL=path|hub-id    skip finetuning, e.g. locuslab/tofu_ft_llama2-7b (TOFU's released model)
#   RETAIN_EVAL_DIR=dir     skip the retain oracle: TOFU's published retain90/95/99 eval logs
#   LAUNCH="accelerate launch --config_file configs/accelerate/2gpu-ddp-lora-7b.yaml -m rklu.cli"
#   SEEDS="42 43 44"        unlearning seeds (the paper reports means)
set -euo pipefail
. "$(dirname "$0")/lib/dry_run.sh"
preset=${1:?usage: scripts/tofu.sh PRESET SPLIT [METHOD ...]}
split=${2:?usage: scripts/tofu.sh PRESET SPLIT [METHOD ...]}
shift 2
methods=("$@")
[ ${#methods[@]} -gt 0 ] || methods=(rklu+kl rklu+rt rklu fklu+kl ga ga+rt ga+kl npo npo+rt npo+kl idk dpo dpo+rt dpo+kl task-arithmetic)
case "$split" in forget01) retain=retain99 ;; forget05) retain=retain95 ;; forget10) retain=retain90 ;;
  *) echo "unknown split $split" >&2; exit 2 ;; esac
out=${OUT:-runs/$preset/$split}
launch=${LAUNCH:-rklu}
seeds=${SEEDS:-42}
mkdir -p "$out"

# 1. the original model: finetuned on all of TOFU (skipped when ORIGINAL is given or already done)
if [ -z "${ORIGINAL:-}" ]; then
  [ -d "$out/../original/model" ] || run $launch finetune --preset "$preset" --data tofu:full --output-dir "$out/../original"
  ORIGINAL=$out/../original/model
fi

# 2. the retain oracle (finetuned on the retain split only) and its TOFU logs, for forget quality
if [ -z "${RETAIN_EVAL_DIR:-}" ]; then
  [ -d "$out/$retain/model" ] || run $launch finetune --preset "$preset" --data "tofu:$retain" --output-dir "$out/$retain"
  [ -f "$out/$retain/eval/eval_log_forget.json" ] || run rklu eval tofu --model "$out/$retain/model" --forget-split "$split" --out "$out/$retain/eval"
  RETAIN_EVAL_DIR=$out/$retain/eval
fi

# 3. the augmented model: the original trained further on the forget set (10 epochs on TOFU)
[ -d "$out/augmented/model" ] || run $launch augment --preset "$preset" --model "$ORIGINAL" --forget "tofu:$split" --output-dir "$out/augmented"

# 4. the original itself, as the epoch-0 baseline
[ -f "$out/original_eval/aggregate.json" ] || { run rklu eval tofu --model "$ORIGINAL" --forget-split "$split" --out "$out/original_eval"
  run rklu eval aggregate --eval-dir "$out/original_eval" --retain-eval-dir "$RETAIN_EVAL_DIR"; }

# 5. every method, every seed, evaluated after every epoch; interrupted runs resume
for seed in $seeds; do
  for method in "${methods[@]}"; do
    run=$out/unlearn/${method}_seed$seed
    resume=(); [ -d "$run/checkpoints" ] && resume=(--resume)
    [ -d "$run/model" ] && continue
    run $launch unlearn --preset "$preset" --method "$method" --model "$ORIGINAL" --augmented "$out/augmented/model" \
      --forget "tofu:$split" --retain "tofu:$retain" --seed "$seed" --output-dir "$run" "${resume[@]}" \
      --eval-tofu "$split" --retain-eval-dir "$RETAIN_EVAL_DIR"
  done
done

# 6. the table (peak-forget-quality epoch, mean over seeds) and the FQ-vs-MU plot
run rklu report "$out"/unlearn/* --out "$out/report"
