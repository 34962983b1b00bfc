#!/usr/bin/env bash
# The GPU checks that fit a short lease (about 8 minutes on one H100/H200), most valuable first, each stage
# under a share of one deadline, so the run always ends with whatever it measured written down:
#
#   bash scripts/run_gpu_session.sh            # BUDGET_S=480 by default; results in benchmarks/results/gpu/
#
#  1. the kernel benchmark at issue 23's shapes (N=8192; H=4096 with V=32000, 128256, 256000; H=2048 with
#     V=128256; bf16; 5 timed calls per row), all in one process and one run: eager; chunked at the default
#     chunk policy (Liger's memory) and at half and twice that budget; the fused Triton kernel; the 5-GEMM
#     floor; at Liger's work (no augmented teacher) chunked, Liger FusedLinearJSD(beta=1) and the 4-GEMM
#     floor; the forward KL against Liger FusedLinearKLDivLoss (when the installed liger-kernel has it) and
#     its 3-GEMM floor. 48 rows; eager may OOM at V=256000 (recorded as OOM),
#  2. the kernel tests on the GPU (pytest-xdist when installed),
#  3. the end-to-end unlearning step (rklu+kl, forget + retain, seq 512, 8 rows each), naive vs fused vs
#     fused+cache: the Llama-3.2-1B shape (V=128256) full-parameter, the Llama-2-7B shape with LoRA,
#  4. where the time of one forward+backward goes (torch.profiler per kernel), if time is left,
#  5. benchmarks/RESULTS.md from everything above.
# The largest batch that fits (--fit) takes many probes: scripts/run_gpu_benchmarks.sh.
# scripts/run_gpu_benchmarks.sh is the full suite (sweeps, 7B step, largest batch at 1B/128k and 7B+LoRA) for a longer lease.
# Environment: PYTHON (default python3), GPU_OUT (default benchmarks/results/gpu), BUDGET_S (default 480).
set -uo pipefail
. "$(dirname "$0")/lib/dry_run.sh"
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
PY=${PYTHON:-python3}
OUT=${GPU_OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
: > "$OUT/stages.txt"
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-480} ))
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

SHAPES=8192x4096x32000,8192x4096x128256,8192x4096x256000,8192x2048x128256
IMPLS=eager,chunked,chunked_half,chunked_twice,triton,floor,chunked_noaug,liger,floor_noaug,chunked_noaug_fwd,liger_kldiv,floor_kldiv
stage kernel-headline 200 "$PY" benchmarks/bench_kernel.py --device cuda --dtype bf16 --shapes "$SHAPES" \
  --impls "$IMPLS" --repeats 5 --out "$OUT/kernel-headline-bf16"
XDIST=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
stage kernel-tests 100 "$PY" -m pytest -q -ra -p no:cacheprovider $XDIST tests/kernels/test_kernel_*.py tests/kernels/test_chunk_policy.py
stage unlearning-step 60 "$PY" benchmarks/bench_unlearning_step.py --device cuda --dtype bf16 --sizes 1b-v128k \
  --rows 8 --seq 512 --steps 2 --out "$OUT/step-bf16"
stage unlearning-step-lora 80 "$PY" benchmarks/bench_unlearning_step.py --device cuda --dtype bf16 --sizes 7b+lora \
  --rows 8 --seq 512 --steps 2 --out "$OUT/step-lora-bf16"
stage profile 20 "$PY" benchmarks/profile_kernel.py --shape 8192x4096x32000 --out "$OUT/profile-bf16"
stage results 20 "$PY" benchmarks/write_results.py --gpu-dir "$OUT"
echo "stages:"; cat "$OUT/stages.txt"
exit $status
