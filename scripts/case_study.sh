#!/usr/bin/env bash
# Paper Sec. 5 case study: direct answers and fill-in-the-blank top-5 tokens of forget questions for the
# original, augmented and unlearned models side by side.
#   scripts/case_study.sh [PRESET] [SPLIT] [METHOD]   (default tofu-llama2-7b forget10 rklu+kl)
set -euo pipefail
. "$(dirname "$0")/lib/dry_run.sh"
preset=${1:-tofu-llama2-7b}; split=${2:-forget10}; method=${3:-rklu+kl}
out=${OUT:-runs/$preset/$split}
run rklu eval case-study --forget-split "$split" \
  --model original="${ORIGINAL:-$out/../original/model}" --model augmented="$out/augmented/model" \
  --model "$method"="$out/unlearn/${method}_seed${SEED:-42}/model" --out "$out/case_study"
