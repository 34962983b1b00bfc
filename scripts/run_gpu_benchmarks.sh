#!/usr/bin/env bash
# One command on a CUDA machine (from the repo root or anywhere):   bash scripts/run_gpu_benchmarks.sh
#
#  1. the kernel tests on the GPU (fp32 / bf16 / fp16; TRITON_INTERPRET unset, so they pick CUDA), every
#     backend incl. backend="chunked", with the gradient filter on (the default),
#  1b. the sm_80/sm_90 compile check (CI subset: spills / shared memory) and the roofline estimate,
#  2. kernel benchmarks at the issue's shapes: N=8192, H=4096, V=32000 and V=128256 (Llama-3), bf16:
#     eager, torch.compile, torch chunked, Triton fused with the gradient filter on and off, chunked cuBLAS,
#     Liger FusedLinearJSD(beta=1) when installed, GEMM floor, chunked + floor at Liger's work; autotuned Triton tiles, plus the Triton rows
#     with the fixed default tiles (RKLU_TRITON_AUTOTUNE=0),
#  3. the V / N / H sweeps (PNG + JSON + markdown),
#  4. the pytest-benchmark cases,
#  5. the end-to-end unlearning step (125M, 1B, 7B Llama configs; largest batch that fits), and the fused
#     log-prob's npo+rt / rklu+rt step, naive vs fused (1B, 1B with the 128k vocabulary),
#  6. benchmarks/RESULTS.md, with the device name, from everything above.
# Every stage runs even if an earlier one failed; the exit status is non-zero if any stage failed.
# Environment: PYTHON (default python), GPU_OUT (default benchmarks/results/gpu), SIZES (default 125m,1b,7b), SKIP_SWEEPS=1, SKIP_STEP=1.
# Liger's FusedLinearJSD is included when liger_kernel is importable (pip install -e '.[bench]').
set -uo pipefail
. "$(dirname "$0")/lib/dry_run.sh"
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
PY=${PYTHON:-python}
OUT=${GPU_OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
status=0
stage() {  # stage NAME CMD... : run, log to $OUT/NAME.log, remember failures
  local name=$1; shift
  if dry_run; then run "$@"; return; fi
  echo "=== $name: $*"
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "$name rc=$rc" >> "$OUT/stages.txt"
  [ "$rc" -eq 0 ] || status=1
}
: > "$OUT/stages.txt"
dry_run || "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name(0))" \
  || { echo "run_gpu_benchmarks.sh needs a CUDA GPU"; exit 2; }
dry_run || nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

stage kernel-tests "$PY" -m pytest -q -ra -p no:cacheprovider tests/kernels/test_kernel_*.py
stage gpu-compile "$PY" benchmarks/gpu_compile.py --subset ci --check --jobs 8 --quiet --out "$OUT/gpu-compile-ci"
stage roofline "$PY" benchmarks/roofline.py
HEADLINE=8192x4096x32000,8192x4096x128256
stage kernel-headline "$PY" benchmarks/bench_kernel.py --device cuda --dtype bf16 --shapes "$HEADLINE" \
  --out "$OUT/kernel-headline-bf16"
stage kernel-headline-fixed-tiles env RKLU_TRITON_AUTOTUNE=0 "$PY" benchmarks/bench_kernel.py --device cuda --dtype bf16 \
  --shapes "$HEADLINE" --impls triton,triton_nofilter,chunked,floor --out "$OUT/kernel-headline-bf16-fixed-tiles"
if [ "${SKIP_SWEEPS:-0}" != 1 ]; then
  stage kernel-sweeps "$PY" benchmarks/bench_kernel.py --device cuda --dtype bf16 --compile-sweeps vocab \
    --out "$OUT/kernel-sweep-bf16"
fi
stage pytest-benchmark "$PY" -m pytest benchmarks --benchmark-only -q -ra -p no:cacheprovider \
  --benchmark-json "$OUT/pytest-benchmark.json"
if [ "${SKIP_STEP:-0}" != 1 ]; then
  stage unlearning-step "$PY" benchmarks/bench_unlearning_step.py --device cuda --dtype bf16 \
    --sizes "${SIZES:-1b-v128k,7b+lora,125m,1b,7b}" --rows 8 --seq 512 --fit --fit-probes 10 --out "$OUT/step-bf16"
fi
stage logprob-step "$PY" benchmarks/bench_logprob.py --device cuda --dtype bf16 --sizes 1b,1b-v128k \
  --rows 8 --seq 512 --out "$OUT/logprob-bf16"
stage results "$PY" benchmarks/write_results.py --gpu-dir "$OUT"
echo "stages:"; cat "$OUT/stages.txt"
exit $status
