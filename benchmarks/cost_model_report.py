"""Cost models the roofline report needs beside the runtime one (rklu/kernels/common/cost_model.py, which
``backend="auto"`` uses): the dense floor, eager PyTorch, the torch backend on a GPU, and the first fused kernel
(v1) as a baseline. Same units and assumptions as the runtime model (its docstring).
"""
from __future__ import annotations

import math

from rklu.kernels.common import cost_model as cm
from rklu.kernels.common.cost_model import GPU, Kernel, Shape, cublas_gemm
from rklu.kernels.common.torch_chunks import torch_chunk_tokens


def floor_seconds(s: Shape, gpu: GPU) -> float:
    """The dense floor: three logit GEMMs + dX + dW at peak (two logit GEMMs without the augmented model)."""
    rate = (gpu.fp32_tflops if s.dtype == "fp32" else gpu.tensor_tflops) * 1e12
    return (s.models + 2) * s.gemm / rate


# The first fused kernel (v1), a baseline of the report: tile (64, 128, 64); forward one program per row block
# walking all of V; backward one program per vocab block walking all row blocks, dW read-modify-written per
# row block in global memory, dX by atomics.
V1_TILE = (64, 128, 64)


def fused_v1(s: Shape, gpu: GPU) -> list[Kernel]:
    bn, bv, _ = V1_TILE
    row_blocks, col_blocks = math.ceil(s.n / bn), math.ceil(s.v / bv)
    x, w = s.n * s.h * s.b, s.v * s.h * s.b
    # forward: programs = row blocks, all walk V in the same order, so W blocks are shared in L2 across the
    # wave; each program re-reads its X tile per vocab block (512 KB per program: no reuse in L2 at 132+).
    fwd = Kernel("v1 forward", flops=s.models * s.gemm, dram=s.models * (x * col_blocks + w * math.ceil(row_blocks / gpu.sms)),
                 l2=s.models * (x * col_blocks + w * row_blocks), sfu=2.0 * s.n * s.v)
    # backward: programs = vocab blocks; each walks every row block: X re-read per vocab block (shared in L2
    # across the wave), W tiles re-read per row block, dW tile read+written per row block, dX atomics.
    bwd = Kernel("v1 backward", flops=(s.models + 2) * s.gemm,
                 dram=(s.models + 1) * x * math.ceil(col_blocks / gpu.sms) + (s.models + 1) * w * row_blocks
                 + 2 * 4.0 * s.v * s.h * row_blocks,
                 l2=(s.models + 1) * (x * col_blocks + w * row_blocks),
                 atomics=4.0 * s.n * s.h * col_blocks, sfu=1.0 * s.n * s.v)
    return [fwd, bwd]


def eager(s: Shape, gpu: GPU, bytes_per_element: float) -> list[Kernel]:
    """Materialized logits: 3 cuBLAS logit GEMMs (input-dtype output), the reference math on [N, V] as
    separate elementwise kernels (``bytes_per_element``, traced), dX/dW GEMMs from the logit gradient."""
    out = [cublas_gemm("logit GEMM (materialized)", s.n, s.h, s.v, s.b, s.b) for _ in range(s.models)]
    out.append(Kernel("elementwise reference math (fwd+bwd)", dram=bytes_per_element * s.n * s.v,
                      sfu=4.0 * s.n * s.v, fused_epilogue=False))
    out.append(cublas_gemm("dX GEMM", s.n, s.v, s.h, s.b, s.b))
    out.append(cublas_gemm("dW GEMM", s.v, s.n, s.h, s.b, s.b))
    return out


def torch_chunked(s: Shape, gpu: GPU, bytes_per_element: float) -> list[Kernel]:
    """The torch backend on a GPU: fp32 weights (cast once), fp32 cuBLAS GEMMs per chunk (FMA rate, no TF32),
    torch elementwise chunk math (``bytes_per_element``, traced)."""
    chunks = math.ceil(s.n / torch_chunk_tokens(s.v))
    out = [Kernel("cast weights to fp32", dram=s.models * s.v * s.h * (s.b + 4), fused_epilogue=False)]
    out += [cublas_gemm("fp32 logit GEMM", s.n, s.h, s.v, 4, 4) for _ in range(s.models)]
    out.append(Kernel("chunk math (torch ops)", dram=bytes_per_element * s.n * s.v, sfu=4.0 * s.n * s.v,
                      fused_epilogue=False))
    out.append(cublas_gemm("fp32 dX GEMM", s.n, s.v, s.h, 4, 4))
    dw = cublas_gemm("fp32 dW addmm per chunk", s.v, s.n, s.h, 4, 4)
    dw.dram += (chunks - 1) * 2 * 4.0 * s.v * s.h
    out.append(dw)
    return out


def chunk_policies(s: Shape, gpu: GPU) -> dict:
    """Modelled time and working set of the chunked backend per chunk policy, at shape ``s``: the default
    (Liger's memory), half and twice that budget, the same budget spent on equal logit and G chunks (no G
    sizing), and the old fixed 4096-token chunk. {name: dict(logit_tokens, grad_tokens, working_set_bytes,
    seconds, ratio_to_floor)}."""
    from rklu.kernels.kl import chunk_policy as cp

    gb = 2 if s.dtype == "bf16" else 4
    liger = cp.liger_extra_bytes(s.n, s.h, s.v)
    equal = max(cp.MIN_CHUNK_TOKENS, liger // ((4 * s.models + gb) * s.v) // cp.CHUNK_ALIGN * cp.CHUNK_ALIGN)
    plans = {
        "default (Liger's memory)": cm.chunk_plan(s),
        "half of Liger's memory": cm.chunk_plan(s, max_chunk_bytes=liger // 2),
        "twice Liger's memory": cm.chunk_plan(s, max_chunk_bytes=2 * liger),
        "Liger's memory, equal chunks": cm.chunk_plan(s, min(s.n, equal)),
        "fixed 4096 tokens": cm.chunk_plan(s, 4096),
    }
    floor = floor_seconds(s, gpu)
    out = {}
    for name, plan in plans.items():
        t = cm.estimate(cm.chunked(s, gpu, plan.logit_tokens, plan.grad_tokens), s, gpu)
        out[name] = dict(logit_tokens=plan.logit_tokens, grad_tokens=plan.grad_tokens,
                         working_set_bytes=plan.working_set_bytes, seconds=t, ratio_to_floor=t / floor)
    return out
