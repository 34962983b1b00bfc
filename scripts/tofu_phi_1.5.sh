#!/usr/bin/env bash
# Paper Table 2/3, Phi-1.5: forget01, forget05 and forget10 (override with SPLITS="forget10").
set -euo pipefail
. "$(dirname "$0")/lib/dry_run.sh"
for split in ${SPLITS:-forget01 forget05 forget10}; do
  "$(dirname "$0")/tofu.sh" tofu-phi-1.5 "$split" "$@"
done
