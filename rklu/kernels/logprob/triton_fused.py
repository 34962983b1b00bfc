"""Triton backend of the fused linear log-prob: log p(label) per token from hidden states and the lm_head,
tiled over tokens x vocab, never building [N, V]. Same structure as the fused KL kernel (kl/triton_fused/).

Forward, two passes:
1. a 2D grid of (row block x vocab split) programs, launched as a 1D grid in grouped order (GROUP row blocks
   share the W tiles of a split while they are in L2). Each program walks its split's vocab tiles with an
   online log-sum-exp (float32 logits from tl.dot's float32 accumulator, never rounded to the input dtype)
   and picks out the label's logit when it falls in its range; it writes (max, normalizer, label logit).
2. a combine kernel merges the splits per token: m = max m_s, d = sum d_s exp(m_s - m), and
   log p = (z_y - m) - log d. Only (m, log d) per token are kept for backward: O(N).
Splitting the vocabulary keeps the GPU busy when there are few tokens (a 4k-token batch is 64 row blocks),
which is the common case for the NLL terms at 128k-vocab.

Backward recomputes each (row block, vocab block) tile, forms the gradient of log p(y) w.r.t. the logits,
``g = upstream * (onehot(y) - softmax(z))``, and adds ``g @ W_tile`` to dX and ``g.T @ X_tile`` to dW with
float32 atomics (CCE-style). Tiles whose gradient is below ``GRAD_FILTER_EPS`` everywhere skip the two GEMMs
(gradient filtering; the default 0.0 only skips tiles whose softmax underflowed to exactly 0, so results are
unchanged). Under ``torch.use_deterministic_algorithms(True)`` a kernel instead writes the gradient of a
chunk of tokens, ``[chunk, V]``, and dX/dW come from torch.mm (bitwise reproducible, O(chunk x V) memory).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..common import logit_transform as lt
from ..common.compile_spec import CompileSpec
# the same GEMM precision modes and tile helpers as the KL kernel (NATIVE / IEEE / UPCAST: see common/tiles.py)
from ..common.tiles import (  # noqa: F401
    AUTOTUNE, GROUP, IEEE, INTERPRET, NATIVE, UPCAST, _atomic_dx_dw, _grad_operand, _logit_tile, _model_tile,
    gemm_dtype, gemm_precision,
)
from ..common.tiles import _grouped_pid as _grouped  # (row block, vocab block) of a program, grouped order
from ..common.logit_transform_triton import _transform_with_grad  # the head's scale and softcap


# Skip a backward tile's GEMMs when max |g| <= this. 0.0: only exactly-zero tiles (results unchanged).
# CCE uses ~2**-12 for bf16 training, trading exactness for speed at large V; opt in by setting it.
GRAD_FILTER_EPS = 0.0

# One float32 [chunk, V] gradient buffer in deterministic mode holds about this many elements (16 MiB).
CHUNK_ELEMENTS = 1 << 22


@triton.jit
def _gradient_tile(X, W, B, LABELS, STATS, GRAD_OUT, rows, cols, row_mask, col_mask, H, stride_x, stride_w,
                   scale, cap, inv_cap, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """upstream * (onehot(label) - softmax(z)) * dz/dl for one recomputed tile; zero outside the edges."""
    z, factor = _transform_with_grad(_logit_tile(X, W, B, rows, cols, row_mask, col_mask, H, stride_x, stride_w,
                                                 HAS_BIAS, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H),
                                     scale, cap, inv_cap, HAS_SOFTCAP)
    m = tl.load(STATS + rows * 2 + 0, mask=row_mask, other=0.0)
    log_d = tl.load(STATS + rows * 2 + 1, mask=row_mask, other=0.0)
    upstream = tl.load(GRAD_OUT + rows, mask=row_mask, other=0.0)
    labels = tl.load(LABELS + rows, mask=row_mask, other=-1)
    inside = row_mask[:, None] & col_mask[None, :]
    # (z - m) - log d, not z - lse: exact near the max even for logits of magnitude 1e4.
    p = tl.exp(tl.where(inside, (z - m[:, None]) - log_d[:, None], float("-inf")))
    onehot = tl.where(cols[None, :] == labels[:, None], 1.0, 0.0)
    return (onehot - p) * upstream[:, None] * factor


@triton.jit
def _forward_split_kernel(X, W, B, LABELS, PART, N, V, H, stride_x, stride_w, NUM_SPLITS, scale, cap, inv_cap,
                          HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
                          GROUP_N: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    row_block, split = _grouped(tl.program_id(0), tl.cdiv(N, BLOCK_N), NUM_SPLITS, GROUP_N)
    rows = row_block * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    labels = tl.load(LABELS + rows, mask=row_mask, other=-1)
    # Splits own whole vocab tiles; trailing splits may be empty (m = -inf, d = 0, which the combine drops).
    tiles_per_split = tl.cdiv(tl.cdiv(V, BLOCK_V), NUM_SPLITS)
    v_start = split * tiles_per_split * BLOCK_V
    v_end = tl.minimum(v_start + tiles_per_split * BLOCK_V, V)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    d = tl.zeros((BLOCK_N,), tl.float32)
    z_label = tl.zeros((BLOCK_N,), tl.float32)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        z = _model_tile(X, W, B, rows, cols, row_mask, col_mask, H, stride_x, stride_w, scale, cap, inv_cap, HAS_BIAS,
                        HAS_SOFTCAP, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        valid = col_mask[None, :]
        # Each tile has a valid column, so new_m is finite and exp(m - new_m) is exp(-inf) = 0 at first.
        new_m = tl.maximum(m, tl.max(tl.where(valid, z, float("-inf")), axis=1))
        d = d * tl.exp(m - new_m) + tl.sum(tl.exp(tl.where(valid, z - new_m[:, None], float("-inf"))), axis=1)
        m = new_m
        z_label += tl.sum(tl.where(cols[None, :] == labels[:, None], z, 0.0), axis=1)
    part = PART + (rows * NUM_SPLITS + split) * 3
    tl.store(part + 0, m, mask=row_mask)
    tl.store(part + 1, d, mask=row_mask)
    tl.store(part + 2, z_label, mask=row_mask)


@triton.jit
def _combine_kernel(PART, STATS, LOGP, N, NUM_SPLITS, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    splits = tl.arange(0, BLOCK_S)
    mask = row_mask[:, None] & (splits < NUM_SPLITS)[None, :]
    part = PART + (rows[:, None] * NUM_SPLITS + splits[None, :]) * 3
    m_s = tl.load(part + 0, mask=mask, other=float("-inf"))
    d_s = tl.load(part + 1, mask=mask, other=0.0)
    z_label = tl.sum(tl.load(part + 2, mask=mask, other=0.0), axis=1)
    m = tl.where(row_mask, tl.max(m_s, axis=1), 0.0)
    log_d = tl.log(tl.where(row_mask, tl.sum(d_s * tl.exp(m_s - m[:, None]), axis=1), 1.0))
    # Max and log-normalizer are kept apart: log p = (z_y - m) - log d stays exact near the max.
    tl.store(STATS + rows * 2 + 0, m, mask=row_mask)
    tl.store(STATS + rows * 2 + 1, log_d, mask=row_mask)
    tl.store(LOGP + rows, (z_label - m) - log_d, mask=row_mask)


@triton.jit
def _backward_kernel(X, W, B, LABELS, STATS, GRAD_OUT, DX, DW, DB, N, V, H, stride_x, stride_w, filter_eps,
                     scale, cap, inv_cap, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                     PRECISION: tl.constexpr, GROUP_N: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    row_block, v_block = _grouped(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(V, BLOCK_V), GROUP_N)
    rows = row_block * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = v_block * BLOCK_V + tl.arange(0, BLOCK_V)
    row_mask = rows < N
    col_mask = cols < V
    g = _gradient_tile(X, W, B, LABELS, STATS, GRAD_OUT, rows, cols, row_mask, col_mask, H, stride_x, stride_w,
                       scale, cap, inv_cap, HAS_BIAS, HAS_SOFTCAP, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
    if tl.max(tl.max(tl.abs(g), axis=1), axis=0) > filter_eps:
        if HAS_BIAS:
            tl.atomic_add(DB + cols, tl.sum(g, axis=0), mask=col_mask)
        g_in = _grad_operand(g, X, PRECISION)
        _atomic_dx_dw(g_in, X, W, DX, DW, rows, cols, row_mask, col_mask, H, stride_x, stride_w,
                      PRECISION, BLOCK_H)


@triton.jit
def _gradient_chunk_kernel(X, W, B, LABELS, STATS, GRAD_OUT, G, row0, n_rows, V, H, stride_x, stride_w, stride_g,
                           scale, cap, inv_cap, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                           PRECISION: tl.constexpr, GROUP_N: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """Deterministic mode: the gradient w.r.t. the logits of rows [row0, row0 + n_rows), written to G."""
    row_block, v_block = _grouped(tl.program_id(0), tl.cdiv(n_rows, BLOCK_N), tl.cdiv(V, BLOCK_V), GROUP_N)
    local = row_block * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = row0 + local
    cols = v_block * BLOCK_V + tl.arange(0, BLOCK_V)
    row_mask = local < n_rows
    col_mask = cols < V
    g = _gradient_tile(X, W, B, LABELS, STATS, GRAD_OUT, rows, cols, row_mask, col_mask, H, stride_x, stride_w,
                       scale, cap, inv_cap, HAS_BIAS, HAS_SOFTCAP, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
    tl.store(G + local[:, None] * stride_g + cols[None, :], g.to(G.dtype.element_ty),
             mask=row_mask[:, None] & col_mask[None, :])


# ---------------------------------------------------------------------------------------------- launch

def interpreter_block_sizes() -> dict:
    """The interpreter steps through programs in Python (numpy per op): few, large tiles are fastest.
    RKLU_INTERPRET_BLOCKS=N,V,H overrides them (tests use it to put many tiles through small shapes)."""
    override = os.environ.get("RKLU_INTERPRET_BLOCKS")
    if override:
        bn, bv, bh = (int(s) for s in override.split(","))
        return dict(BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh, num_warps=4)
    return dict(BLOCK_N=32, BLOCK_V=2048, BLOCK_H=64, num_warps=4)


# CUDA autotune configs, (BLOCK_N, BLOCK_V, BLOCK_H, num_warps, num_stages), per operand width: every one
# compiles for sm_80 and sm_90 without register spills (STACK 0 in cuobjdump) and within shared memory,
# checked through compile_specs(). fp32 inputs use IEEE tl.dot (FMA, no tensor cores), which keeps the whole
# operand tiles in registers: only BLOCK_H = 16 (32 for 32x32 tiles) stays spill-free there.
_FORWARD = {
    "16bit": [(64, 128, 64, 8, 3), (128, 128, 32, 8, 3), (64, 256, 32, 8, 3), (64, 128, 32, 4, 4)],
    "fp32": [(32, 64, 16, 4, 3), (64, 64, 16, 8, 3), (32, 128, 16, 4, 3), (64, 128, 16, 8, 3), (128, 64, 16, 8, 3)],
}
# With a softcap, the gradient-chunk kernel's tanh temporaries spill every 16-bit tile but the first on sm_90,
# and the backward's 128x128 tile: those variants launch with the spill-free subset.
_SOFTCAP_DROPS = {
    "gradient_chunk": {(128, 128, 32, 8, 3), (64, 256, 32, 8, 3), (64, 128, 32, 4, 4)},
    "backward": {(128, 128, 32, 8, 2)},
}
# The backward keeps the gradient tile live (registers, and as a GEMM operand in shared memory) through the
# dX/dW loop next to a [BLOCK_N, BLOCK_H] and a [BLOCK_V, BLOCK_H] product, so its tiles are smaller.
_BACKWARD = {
    "16bit": [(64, 128, 32, 8, 3), (128, 128, 32, 8, 2), (64, 64, 32, 4, 3), (32, 128, 32, 4, 3), (128, 64, 32, 8, 3)],
    "fp32": [(32, 64, 16, 4, 3), (64, 64, 16, 8, 3), (64, 64, 16, 8, 2), (64, 128, 16, 8, 2), (32, 32, 32, 4, 2)],
}


def _configs(shapes) -> list:
    return [triton.Config(dict(BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh), num_warps=w, num_stages=st)
            for bn, bv, bh, w, st in shapes]


def kernel_configs(name: str, width: str = "16bit", softcap: bool = False) -> list:
    """Autotune list of kernel ``name`` ("forward", "gradient_chunk": the forward's tiles; "backward")."""
    shapes = _BACKWARD[width] if name == "backward" else _FORWARD[width]
    if softcap and width == "16bit":
        shapes = [s for s in shapes if s not in _SOFTCAP_DROPS.get(name, ())]
    return _configs(shapes)


def forward_configs(width: str = "16bit", softcap: bool = False) -> list:
    return kernel_configs("forward", width, softcap)


def backward_configs(width: str = "16bit", softcap: bool = False) -> list:
    return kernel_configs("backward", width, softcap)


def _width(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


COMBINE_BLOCK_N = 64
MAX_SPLITS = 64

TUNED = {}
if AUTOTUNE:
    # Keyed on (H, V) (+ the tensor dtypes, which the autotuner appends): one config per model head.
    for _w in ("16bit", "fp32"):
        for _cap in (False, True):
            TUNED["forward", _w, _cap] = triton.autotune(
                kernel_configs("forward", _w, _cap), key=["H", "V"])(_forward_split_kernel)
            TUNED["backward", _w, _cap] = triton.autotune(
                kernel_configs("backward", _w, _cap), key=["H", "V"], reset_to_zero=["DX", "DW", "DB"])(_backward_kernel)
            TUNED["gradient_chunk", _w, _cap] = triton.autotune(
                kernel_configs("gradient_chunk", _w, _cap), key=["H", "V"])(_gradient_chunk_kernel)


def _launch(name, kernel, grid_of, *args, **kwargs):
    """Autotuned on CUDA; RKLU_TRITON_AUTOTUNE=0 takes the first config; the interpreter its own tiles."""
    width, softcap = _width(args[0].dtype), bool(kwargs["HAS_SOFTCAP"])
    if (name, width, softcap) in TUNED:
        return TUNED[name, width, softcap][grid_of](*args, **kwargs)
    if INTERPRET:
        blocks = interpreter_block_sizes()
    else:
        c = kernel_configs(name, width, softcap)[0]
        blocks = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
    return kernel[grid_of(blocks)](*args, **kwargs, **blocks)


def num_splits(n: int, v: int, device: torch.device) -> int:
    """Vocab splits of the forward: enough programs to fill the GPU (~4 per SM) when there are few row
    blocks; the interpreter uses 4 so the split/combine path is what the CPU tests exercise."""
    if INTERPRET or device.type != "cuda":
        return 4
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    row_blocks = triton.cdiv(n, 64)
    return max(1, min(MAX_SPLITS, triton.cdiv(4 * sms, row_blocks), triton.cdiv(v, 256)))


def _grid_2d(n_rows, v):
    return lambda meta: (triton.cdiv(n_rows, meta["BLOCK_N"]) * triton.cdiv(v, meta["BLOCK_V"]),)


def token_logprob(x, w, b, labels, *, chunk_tokens, transform=lt.IDENTITY):
    """The log-prob op of backend "triton" (common/backends.py); it has no token chunks (``chunk_tokens``)."""
    dtype = gemm_dtype(x, w)
    return TritonTokenLogprob.apply(x.to(dtype), w.to(dtype), b, labels, transform)


class TritonTokenLogprob(torch.autograd.Function):
    """Counted tokens only: x [N, H] and w [V, H] in one dtype, labels [N] in [0, V) -> log p(label) [N] fp32."""

    @staticmethod
    def forward(ctx, x, w, b, labels, transform=lt.IDENTITY):
        x, w, labels = x.contiguous(), w.contiguous(), labels.contiguous()
        n, h = x.shape
        v = w.shape[0]
        splits = num_splits(n, v, x.device)
        part = torch.empty((n, splits, 3), dtype=torch.float32, device=x.device)
        stats = torch.empty((n, 2), dtype=torch.float32, device=x.device)  # max, log-normalizer
        logp = torch.empty(n, dtype=torch.float32, device=x.device)
        *transform_args, has_softcap = transform.kernel_args()
        flags = dict(HAS_BIAS=b is not None, HAS_SOFTCAP=has_softcap, PRECISION=gemm_precision(x.dtype),
                     GROUP_N=GROUP)
        bias = b if b is not None else x  # never dereferenced without HAS_BIAS
        _launch("forward", _forward_split_kernel,
                lambda meta: (triton.cdiv(n, meta["BLOCK_N"]) * splits,),
                x, w, bias, labels, part, n, v, h, x.stride(0), w.stride(0), splits, *transform_args, **flags)
        _combine_kernel[(triton.cdiv(n, COMBINE_BLOCK_N),)](
            part, stats, logp, n, splits, BLOCK_N=COMBINE_BLOCK_N, BLOCK_S=triton.next_power_of_2(splits))
        ctx.save_for_backward(x, w, b, labels, stats)
        ctx.transform = transform
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        x, w, b, labels, stats = ctx.saved_tensors
        n, h = x.shape
        v = w.shape[0]
        grad_logp = grad_logp.float().contiguous()
        *transform_args, has_softcap = ctx.transform.kernel_args()
        flags = dict(HAS_BIAS=b is not None, HAS_SOFTCAP=has_softcap, PRECISION=gemm_precision(x.dtype),
                     GROUP_N=GROUP)
        bias = b if b is not None else x
        if torch.are_deterministic_algorithms_enabled():
            dx, dw, db = _deterministic_backward(x, w, bias, labels, stats, grad_logp, transform_args, flags)
        else:
            dx = torch.zeros((n, h), dtype=torch.float32, device=x.device)
            dw = torch.zeros((v, h), dtype=torch.float32, device=x.device)
            db = torch.zeros(v, dtype=torch.float32, device=x.device) if b is not None else dx
            _launch("backward", _backward_kernel, _grid_2d(n, v),
                    x, w, bias, labels, stats, grad_logp, dx, dw, db, n, v, h, x.stride(0), w.stride(0),
                    float(GRAD_FILTER_EPS), *transform_args, **flags)
        return dx.to(x.dtype), dw.to(w.dtype), None if b is None else db.to(b.dtype), None, None


def _deterministic_backward(x, w, bias, labels, stats, grad_logp, transform_args, flags):
    """Gradient w.r.t. the logits of a chunk of tokens from Triton, then dX/dW/db by torch.mm: no atomics."""
    n, h = x.shape
    v = w.shape[0]
    upcast = flags["PRECISION"] == UPCAST
    # The GEMM operands: input dtype like eager autograd; float32 when the interpreter upcasts bf16.
    g_dtype = torch.float32 if upcast or x.dtype == torch.float32 else x.dtype
    w_op = w.to(g_dtype)
    x_op = x.to(g_dtype)
    chunk = max(64, CHUNK_ELEMENTS // v)
    g = torch.empty((min(n, chunk), v), dtype=g_dtype, device=x.device)
    dx = torch.empty((n, h), dtype=torch.float32, device=x.device)
    dw = torch.zeros((v, h), dtype=torch.float32, device=x.device)
    db = torch.zeros(v, dtype=torch.float32, device=x.device) if flags["HAS_BIAS"] else None
    for start in range(0, n, chunk):
        rows = min(n, start + chunk) - start
        g_chunk = g[:rows]
        _launch("gradient_chunk", _gradient_chunk_kernel, _grid_2d(rows, v),
                x, w, bias, labels, stats, grad_logp, g_chunk, start, rows, v, h, x.stride(0), w.stride(0),
                g_chunk.stride(0), *transform_args, **flags)
        dx[start:start + rows] = torch.mm(g_chunk, w_op)
        dw += torch.mm(g_chunk.T, x_op[start:start + rows])
        if db is not None:
            db += g_chunk.float().sum(0)
    return dx, dw, db


# ------------------------------------------------------------------------------ compile specs (sm_80/90)

def compile_specs() -> list:
    """Every CUDA kernel x dtype x bias variant with its autotune configs, for the spill/smem checker."""
    specs = []
    for dtype in ("bf16", "fp32"):
        prec = NATIVE if dtype == "bf16" else IEEE
        width = "16bit" if dtype == "bf16" else "fp32"
        for has_bias, softcap in ((False, False), (True, False), (False, True), (True, True)):
            variant = ("bias" if has_bias else "nobias") + (",softcap" if softcap else "")
            common = dict(HAS_BIAS=has_bias, HAS_SOFTCAP=softcap, PRECISION=prec, GROUP_N=GROUP)
            ptr, bias_ptr = f"*{dtype}", f"*{dtype}"
            tiles = dict(BLOCK_N="constexpr", BLOCK_V="constexpr", BLOCK_H="constexpr")
            flag_sig = dict(scale="fp32", cap="fp32", inv_cap="fp32", HAS_BIAS="constexpr",
                            HAS_SOFTCAP="constexpr", PRECISION="constexpr", GROUP_N="constexpr")
            specs.append(CompileSpec(
                "token_logprob_forward_split", _forward_split_kernel,
                dict(X=ptr, W=ptr, B=bias_ptr, LABELS="*i64", PART="*fp32", N="i32", V="i32", H="i32",
                     stride_x="i32", stride_w="i32", NUM_SPLITS="i32", **flag_sig, **tiles),
                common, tuple(kernel_configs("forward", width, softcap)), dtype, variant,
                ("X", "W", "stride_x", "stride_w", "H")))
            specs.append(CompileSpec(
                "token_logprob_backward", _backward_kernel,
                dict(X=ptr, W=ptr, B=bias_ptr, LABELS="*i64", STATS="*fp32", GRAD_OUT="*fp32", DX="*fp32",
                     DW="*fp32", DB="*fp32", N="i32", V="i32", H="i32", stride_x="i32", stride_w="i32",
                     filter_eps="fp32", **flag_sig, **tiles),
                common, tuple(kernel_configs("backward", width, softcap)), dtype, variant,
                ("X", "W", "DX", "DW", "stride_x", "stride_w", "H")))
            g_ptr = "*fp32" if dtype == "fp32" else ptr
            specs.append(CompileSpec(
                "token_logprob_gradient_chunk", _gradient_chunk_kernel,
                dict(X=ptr, W=ptr, B=bias_ptr, LABELS="*i64", STATS="*fp32", GRAD_OUT="*fp32", G=g_ptr,
                     row0="i32", n_rows="i32", V="i32", H="i32", stride_x="i32", stride_w="i32", stride_g="i32",
                     **flag_sig, **tiles),
                common, tuple(kernel_configs("gradient_chunk", width, softcap)), dtype, variant,
                ("X", "W", "G", "stride_x", "stride_w", "H")))
    specs.append(CompileSpec(
        "token_logprob_combine", _combine_kernel,
        dict(PART="*fp32", STATS="*fp32", LOGP="*fp32", N="i32", NUM_SPLITS="i32", BLOCK_N="constexpr",
             BLOCK_S="constexpr"),
        dict(BLOCK_N=COMBINE_BLOCK_N, BLOCK_S=MAX_SPLITS), (triton.Config({}, num_warps=4, num_stages=1),),
        "fp32", "any"))
    return specs
