"""Chunked cuBLAS backend (``backend="chunked"``): Liger's structure -- the gradient is computed in the
forward pass, a chunk of tokens at a time -- but the logits are never rounded to bf16.

Per chunk of tokens:
  1. three GEMMs with float32 output from the bf16/fp16 inputs (``torch.mm(x, w.T, out_dtype=torch.float32)``
     on CUDA: tensor cores, fp32 accumulation, fp32 result) for the student, original and augmented logits,
     each model in its own dtype (an fp32 teacher of a bf16 student is not rounded to bf16);
  2. ONE Triton kernel reads the three fp32 logit tiles (plus biases) once to build the teacher and the
     online log-sum-exps of student and teacher and the KL, then a second time, last block first, to write
     the gradient d loss / d student logits in the input dtype (the blocks read last by the first pass are
     the likeliest to be still in L2; with ~1000 rows in flight most of the re-read still comes from DRAM);
  3. two GEMMs for the gradient: dX[chunk] = G @ W_s and dW += G.T @ X_s[chunk] (fp32 outputs/accumulator).
Five cuBLAS GEMMs per chunk, O(chunk * V) extra memory (three fp32 logit buffers and one gradient buffer),
plus O(N * H + V * H) for the fp32 gradient accumulators every backend returns.

Unlike the fused kernel (``triton_fused``, O(N) memory, recomputes the logits in the backward), this path
spends O(chunk * V) memory to run every GEMM through cuBLAS at full tensor-core rate and never recompute.
Where it pays is decided by ``backend="auto"`` (``common/backends.auto_backend``) from the free memory and
the cost model in ``common/cost_model.py`` (its estimates: benchmarks/results/roofline.md).

Numerics: statistics are accumulated relative to the running maxima (no subtraction of two offset-sized
numbers, so a common offset of 1e4 on the teacher logits costs no accuracy); the gradient tile is
``p_s * ((z_s - m_s) - (z_t - m_t) - E_ps[...])`` (reverse) or ``p_s - p_t`` (forward), computed in fp32 and
rounded once to the input dtype as eager autograd would, but from fp32 logits.

On CPU (tests, under TRITON_INTERPRET=1) ``torch.mm`` has no ``out_dtype``: 16-bit operands are upcast to
fp32 first, which is exact (bf16/fp16 -> fp32) and accumulates in fp32 like the CUDA path.
"""
from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from ..common import logit_transform as lt
from ..common.compile_spec import CompileSpec
from ..common.tiles import AUTOTUNE, INTERPRET, gemm_dtype, to_dtype
from ..common.logit_transform_triton import _transform, _transform_with_grad
from .chunk_policy import ChunkPlan, plan_chunks


# Chunk sizes come from a memory budget (chunk_policy.py): by default no more extra memory than Liger's
# FusedLinearJSD for the same shape, the gradient buffer sized apart from the logit buffers.


@triton.jit
def _logits(Z, B, rows, cols, col_mask, stride_z, HAS_B: tl.constexpr):
    z = tl.load(Z + rows[:, None] * stride_z + cols[None, :], mask=col_mask[None, :], other=0.0).to(tl.float32)
    if HAS_B:
        z += tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return z


@triton.jit
def _student_teacher(ZS, ZO, ZA, BS, BO, BA, rows, cols, col_mask, stride_z, alpha,
                     logit_scale_s, softcap_s, inv_softcap_s, logit_scale_o, softcap_o, inv_softcap_o,
                     logit_scale_a, softcap_a, inv_softcap_a,
                     HAS_AUG: tl.constexpr, HAS_BS: tl.constexpr, HAS_BO: tl.constexpr, HAS_BA: tl.constexpr,
                     HAS_SOFTCAP_S: tl.constexpr, HAS_SOFTCAP_O: tl.constexpr, HAS_SOFTCAP_A: tl.constexpr):
    """Each model's transformed logits (common/logit_transform_triton.py), the teacher from them, and the
    student's chain rule factor d z_s / d l_s."""
    zs, factor = _transform_with_grad(_logits(ZS, BS, rows, cols, col_mask, stride_z, HAS_BS),
                                      logit_scale_s, softcap_s, inv_softcap_s, HAS_SOFTCAP_S)
    zt = _transform(_logits(ZO, BO, rows, cols, col_mask, stride_z, HAS_BO),
                    logit_scale_o, softcap_o, inv_softcap_o, HAS_SOFTCAP_O)
    if HAS_AUG:
        za = _transform(_logits(ZA, BA, rows, cols, col_mask, stride_z, HAS_BA),
                        logit_scale_a, softcap_a, inv_softcap_a, HAS_SOFTCAP_A)
        zt = zt - alpha * tl.maximum(za - zt, 0.0)
    return zs, zt, factor


@triton.jit
def _chunk_kernel(ZS, ZO, ZA, BS, BO, BA, ROW_SCALE, G, LOSS,
                  n_rows, V, stride_z, stride_g, alpha, logit_scale_s, softcap_s, inv_softcap_s,
                  logit_scale_o, softcap_o, inv_softcap_o, logit_scale_a, softcap_a, inv_softcap_a,
                  HAS_AUG: tl.constexpr, HAS_BS: tl.constexpr, HAS_BO: tl.constexpr, HAS_BA: tl.constexpr,
                  HAS_SOFTCAP_S: tl.constexpr, HAS_SOFTCAP_O: tl.constexpr, HAS_SOFTCAP_A: tl.constexpr,
                  REVERSE: tl.constexpr, WRITE_GRAD: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    """BLOCK_N rows of the chunk per program: loss [rows] and (WRITE_GRAD) the logit gradient [rows, V]."""
    # Rows past the chunk read row n_rows - 1 again (finite values, nothing stored): no all-masked rows,
    # whose -inf maxima would turn the rescale factors into exp(nan).
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    rows = tl.minimum(rows, n_rows - 1).to(tl.int64)
    m_s = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    m_t = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    d_s = tl.zeros((BLOCK_N,), tl.float32)
    d_t = tl.zeros((BLOCK_N,), tl.float32)
    # acc = sum_v exp(z_s - m_s) * ((z_s - m_s) - (z_t - m_t)) (reverse; forward: s <-> t), kept relative to
    # the running maxima: E[z_s - z_t] - (m_s - m_t) would cancel two numbers of the logits' offset size.
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        # (the factor is dead code here: the compiler drops it)
        zs, zt, _ = _student_teacher(ZS, ZO, ZA, BS, BO, BA, rows, cols, col_mask, stride_z, alpha,
                                     logit_scale_s, softcap_s, inv_softcap_s, logit_scale_o, softcap_o,
                                     inv_softcap_o, logit_scale_a, softcap_a, inv_softcap_a,
                                     HAS_AUG, HAS_BS, HAS_BO, HAS_BA, HAS_SOFTCAP_S, HAS_SOFTCAP_O, HAS_SOFTCAP_A)
        valid = col_mask[None, :]
        # Every block holds a valid column: the new maxima are finite, exp(m_old - m_new) is 0 on the first.
        new_m_s = tl.maximum(m_s, tl.max(tl.where(valid, zs, float("-inf")), axis=1))
        new_m_t = tl.maximum(m_t, tl.max(tl.where(valid, zt, float("-inf")), axis=1))
        scale_s = tl.exp(m_s - new_m_s)
        scale_t = tl.exp(m_t - new_m_t)
        rel_s = zs - new_m_s[:, None]
        rel_t = zt - new_m_t[:, None]
        e_s = tl.exp(tl.where(valid, rel_s, float("-inf")))
        e_t = tl.exp(tl.where(valid, rel_t, float("-inf")))
        # Moving the maxima shifts every earlier term's bracket by the same amount: d_old * shift. On the
        # first block there are no earlier terms (and m_old = -inf): take the shift as 0, never inf - inf.
        first = m_s == float("-inf")
        old_m_s = tl.where(first, new_m_s, m_s)
        old_m_t = tl.where(first, new_m_t, m_t)
        if REVERSE:
            shift = (new_m_t - old_m_t) - (new_m_s - old_m_s)
            acc = scale_s * (acc + d_s * shift) + tl.sum(e_s * (rel_s - rel_t), axis=1)
        else:
            shift = (new_m_s - old_m_s) - (new_m_t - old_m_t)
            acc = scale_t * (acc + d_t * shift) + tl.sum(e_t * (rel_t - rel_s), axis=1)
        d_s = d_s * scale_s + tl.sum(e_s, axis=1)
        d_t = d_t * scale_t + tl.sum(e_t, axis=1)
        m_s = new_m_s
        m_t = new_m_t
    log_d_s = tl.log(d_s)
    log_d_t = tl.log(d_t)
    if REVERSE:
        mean_rel = acc / d_s  # E_ps[(z_s - m_s) - (z_t - m_t)]
        loss = mean_rel - log_d_s + log_d_t
    else:
        mean_rel = acc / d_t  # E_pt[(z_t - m_t) - (z_s - m_s)]
        loss = mean_rel - log_d_t + log_d_s
    tl.store(LOSS + rows, loss, mask=row_mask)
    if WRITE_GRAD:
        row_scale = tl.load(ROW_SCALE + rows, mask=row_mask, other=0.0)
        # Backwards through the row: the blocks the first pass read last are the likeliest still in L1/L2.
        last = (V - 1) // BLOCK_V * BLOCK_V
        for i in range(0, V, BLOCK_V):
            v0 = last - i
            cols = v0 + tl.arange(0, BLOCK_V)
            col_mask = cols < V
            zs, zt, factor = _student_teacher(
                ZS, ZO, ZA, BS, BO, BA, rows, cols, col_mask, stride_z, alpha,
                logit_scale_s, softcap_s, inv_softcap_s, logit_scale_o, softcap_o, inv_softcap_o,
                logit_scale_a, softcap_a, inv_softcap_a,
                HAS_AUG, HAS_BS, HAS_BO, HAS_BA, HAS_SOFTCAP_S, HAS_SOFTCAP_O, HAS_SOFTCAP_A)
            valid = col_mask[None, :]
            rel_s = zs - m_s[:, None]
            rel_t = zt - m_t[:, None]
            p_s = tl.exp(tl.where(valid, rel_s - log_d_s[:, None], float("-inf")))
            if REVERSE:
                # log p_s - log p_t - KL == (z_s - m_s) - (z_t - m_t) - E_ps[...]: the normalizers cancel.
                g = p_s * ((rel_s - rel_t) - mean_rel[:, None])
            else:
                g = p_s - tl.exp(tl.where(valid, rel_t - log_d_t[:, None], float("-inf")))
            # d loss / d (untransformed) student logits: the row's weight and the transform's chain factor.
            g = g * row_scale[:, None] * factor
            tl.store(G + rows[:, None] * stride_g + cols[None, :], g.to(G.dtype.element_ty),
                     mask=row_mask[:, None] & valid)


def autotune_configs() -> list:
    """CUDA tiles (BLOCK_N rows x BLOCK_V vocab entries per step): a memory-bound row kernel, so few rows and
    long vocab strips; every config is checked spill-free on sm_80/sm_90 by benchmarks/gpu_compile.py."""
    # (4, 1024) spilled 8 bytes on sm_90 with 8 warps (fp32) and with 16 warps (bf16, 128-register cap):
    # dropped (benchmarks/results/gpu-compile.md).
    shapes = [(1, 2048, 8, 1), (2, 1024, 8, 1), (1, 4096, 16, 1)]
    return [triton.Config(dict(BLOCK_N=bn, BLOCK_V=bv), num_warps=w, num_stages=s) for bn, bv, w, s in shapes]


def block_sizes() -> dict:
    """Fixed tiles for the interpreter (it steps through blocks in Python: fewer, larger ones)."""
    return dict(BLOCK_N=32, BLOCK_V=1024, num_warps=4)


_chunk_tuned = triton.autotune(autotune_configs(), key=["V"])(_chunk_kernel) if AUTOTUNE else None
TUNED_KERNELS = {"chunk": _chunk_tuned} if AUTOTUNE else {}


def _run_chunk_kernel(zs, zo, za, bs, bo, ba, row_scale, g, loss, alpha, reverse, write_grad, transforms):
    n, v = zs.shape
    dummy = zs  # never dereferenced: the HAS_* / WRITE_GRAD flags switch the accesses off
    args = (zs, zo, za if za is not None else dummy, bs if bs is not None else dummy,
            bo if bo is not None else dummy, ba if ba is not None else dummy,
            row_scale if row_scale is not None else dummy, g if g is not None else dummy, loss,
            n, v, zs.stride(0), g.stride(0) if g is not None else 0, float(alpha))
    transform_args, (soft_s, soft_o, soft_a) = lt.kernel_args(transforms)
    args += transform_args
    flags = dict(HAS_AUG=za is not None, HAS_BS=bs is not None, HAS_BO=bo is not None, HAS_BA=ba is not None,
                 HAS_SOFTCAP_S=soft_s, HAS_SOFTCAP_O=soft_o, HAS_SOFTCAP_A=soft_a and za is not None,
                 REVERSE=reverse, WRITE_GRAD=write_grad)
    if AUTOTUNE:
        _chunk_tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](*args, **flags)
    else:
        blocks = block_sizes() if INTERPRET else dict(autotune_configs()[0].kwargs, num_warps=8)
        _chunk_kernel[(triton.cdiv(n, blocks["BLOCK_N"]),)](*args, **flags, **blocks)


# ---- GEMMs with fp32 output ----------------------------------------------------------------------------------

def _has_out_dtype(device: torch.device) -> bool:
    """cuBLAS bf16/fp16 GEMMs with an fp32 result (torch >= 2.8: ``torch.mm(..., out_dtype=)``) on CUDA."""
    return device.type == "cuda" and hasattr(torch.ops.aten.mm, "dtype")


_ADDMM_OUT_DTYPE = True


class _Gemms:
    """fp32-output GEMMs from the input dtype. CUDA + 16-bit: cuBLAS with ``out_dtype=float32`` (tensor cores,
    fp32 accumulation, no rounding of the result). Elsewhere (CPU, torch without out_dtype, fp32 inputs):
    operands in fp32 -- upcasting bf16/fp16 is exact, so the result differs only in summation order."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.native = dtype in (torch.bfloat16, torch.float16) and _has_out_dtype(device)

    def operand(self, t: torch.Tensor) -> torch.Tensor:
        """A weight as it enters the GEMMs (converted once per call, not once per chunk)."""
        return t if self.native or t.dtype == torch.float32 else t.float()

    def mm(self, a, b, out):
        if self.native:
            return torch.mm(a, b, out_dtype=torch.float32, out=out)
        return torch.mm(a.float(), b.float(), out=out)

    def accumulate(self, acc, a, b, first: bool):
        """acc = a @ b on the first chunk (beta = 0: no zero-fill, no read of the accumulator), else acc += a @ b."""
        return self.mm(a, b, acc) if first else self.addmm_(acc, a, b)

    def addmm_(self, acc, a, b):
        """acc += a @ b, acc float32 (cuBLAS accumulates into it in place: beta = 1)."""
        global _ADDMM_OUT_DTYPE
        if self.native:
            if _ADDMM_OUT_DTYPE:
                try:
                    return torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
                except (RuntimeError, TypeError):  # a torch without addmm.dtype_out into its own input
                    _ADDMM_OUT_DTYPE = False
            return acc.add_(torch.mm(a, b, out_dtype=torch.float32))
        return acc.addmm_(a.float(), b.float())


def default_chunk_plan(n: int, h: int, v: int, grad_bytes: int, device: torch.device, augmented: bool = True,
                       free_bytes: int | None = None, **knobs) -> ChunkPlan:
    """``chunk_policy.plan_chunks`` with the free GPU memory read from the device on CUDA (None elsewhere).
    ``knobs``: max_chunk_bytes, memory_fraction, chunk_tokens."""
    if free_bytes is None and device.type == "cuda":
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return plan_chunks(n, h, v, grad_bytes, augmented, free_bytes=free_bytes, **knobs)


def default_chunk_tokens(n: int, h: int, v: int, grad_bytes: int, device: torch.device, augmented: bool = True,
                         free_bytes: int | None = None, **knobs) -> int:
    """Tokens per logit chunk of ``default_chunk_plan``."""
    return default_chunk_plan(n, h, v, grad_bytes, device, augmented, free_bytes, **knobs).logit_tokens


def unlearning_kl(xs, ws, bs, xo, wo, bo, xa, wa, ba, *, alpha, direction, grad_in_forward, chunk_tokens,
                  grad_filter, transforms=(lt.IDENTITY,) * 3, max_chunk_bytes=None, memory_fraction=None):
    """The KL op of backend "chunked" (common/backends.py). Dense gradients: ``grad_filter`` does not apply.
    Each model's GEMMs run in its own dtype (``gemm_dtype`` of its hidden states and weight): an fp32 teacher
    of a bf16 student is not rounded. Chunks: ``chunk_policy.plan_chunks`` under the given knobs."""
    xs, ws = to_dtype(gemm_dtype(xs, ws), xs, ws)
    xo, wo = to_dtype(gemm_dtype(xo, wo), xo, wo)
    if xa is not None:
        xa, wa = to_dtype(gemm_dtype(xa, wa), xa, wa)
    chunking = dict(chunk_tokens=chunk_tokens, max_chunk_bytes=max_chunk_bytes, memory_fraction=memory_fraction)
    return TritonChunkedUnlearningKL.apply(xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha, direction, grad_in_forward,
                                           chunking, transforms)


class TritonChunkedUnlearningKL(torch.autograd.Function):
    """Counted tokens only: [N, H_model] hidden states (each model its own H), lm_head weights [V, H_model]
    -> per-token loss [N] float32. With ``grad_in_forward`` (mean/sum reductions: one upstream weight for
    every token) the gradient is computed in the forward pass and backward only rescales it; with
    ``reduction="none"`` backward recomputes each chunk's logits with the per-token weights."""

    @staticmethod
    def forward(ctx, xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha, direction, grad_in_forward, chunking=None,
                transforms=(lt.IDENTITY,) * 3):
        need_grad = any(ctx.needs_input_grad[:3])
        in_forward = grad_in_forward and need_grad
        with torch.no_grad(), torch.autocast(xs.device.type, enabled=False):
            loss, grads = _run(xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha, direction, chunking,
                               row_weights=None, need_grad=in_forward, transforms=transforms)
        ctx.alpha, ctx.direction, ctx.chunking, ctx.transforms = alpha, direction, chunking, transforms
        ctx.grad_in_forward = in_forward
        ctx.dtypes = (xs.dtype, ws.dtype, None if bs is None else bs.dtype)
        if in_forward:
            ctx.save_for_backward(*grads)
        else:
            ctx.save_for_backward(xs, ws, bs, xo, wo, bo, xa, wa, ba)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        if ctx.grad_in_forward:
            dx, dw, db = ctx.saved_tensors
            scale = grad_loss[0].float() if grad_loss.numel() else torch.zeros((), device=dx.device)
            # One pass per gradient: scaled and rounded to the parameter dtype together (the fp32 dW alone is
            # V x H x 4 bytes; a separate multiply and cast would read and write it twice more).
            return (_scaled(dx, scale, x_dtype), _scaled(dw, scale, w_dtype),
                    None if db is None else _scaled(db, scale, b_dtype),
                    None, None, None, None, None, None, None, None, None, None, None)
        else:
            xs, ws, bs, xo, wo, bo, xa, wa, ba = ctx.saved_tensors
            with torch.no_grad(), torch.autocast(xs.device.type, enabled=False):
                _, (dx, dw, db) = _run(xs, ws, bs, xo, wo, bo, xa, wa, ba, ctx.alpha, ctx.direction,
                                       ctx.chunking, row_weights=grad_loss.float().contiguous(), need_grad=True,
                                       transforms=ctx.transforms)
        return (dx.to(x_dtype), dw.to(w_dtype), None if db is None else db.to(b_dtype),
                None, None, None, None, None, None, None, None, None, None, None)


@triton.jit
def _scale_cast_kernel(SRC, SCALE, DST, numel, BLOCK: tl.constexpr):
    """DST = (SRC * SCALE[0]).to(DST dtype): fp32 multiply, one rounding, the scale read on the device."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    scale = tl.load(SCALE)
    x = tl.load(SRC + offs, mask=mask, other=0.0)
    tl.store(DST + offs, (x * scale).to(DST.dtype.element_ty), mask=mask)


SCALE_CAST_CONFIG = dict(BLOCK=4096, num_warps=8)


def _scaled(grad: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """grad * scale in ``dtype``, one pass over the fp32 gradient (torch's mixed-dtype ``mul(out=bf16)`` is a
    non-vectorized kernel, well below the bandwidth this pass needs)."""
    out = torch.empty(grad.shape, dtype=dtype, device=grad.device)
    if not grad.is_cuda:  # CPU tensors (TRITON_INTERPRET=1): torch rounds fp32 -> bf16 to nearest like CUDA
        return torch.mul(grad, scale, out=out)   # does; the interpreter's conversion truncates
    if grad.numel():
        scale = scale.reshape(1).to(device=grad.device, dtype=torch.float32)
        _scale_cast_kernel[(triton.cdiv(grad.numel(), SCALE_CAST_CONFIG["BLOCK"]),)](
            grad, scale, out, grad.numel(), **SCALE_CAST_CONFIG)
    return out


_LAST_PLAN: list = []


def last_chunk_plan() -> ChunkPlan | None:
    """The chunk plan of the most recent chunked call (None before any), for reports."""
    return _LAST_PLAN[-1] if _LAST_PLAN else None


def last_chunk_tokens() -> int | None:
    """Tokens per logit chunk of the most recent chunked call (None before any)."""
    return _LAST_PLAN[-1].logit_tokens if _LAST_PLAN else None


def _run(xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha, direction, chunking, row_weights, need_grad,
         transforms=(lt.IDENTITY,) * 3):
    """Loss [N] and, when ``need_grad``, fp32 (dX, dW, dB) weighted per token by ``row_weights`` (None: 1).
    ``chunking``: the knobs of ``chunk_policy.plan_chunks`` (chunk_tokens, max_chunk_bytes, memory_fraction)."""
    device = xs.device
    xs, xo = xs.contiguous(), xo.contiguous()
    xa = None if xa is None else xa.contiguous()
    n, v = xs.shape[0], ws.shape[0]
    # One GEMM mode per model: each model's logits from its own dtype (a fp32 teacher of a bf16 student is
    # not rounded), all with fp32 output.
    gemm = _Gemms(device, xs.dtype)
    gemm_o = _Gemms(device, xo.dtype)
    gemm_a = None if xa is None else _Gemms(device, xa.dtype)
    wst, wot = gemm.operand(ws).T, gemm_o.operand(wo).T
    wat = None if wa is None else gemm_a.operand(wa).T
    grad_dtype = xs.dtype if xs.dtype in (torch.bfloat16, torch.float16) else torch.float32
    plan = default_chunk_plan(n, xs.shape[1], v, torch.finfo(grad_dtype).bits // 8, device, xa is not None,
                              **(chunking or {}))
    _LAST_PLAN[:] = [plan]
    chunk = plan.logit_tokens
    # G block: the rows whose gradient is written before one dX GEMM and one dW accumulation (whole logit
    # chunks, or all N); without a gradient the logit chunks run back to back.
    block = plan.grad_tokens if need_grad else n
    zs_buf = torch.empty((chunk, v), dtype=torch.float32, device=device)
    zo_buf = torch.empty_like(zs_buf)
    za_buf = None if xa is None else torch.empty_like(zs_buf)
    g_buf = torch.empty((block, v), dtype=grad_dtype, device=device) if need_grad else None
    ones = torch.ones(chunk, dtype=torch.float32, device=device) if need_grad and row_weights is None else None
    loss = torch.empty(n, dtype=torch.float32, device=device)
    if need_grad:
        dx = torch.empty((n, xs.shape[1]), dtype=torch.float32, device=device)
        dw = torch.empty(ws.shape, dtype=torch.float32, device=device)  # the first block writes it
        db = None if bs is None else torch.zeros(v, dtype=torch.float32, device=device)
        ws_op = gemm.operand(ws)
    for block_start in range(0, n, block):
        block_end = min(n, block_start + block)
        for start in range(block_start, block_end, chunk):
            end = min(block_end, start + chunk)
            m = end - start
            zs, zo = zs_buf[:m], zo_buf[:m]
            gemm.mm(xs[start:end], wst, zs)
            gemm_o.mm(xo[start:end], wot, zo)
            za = None
            if xa is not None:
                za = za_buf[:m]
                gemm_a.mm(xa[start:end], wat, za)
            g = None if g_buf is None else g_buf[start - block_start:end - block_start]
            weights = None
            if need_grad:
                weights = ones[:m] if row_weights is None else row_weights[start:end]
            _run_chunk_kernel(zs, zo, za, bs, bo, ba, weights, g, loss[start:end], alpha, direction == "reverse",
                              need_grad, transforms)
        if need_grad:
            g = g_buf[:block_end - block_start]
            gemm.mm(g, ws_op, dx[block_start:block_end])
            gemm.accumulate(dw, g.T, xs[block_start:block_end], first=block_start == 0)
            if db is not None:
                db += g.sum(0, dtype=torch.float32)
    return loss, ((dx, dw, db) if need_grad else None)


# ---- compile specs (benchmarks/gpu_compile.py) -------------------------------------------------------------

def compile_specs() -> list[CompileSpec]:
    """The chunk kernel over dtype x direction x augmented x bias x softcap (every model's: the heaviest case
    of the per-model HAS_SOFTCAP_* flags), with every CUDA config."""
    specs = []
    names = _chunk_kernel.arg_names
    transform_args = {f"{arg}_{m}" for m in "soa" for arg in ("logit_scale", "softcap", "inv_softcap")}
    for dtype in ("bf16", "fp32"):
        for reverse in (True, False):
            for aug, bias, softcap in itertools.product((True, False), repeat=3):
                sig = {}
                for a in names:
                    if a in ("ZS", "ZO", "ZA", "ROW_SCALE", "LOSS"):
                        sig[a] = "*fp32"
                    elif a in ("BS", "BO", "BA", "G"):
                        sig[a] = f"*{dtype}"
                    elif a == "alpha" or a in transform_args:
                        sig[a] = "fp32"
                    elif a in ("n_rows", "V", "stride_z", "stride_g"):
                        sig[a] = "i32"
                    else:
                        sig[a] = "constexpr"
                constexprs = dict(HAS_AUG=aug, HAS_BS=bias, HAS_BO=bias, HAS_BA=bias and aug,
                                  HAS_SOFTCAP_S=softcap, HAS_SOFTCAP_O=softcap, HAS_SOFTCAP_A=softcap and aug,
                                  REVERSE=reverse, WRITE_GRAD=True)
                variant = ",".join(["reverse" if reverse else "forward", "aug" if aug else "no-aug",
                                    "bias" if bias else "no-bias"] + (["softcap"] if softcap else []))
                specs.append(CompileSpec(
                    kernel="chunked_unlearning_kl", fn=_chunk_kernel, signature=sig, constexprs=constexprs,
                    configs=tuple(autotune_configs()), dtype=dtype, variant=variant,
                    divisible=("ZS", "ZO", "ZA", "BS", "BO", "BA", "ROW_SCALE", "G", "LOSS", "V",
                               "stride_z", "stride_g")))
    for dtype in ("bf16", "fp32"):
        specs.append(CompileSpec(
            kernel="chunked_scale_cast", fn=_scale_cast_kernel,
            signature=dict(SRC="*fp32", SCALE="*fp32", DST=f"*{dtype}", numel="i64", BLOCK="constexpr"),
            constexprs={}, dtype=dtype, variant="-",
            configs=(triton.Config(dict(BLOCK=SCALE_CAST_CONFIG["BLOCK"]),
                                   num_warps=SCALE_CAST_CONFIG["num_warps"]),),
            divisible=("SRC", "SCALE", "DST")))
    return specs
