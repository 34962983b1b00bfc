#!/usr/bin/env bash
# The GPU checks that fit a short lease (about 8 minutes on one H100/H200), most valuable first, each stage
# under a share of one deadline, so the run always ends with whatever it measured written down:
#
#   bash scripts/run_gpu_session.sh            # BUDGET_S=420 by default; results in benchmarks/results/gpu/
#
#  1. the fused kernels' numerics at the benchmark shape (autotuned tiles) against the torch backend, and
#     where the time of one forward+backward goes (torch.profiler per kernel): benchmarks/profile_kernel.py,
#  2. the kernel benchmark at the issue's shapes (N=8192, H=4096, V=32000 and 128256, bf16): eager, Triton
#     fused with each backward (atomic dX/dW, store-G + cuBLAS), chunked cuBLAS, Liger FusedLinearJSD(beta=1)
#     when importable, and the GEMM floor, all in one process and one run; chunked and the floor also at
#     Liger's work (no augmented teacher: 4 GEMMs), for the equal-work Liger ratio; then the chunked backend's chunk
#     size (256 / 512 / 1024 / 2048 / 8192 tokens; the headline runs the default, 4096),
#  3. the kernel tests on the GPU (pytest-xdist when installed),
#  4. the end-to-end unlearning step at the 1B Llama shape, naive vs fused,
#  5. benchmarks/RESULTS.md from everything above.
# scripts/run_gpu_benchmarks.sh is the full suite (sweeps, 7B step, largest batch) for a longer lease.
# Environment: PYTHON (default python3), GPU_OUT (default benchmarks/results/gpu), BUDGET_S (default 420).
set -uo pipefail
. "$(dirname "$0")/lib/dry_run.sh"
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
PY=${PYTHON:-python3}
OUT=${GPU_OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
: > "$OUT/stages.txt"
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-420} ))
status=0
stage() {  # stage NAME MAX_SECONDS CMD... : run under min(MAX_SECONDS, time left), log to $OUT/NAME.log
  local name=$1 max=$2; shift 2
  if dry_run; then run "$@"; return; fi
  local left=$(( DEADLINE - $(date +%s) ))
  (( left < max )) && max=$left
  if (( max < 10 )); then echo "$name rc=skipped (deadline)" >> "$OUT/stages.txt"; status=1; return; fi
  echo "=== $name (<= ${max}s): $*"
  local t0=$(date +%s)
  timeout --kill-after=5 "$max" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "$name rc=$rc ($(( $(date +%s) - t0 ))s)" >> "$OUT/stages.txt"
  [ "$rc" -eq 0 ] || status=1
}
dry_run || "$PY" -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device visible'; \
print(torch.cuda.get_device_name(0), 'torch', torch.__version__, 'triton', triton.__version__)" \
  | tee "$OUT/versions.txt" || { echo "run_gpu_session.sh needs a CUDA GPU"; exit 2; }
dry_run || nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

HEADLINE=8192x4096x32000,8192x4096x128256
stage profile 90 "$PY" benchmarks/profile_kernel.py --shape 8192x4096x32000 --out "$OUT/profile-bf16"
stage kernel-headline 150 "$PY" benchmarks/bench_kernel.py --device cuda --dtype bf16 --shapes "$HEADLINE" \
  --impls eager,triton_atomic,triton_store,chunked,chunked_noaug,liger,floor,floor_noaug --out "$OUT/kernel-headline-bf16"
# The chunked backend's chunk size (default 4096: rklu/kernels/kl/triton_chunked.py). 256 and 512 tell whether `auto`
# should keep chunking below MIN_EFFICIENT_CHUNK (512) when memory is short, instead of the fused kernel.
for c in 256 512 1024 2048 8192; do
  stage "chunk-$c" 30 "$PY" benchmarks/bench_kernel.py --device cuda --dtype bf16 --shapes 8192x4096x32000 \
    --impls chunked --chunk-tokens "$c" --out "$OUT/kernel-chunk-$c-bf16"
done
XDIST=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
stage kernel-tests 200 "$PY" -m pytest -q -ra -p no:cacheprovider $XDIST tests/kernels/test_kernel_*.py
stage unlearning-step 100 "$PY" benchmarks/bench_unlearning_step.py --device cuda --dtype bf16 --sizes 1b \
  --rows 8 --seq 512 --out "$OUT/step-bf16"
stage results 20 "$PY" benchmarks/write_results.py --gpu-dir "$OUT"
echo "stages:"; cat "$OUT/stages.txt"
exit $status
