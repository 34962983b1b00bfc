"""Roofline cost model of the unlearning-KL backends on a GPU: FLOPs and bytes per launched kernel, derived
from each backend's own grid and tile constants (imported from the kernel modules), turned into time as
sum over kernels of max(compute, DRAM traffic, L2 traffic). Report-only: benchmarks/roofline.py (whose
report-only models -- dense floor, eager, torch, the first fused kernel -- are in
benchmarks/cost_model_report.py) and the chunk-policy estimates (``chunk_policies`` there); ``backend="auto"``
decides from memory alone (rklu/kernels/kl/chunk_policy.py).

Assumptions (stated once, here):
* peak rates: H100 SXM 989 TFLOP/s bf16 dense, 67 TFLOP/s fp32 FMA (fp32 inputs: Triton's IEEE tl.dot and
  cuBLAS SGEMM with TF32 off run on the FMA units), HBM 3.35 TB/s; A100 SXM 312 / 19.5 TFLOP/s, 2.0 TB/s.
  GEMMs at peak (the dense floor too), so ratios to the floor are the model's, not cuBLAS efficiency.
* L2 -> SM bandwidth: 8 TB/s (H100 SXM), 5 TB/s (A100): Chips and Cheese measured 5.5-7 TB/s on an H100 PCIe
  (114 SMs, 1.755 GHz), scaled to the SXM's 132 SMs; not a datasheet number (roofline.py prints the
  estimate with 1.5x that bandwidth as a sensitivity column). Every tile of a Triton kernel reads its X and W
  operand tiles from L2 (the tile's arithmetic intensity is BN*BV/(BN+BV) FLOP per byte in bf16: 43 at
  64x128, 64 at 128x128, so small tiles are L2-bound, not tensor-bound); DRAM sees them once per group of
  programs that share them (grouped order: W tiles shared by GROUP row blocks, X tiles by the vocab blocks of
  one wave, one resident program per SM -- the fused kernels use ~255 registers x 256 threads, the whole
  file). The fused kernels' autotune picks the fastest config: the model takes the best of each list.
* fp32 atomics (``tl.atomic_add`` of dX/dW tiles) are reductions executed in L2: 4 bytes of L2 traffic per
  add, at the L2 bandwidth times ATOMIC_EFFICIENCY (roofline.py also prints the estimate at half that rate
  and with atomics free as sensitivity lines). The reduced dX/dW are written to DRAM once at the end.
  ATOMIC_EFFICIENCY is measured, not assumed: the atomic backward's time less that of the same tiles storing
  their gradient and less its in-tile dX/dW GEMMs, over its bytes of atomics, as a fraction of the assumed L2
  bandwidth (benchmarks/results/gpu/profile-bf16.md).
* exp/log run on the SFUs (16 per SM per clock): H100 132 SMs x 1.83 GHz, A100 108 SMs x 1.41 GHz; inside a
  fused kernel they serialize with the MMAs (no warp specialization), so they add to its compute time.
* cuBLAS GEMMs move each operand and the output through DRAM once (their tiling gets L2 reuse); an addmm
  accumulating into an fp32 buffer also reads it.
* eager PyTorch: its elementwise traffic per logit element is traced from the reference code (torch
  dispatch: bytes of every non-GEMM op's inputs and outputs) by benchmarks/roofline.py, passed in here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GPU:
    name: str
    tensor_tflops: float  # bf16/fp16 dense
    fp32_tflops: float    # FMA (no TF32)
    hbm_tbs: float
    l2_tbs: float
    sms: int
    sfu_per_s: float      # exp/log per second


GPUS = {
    "H100": GPU("H100 SXM", 989.0, 67.0, 3.35, 8.0, 132, 132 * 16 * 1.83e9),
    "A100": GPU("A100 SXM", 312.0, 19.5, 2.0, 5.0, 108, 108 * 16 * 1.41e9),
}
ATOMIC_EFFICIENCY = 0.14  # measured, see the module docstring
# Host-side cost of one kernel launch that the GPU cannot hide behind the previous one when kernels are
# short (a typical CUDA launch latency; not measured here). Counted where a backend's launches scale with
# its chunk count (chunked).
LAUNCH_SECONDS = 5e-6


@dataclass
class Kernel:
    name: str
    flops: float = 0.0          # GEMM FLOPs
    dram: float = 0.0           # bytes
    l2: float = 0.0             # bytes through L2 (tile operand reads)
    atomics: float = 0.0        # bytes of fp32 atomic adds
    sfu: float = 0.0            # exp/log count
    launch: float = 0.0         # kernel launches (LAUNCH_SECONDS each, added to the kernel's time)
    fused_epilogue: bool = True  # SFU work serializes with the MMAs

    def seconds(self, gpu: GPU, fp32: bool, atomic_efficiency: float) -> float:
        rate = (gpu.fp32_tflops if fp32 else gpu.tensor_tflops) * 1e12
        compute = self.flops / rate
        sfu = self.sfu / gpu.sfu_per_s
        compute = compute + sfu if self.fused_epilogue else max(compute, sfu)
        atomic_time = 0.0 if atomic_efficiency == math.inf else self.atomics / (gpu.l2_tbs * 1e12 * atomic_efficiency)
        l2 = self.l2 / (gpu.l2_tbs * 1e12) + atomic_time
        return max(compute, self.dram / (gpu.hbm_tbs * 1e12), l2) + self.launch * LAUNCH_SECONDS


@dataclass
class Shape:
    n: int
    h: int
    v: int
    dtype: str = "bf16"  # bf16 | fp32
    augmented: bool = True
    reverse: bool = True

    @property
    def b(self) -> int:
        return 2 if self.dtype == "bf16" else 4

    @property
    def models(self) -> int:
        return 3 if self.augmented else 2

    @property
    def gemm(self) -> float:
        return 2.0 * self.n * self.h * self.v


def cublas_gemm(name, m, k, n, b_in, b_out, accumulate=False) -> Kernel:
    return Kernel(name, flops=2.0 * m * k * n,
                  dram=(m * k + k * n) * b_in + m * n * b_out * (2 if accumulate else 1), fused_epilogue=False)


def _tiled_gemm_traffic(s: Shape, bn: int, bv: int, group: int, gpu: GPU, rows: float = None):
    """(DRAM, L2) bytes of one model's X and W tiles over a (row block x vocab block) grid, grouped order."""
    n = s.n if rows is None else rows
    x, w = n * s.h * s.b, s.v * s.h * s.b
    row_blocks, col_blocks = math.ceil(n / bn), math.ceil(s.v / bv)
    l2 = x * col_blocks + w * row_blocks
    cols_per_wave = max(1, gpu.sms // group)
    dram = x * math.ceil(col_blocks / cols_per_wave) + w * math.ceil(row_blocks / group)
    return dram, l2


# ---- backends ------------------------------------------------------------------------------------------------

def fused_v2(s: Shape, gpu: GPU, kept_fraction: float = 1.0, store_g: bool = False,
             forward_tile=None, backward_tile=None) -> list[Kernel]:
    """The fused Triton backend (rklu/kernels/kl/triton_fused/): 2D-tile forward with vocab splits + combine,
    2D-tile backward with the gradient filter (kept fraction f) and fp32 atomics for dX/dW, or (store_g,
    deterministic mode) the gradient of a token chunk in the input dtype + cuBLAS dX/dW. Tiles: the best
    config of each autotune list (what the autotuner would pick), or the given (BLOCK_N, BLOCK_V)."""
    from ..kl import triton_fused as tf
    from ..kl.triton_fused.configs import BACKWARD_SHAPES, FORWARD_SHAPES, vocab_split_size
    from .tiles import GROUP

    key = "fp32" if s.dtype == "fp32" else "bf16"
    fp32 = s.dtype == "fp32"
    f = kept_fraction

    def forward_kernel(tile):
        dram, l2 = _tiled_gemm_traffic(s, tile[0], tile[1], GROUP, gpu)
        part = math.ceil(s.v / vocab_split_size(s.n, s.v)) * s.n * 5 * 4
        return Kernel(f"forward tiles {tile[0]}x{tile[1]}", flops=s.models * s.gemm, dram=s.models * dram + part,
                      l2=s.models * l2, sfu=2.0 * s.n * s.v)

    # Reverse KL: the student tile always, the teacher (models - 1 GEMMs) only for kept tiles. Forward KL:
    # the original too (its tile bounds p_teacher), the augmented one only for kept tiles.
    always = 1 if s.reverse else 2
    teacher = (s.models - always) * f
    sfu = (1 if s.reverse else 3) * s.n * s.v

    def backward_kernel(tile):
        bbn, bbv = tile
        dram, l2 = _tiled_gemm_traffic(s, bbn, bbv, GROUP, gpu)
        if store_g:
            return Kernel(f"backward tiles {bbn}x{bbv} (store g)", flops=(always + teacher) * s.gemm,
                          dram=(always + teacher) * dram + s.n * s.v * s.b, l2=(always + teacher) * l2, sfu=sfu)
        # dX and dW tile GEMMs: 2 GEMMs of FLOPs, but the gradient tile is in registers, so each reads one
        # operand (W for dX, X for dW): together one GEMM's worth of operand traffic.
        atomics = f * 4.0 * (s.n * s.h * math.ceil(s.v / bbv) + s.v * s.h * math.ceil(s.n / bbn))
        return Kernel(f"backward tiles {bbn}x{bbv} (atomic dX/dW)", flops=(always + teacher + 2 * f) * s.gemm,
                      dram=(always + teacher + f) * dram + 4.0 * (s.n * s.h + s.v * s.h),
                      l2=(always + teacher + f) * l2, atomics=atomics, sfu=sfu)

    def best(make, shapes, given):
        cands = [given] if given else [tuple(t[:2]) for t in shapes[key]]
        return min((make(t) for t in cands), key=lambda k: k.seconds(gpu, fp32, ATOMIC_EFFICIENCY))

    out = [Kernel("vocab order (GEMV + argsort)", dram=s.v * s.h * s.b + s.n * s.h * s.b + 16 * s.v,
                  fused_epilogue=False)]
    fwd = best(forward_kernel, FORWARD_SHAPES, forward_tile)
    part = math.ceil(s.v / vocab_split_size(s.n, s.v)) * s.n * 5 * 4
    out += [fwd, Kernel("combine splits", dram=2 * part, fused_epilogue=False)]
    if not store_g:
        out.append(Kernel("zero dX, dW", dram=4.0 * (s.n * s.h + s.v * s.h), fused_epilogue=False))
    out.append(best(backward_kernel, BACKWARD_SHAPES, backward_tile))
    if store_g:
        chunk = max(1, tf.DETERMINISTIC_CHUNK_ELEMENTS // s.v)
        chunks = math.ceil(s.n / chunk)
        out.append(cublas_gemm("dX = G @ W (cuBLAS)", s.n, s.v, s.h, s.b, 4))
        dw = cublas_gemm("dW += G.T @ X (cuBLAS, per chunk)", s.v, s.n, s.h, s.b, 4)
        dw.dram += (chunks - 1) * 2 * 4.0 * s.v * s.h  # the fp32 accumulator read+written per chunk
        out.append(dw)
    out.append(Kernel("cast dX, dW to input dtype", dram=(4 + s.b) * (s.n * s.h + s.v * s.h), fused_epilogue=False))
    return out


def chunked(s: Shape, gpu: GPU, chunk_tokens: int | None = None, grad_tokens: int | None = None,
            **knobs) -> list[Kernel]:
    """backend="chunked" (rklu/kernels/kl/triton_chunked.py): per logit chunk, fp32-output cuBLAS logit GEMMs
    and one Triton kernel (two passes over the chunk's fp32 logits; the second assumed to miss L2: a chunk's
    logits are hundreds of MB) writing the gradient G in the input dtype; per G block (``grad_tokens``,
    whole logit chunks or all N), cuBLAS dX and dW. Each G block after the first reads and writes the fp32
    [V, H] dW accumulator in full (cuBLAS beta = 1): 8 * V * H bytes of DRAM traffic per block, the cost of
    small blocks. Every logit chunk also pays LAUNCH_SECONDS per launch (its GEMMs and kernel). Chunks: the
    given ones (``chunk_tokens`` alone sets both), else the chunk policy's plan under ``knobs``
    (max_chunk_bytes, memory_fraction) with FREE_BYTES free. Per policy: benchmarks/cost_model_report.py."""
    plan = chunk_plan(s, chunk_tokens, grad_tokens, **knobs)
    gb = 2 if s.dtype == "bf16" else 4
    chunks = math.ceil(s.n / plan.logit_tokens)
    blocks = math.ceil(s.n / plan.grad_tokens)
    out = [cublas_gemm(f"logit GEMM x{s.models} (fp32 out)", s.n, s.h, s.v, s.b, 4) for _ in range(s.models)]
    out.append(Kernel("loss + gradient kernel (2 passes)", dram=s.n * s.v * (2 * 4 * s.models + gb),
                      sfu=(3 if s.reverse else 4) * s.n * s.v, fused_epilogue=False))
    out.append(cublas_gemm("dX = G @ W", s.n, s.v, s.h, gb, 4))
    dw = cublas_gemm("dW += G.T @ X (per G block)", s.v, s.n, s.h, gb, 4)
    dw.dram += (blocks - 1) * 2 * 4.0 * s.v * s.h
    out.append(dw)
    out.append(Kernel("cast dX, dW", dram=(4 + s.b) * (s.n * s.h + s.v * s.h), fused_epilogue=False))
    out.append(Kernel("launches", launch=chunks * (s.models + 1) + blocks * 2))
    return out


def chunk_plan(s: Shape, chunk_tokens: int | None = None, grad_tokens: int | None = None, **knobs):
    """The chunked backend's plan for shape ``s``: the chunk policy with FREE_BYTES free, or the given chunks."""
    from ..kl import chunk_policy as cp

    gb = 2 if s.dtype == "bf16" else 4
    if chunk_tokens is not None:
        c = min(s.n, chunk_tokens)
        g = min(s.n, grad_tokens or c)
        return cp.ChunkPlan(c, g, None, cp.working_set_bytes(c, g, s.v, gb, s.augmented), True, "given")
    return cp.plan_chunks(s.n, s.h, s.v, gb, s.augmented, free_bytes=FREE_BYTES, **knobs)


# Free GPU memory assumed by the report (an 80 GB card holding a 7B model's training state: ~40 GB free).
FREE_BYTES = 40 << 30


def estimate(kernels: list[Kernel], s: Shape, gpu: GPU, atomic_efficiency: float = ATOMIC_EFFICIENCY,
             fp32_gemms: bool | None = None) -> float:
    fp32 = s.dtype == "fp32" if fp32_gemms is None else fp32_gemms
    return sum(k.seconds(gpu, fp32, atomic_efficiency) for k in kernels)
