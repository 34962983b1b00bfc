"""Triton backend: the fused linear unlearning KL, tiled over tokens x vocab, never building [N, V].

Forward (one program per block of tokens) walks the vocabulary in blocks. For each block it computes the
student, original and augmented logit tiles with float32 accumulation (tl.dot over the hidden size), builds
the teacher tile ``l_o - alpha * relu(l_aug - l_o)``, and updates online log-sum-exps of student and teacher
plus the running sum that becomes the KL. Only per-token statistics (max and log-normalizer of both, E[z_s - z_t], loss) are stored: O(N).

Backward recomputes the tiles. We recompute in backward instead of computing the gradient in the forward:
the gradient tile needs the final lse_s/lse_t/KL of its rows, so a second pass over the logits is needed
either way; putting it in backward keeps forward-only calls (evaluation, logging a teacher loss) at three
GEMMs instead of eight, and lets ``reduction="none"`` apply a different upstream weight per token.

dW: one program per vocab block owns its rows of dW and loops over all token blocks, so dW is a plain
per-vocab-block GEMM accumulated without atomics. dx: each (vocab block) program adds its contribution
with atomics, starting at a different token block per program so they don't all hit the same rows at once.
In deterministic mode (``torch.use_deterministic_algorithms(True)``) dx instead comes from a second kernel
in which one program per token block owns its rows (one more recomputation of the logits, bitwise stable).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


# How tl.dot treats its operands. NATIVE: input dtype on tensor cores (bf16/fp16), fp32 accumulation.
# IEEE: fp32 inputs in full fp32 (no TF32 rounding). UPCAST: operands cast to fp32 first; the Triton CPU
# interpreter gets bf16 tl.dot wrong, so bf16 runs this way under TRITON_INTERPRET=1.
NATIVE, IEEE, UPCAST = 0, 1, 2


@triton.jit
def _mm(a, b, PRECISION: tl.constexpr):
    if PRECISION == 2:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif PRECISION == 1:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _grad_operand(g, X, PRECISION: tl.constexpr):
    """The gradient tile as a GEMM operand: in the input dtype like eager autograd (except UPCAST)."""
    if PRECISION == 2:
        out = g
    else:
        out = g.to(X.dtype.element_ty)
    return out


@triton.jit
def _logit_tile(X, W, B, rows, cols, row_mask, col_mask, H, stride_x, stride_w,
                HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """float32 [BLOCK_N, BLOCK_V] tile of X @ W.T (+ B); logits are never rounded to the input dtype."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        h_mask = hs < H
        x = tl.load(X + rows[:, None] * stride_x + hs[None, :], mask=row_mask[:, None] & h_mask[None, :], other=0.0)
        w = tl.load(W + cols[:, None] * stride_w + hs[None, :], mask=col_mask[:, None] & h_mask[None, :], other=0.0)
        acc += _mm(x, tl.trans(w), PRECISION)
    if HAS_BIAS:
        acc += tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _student_teacher_tiles(XS, WS, BS, XO, WO, BO, XA, WA, BA, rows, cols, row_mask, col_mask, H,
                           stride_xs, stride_ws, stride_xo, stride_wo, stride_xa, stride_wa, alpha,
                           HAS_AUG: tl.constexpr, HAS_BS: tl.constexpr, HAS_BO: tl.constexpr, HAS_BA: tl.constexpr,
                           PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    zs = _logit_tile(XS, WS, BS, rows, cols, row_mask, col_mask, H, stride_xs, stride_ws, HAS_BS, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
    zt = _logit_tile(XO, WO, BO, rows, cols, row_mask, col_mask, H, stride_xo, stride_wo, HAS_BO, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
    if HAS_AUG:
        za = _logit_tile(XA, WA, BA, rows, cols, row_mask, col_mask, H, stride_xa, stride_wa, HAS_BA, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        zt = zt - alpha * tl.maximum(za - zt, 0.0)
    return zs, zt


@triton.jit
def _forward_kernel(XS, WS, BS, XO, WO, BO, XA, WA, BA, STATS, LOSS,
                    N, V, H, stride_xs, stride_ws, stride_xo, stride_wo, stride_xa, stride_wa, alpha,
                    HAS_AUG: tl.constexpr, HAS_BS: tl.constexpr, HAS_BO: tl.constexpr, HAS_BA: tl.constexpr,
                    REVERSE: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    # Running max and normalizer of student and teacher, and the running sum of
    # exp(z_s - m_s) * (z_s - z_t) (reverse) or exp(z_t - m_t) * (z_t - z_s) (forward).
    m_s = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    m_t = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    d_s = tl.zeros((BLOCK_N,), tl.float32)
    d_t = tl.zeros((BLOCK_N,), tl.float32)
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        zs, zt = _student_teacher_tiles(XS, WS, BS, XO, WO, BO, XA, WA, BA, rows, cols, row_mask, col_mask, H,
                                        stride_xs, stride_ws, stride_xo, stride_wo, stride_xa, stride_wa, alpha,
                                        HAS_AUG, HAS_BS, HAS_BO, HAS_BA, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        valid = col_mask[None, :]
        # Every vocab block holds at least one valid column, so the new maxima are finite and the rescale
        # factors exp(m_old - m_new) are exp(-inf) = 0 on the first block, never exp(nan).
        new_m_s = tl.maximum(m_s, tl.max(tl.where(valid, zs, float("-inf")), axis=1))
        new_m_t = tl.maximum(m_t, tl.max(tl.where(valid, zt, float("-inf")), axis=1))
        scale_s = tl.exp(m_s - new_m_s)
        scale_t = tl.exp(m_t - new_m_t)
        # Padding columns go through exp(-inf) = 0: exp of their (zero) logits minus the max could overflow.
        e_s = tl.exp(tl.where(valid, zs - new_m_s[:, None], float("-inf")))
        e_t = tl.exp(tl.where(valid, zt - new_m_t[:, None], float("-inf")))
        d_s = d_s * scale_s + tl.sum(e_s, axis=1)
        d_t = d_t * scale_t + tl.sum(e_t, axis=1)
        if REVERSE:
            acc = acc * scale_s + tl.sum(e_s * (zs - zt), axis=1)
        else:
            acc = acc * scale_t + tl.sum(e_t * (zt - zs), axis=1)
        m_s = new_m_s
        m_t = new_m_t
    log_d_s = tl.log(d_s)
    log_d_t = tl.log(d_t)
    if REVERSE:
        mean_diff = acc / d_s  # E_ps[z_s - z_t]
        loss = mean_diff - log_d_s + log_d_t - (m_s - m_t)  # E_ps[z_s - z_t] - (lse_s - lse_t)
    else:
        mean_diff = acc / d_t  # E_pt[z_t - z_s]
        loss = mean_diff - log_d_t + log_d_s - (m_t - m_s)
    # Max and log-normalizer are kept apart: log p = (z - m) - log d stays exact near the max, where
    # z - (m + log d) would round the lse at the logits' magnitude (ulp ~1e-3 at 1e4).
    tl.store(STATS + rows * 5 + 0, m_s, mask=row_mask)
    tl.store(STATS + rows * 5 + 1, log_d_s, mask=row_mask)
    tl.store(STATS + rows * 5 + 2, m_t, mask=row_mask)
    tl.store(STATS + rows * 5 + 3, log_d_t, mask=row_mask)
    tl.store(STATS + rows * 5 + 4, mean_diff, mask=row_mask)
    tl.store(LOSS + rows, loss, mask=row_mask)


@triton.jit
def _grad_tile(zs, zt, STATS, GRAD_OUT, rows, row_mask, col_mask, REVERSE: tl.constexpr):
    """d loss / d student logits for one tile, times the upstream per-token weight; zero off the edges."""
    m_s = tl.load(STATS + rows * 5 + 0, mask=row_mask, other=0.0)
    log_d_s = tl.load(STATS + rows * 5 + 1, mask=row_mask, other=0.0)
    upstream = tl.load(GRAD_OUT + rows, mask=row_mask, other=0.0)
    inside = row_mask[:, None] & col_mask[None, :]
    p_s = tl.exp(tl.where(inside, (zs - m_s[:, None]) - log_d_s[:, None], float("-inf")))
    if REVERSE:
        # log p_s - log p_t - KL == (z_s - z_t) - E_ps[z_s - z_t]: the two normalizers cancel analytically,
        # so we never subtract the large KL from the large log-ratio. When p_s is one-hot in fp32 (logits
        # ~1e4) the forward's mean is exactly the argmax's difference and the gradient is exactly 0.
        mean_diff = tl.load(STATS + rows * 5 + 4, mask=row_mask, other=0.0)
        g = p_s * ((zs - zt) - mean_diff[:, None])
    else:
        m_t = tl.load(STATS + rows * 5 + 2, mask=row_mask, other=0.0)
        log_d_t = tl.load(STATS + rows * 5 + 3, mask=row_mask, other=0.0)
        g = p_s - tl.exp(tl.where(inside, (zt - m_t[:, None]) - log_d_t[:, None], float("-inf")))
    return g * upstream[:, None]


@triton.jit
def _backward_dw_kernel(XS, WS, BS, XO, WO, BO, XA, WA, BA, STATS, GRAD_OUT, DX, DW, DB,
                        N, V, H, stride_xs, stride_ws, stride_xo, stride_wo, stride_xa, stride_wa, alpha,
                        HAS_AUG: tl.constexpr, HAS_BS: tl.constexpr, HAS_BO: tl.constexpr, HAS_BA: tl.constexpr,
                        REVERSE: tl.constexpr, PRECISION: tl.constexpr, ATOMIC_DX: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    pid = tl.program_id(0)
    cols = pid * BLOCK_V + tl.arange(0, BLOCK_V)
    col_mask = cols < V
    num_row_blocks = tl.cdiv(N, BLOCK_N)
    db = tl.zeros((BLOCK_V,), tl.float32)
    for i in range(0, num_row_blocks):
        # Staggered start: programs touch different dx rows at the same time (less atomic contention).
        row_block = (pid + i) % num_row_blocks
        rows = row_block * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        zs, zt = _student_teacher_tiles(XS, WS, BS, XO, WO, BO, XA, WA, BA, rows, cols, row_mask, col_mask, H,
                                        stride_xs, stride_ws, stride_xo, stride_wo, stride_xa, stride_wa, alpha,
                                        HAS_AUG, HAS_BS, HAS_BO, HAS_BA, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        g = _grad_tile(zs, zt, STATS, GRAD_OUT, rows, row_mask, col_mask, REVERSE)
        db += tl.sum(g, axis=0)
        g_in = _grad_operand(g, XS, PRECISION)
        for h0 in range(0, H, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            h_mask = hs < H
            x = tl.load(XS + rows[:, None] * stride_xs + hs[None, :], mask=row_mask[:, None] & h_mask[None, :], other=0.0)
            dw_ptrs = DW + cols[:, None] * H + hs[None, :]
            dw_mask = col_mask[:, None] & h_mask[None, :]
            dw_tile = _mm(tl.trans(g_in), x, PRECISION)
            tl.store(dw_ptrs, tl.load(dw_ptrs, mask=dw_mask, other=0.0) + dw_tile, mask=dw_mask)
            if ATOMIC_DX:
                w = tl.load(WS + cols[:, None] * stride_ws + hs[None, :], mask=dw_mask, other=0.0)
                dx_tile = _mm(g_in, w, PRECISION)
                tl.atomic_add(DX + rows[:, None] * H + hs[None, :], dx_tile, mask=row_mask[:, None] & h_mask[None, :])
    if HAS_BS:
        tl.store(DB + cols, db, mask=col_mask)


@triton.jit
def _backward_dx_kernel(XS, WS, BS, XO, WO, BO, XA, WA, BA, STATS, GRAD_OUT, DX,
                        N, V, H, stride_xs, stride_ws, stride_xo, stride_wo, stride_xa, stride_wa, alpha,
                        HAS_AUG: tl.constexpr, HAS_BS: tl.constexpr, HAS_BO: tl.constexpr, HAS_BA: tl.constexpr,
                        REVERSE: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """Deterministic dx: one program per token block owns its rows and walks the vocabulary in order."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        zs, zt = _student_teacher_tiles(XS, WS, BS, XO, WO, BO, XA, WA, BA, rows, cols, row_mask, col_mask, H,
                                        stride_xs, stride_ws, stride_xo, stride_wo, stride_xa, stride_wa, alpha,
                                        HAS_AUG, HAS_BS, HAS_BO, HAS_BA, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        g = _grad_tile(zs, zt, STATS, GRAD_OUT, rows, row_mask, col_mask, REVERSE)
        g_in = _grad_operand(g, XS, PRECISION)
        for h0 in range(0, H, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            h_mask = hs < H
            w = tl.load(WS + cols[:, None] * stride_ws + hs[None, :], mask=col_mask[:, None] & h_mask[None, :], other=0.0)
            dx_tile = _mm(g_in, w, PRECISION)
            dx_ptrs = DX + rows[:, None] * H + hs[None, :]
            dx_mask = row_mask[:, None] & h_mask[None, :]
            tl.store(dx_ptrs, tl.load(dx_ptrs, mask=dx_mask, other=0.0) + dx_tile, mask=dx_mask)


def block_sizes(n: int, v: int, h: int) -> dict:
    """Tile sizes. The interpreter steps through blocks in Python, so it gets large tiles; on GPU these
    fit the registers of one program for H up to 8k with three live [BLOCK_N, BLOCK_V] float32 tiles."""
    if INTERPRET:
        return dict(BLOCK_N=32, BLOCK_V=256, BLOCK_H=64, num_warps=4)
    return dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=64, num_warps=8)


# CUDA only: triton.autotune over a few tile configs keyed on (H, V) -- the autotuner appends the dtypes of
# the tensor arguments to the key, so the effective key is (H, V, dtype). N is not in the key: one config
# per model head, whatever the batch. The interpreter keeps the fixed block_sizes() above (autotuning would
# only time the Python interpreter). RKLU_TRITON_AUTOTUNE=0 also uses block_sizes() on CUDA, so a benchmark
# can compare fixed and tuned tiles. The backward kernels accumulate into DX/DW/DB (loads + adds, atomics),
# so every timed trial starts from zeroed buffers (reset_to_zero; the autotuner zeroes them again after
# choosing). Which config won is in ``<kernel>.cache`` ({key: Config}); benchmarks/bench_kernel.py records it.
AUTOTUNE = not INTERPRET and os.environ.get("RKLU_TRITON_AUTOTUNE", "1") != "0"


def autotune_configs() -> list:
    # (BLOCK_N, BLOCK_V, BLOCK_H, num_warps, num_stages); the first is the fixed default above.
    shapes = [(64, 128, 64, 8, 3), (128, 128, 64, 8, 3), (64, 256, 64, 8, 3), (128, 64, 64, 4, 3),
              (64, 128, 32, 4, 4), (128, 128, 32, 8, 4)]
    return [triton.Config(dict(BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh), num_warps=w, num_stages=st)
            for bn, bv, bh, w, st in shapes]


if AUTOTUNE:
    _forward_tuned = triton.autotune(autotune_configs(), key=["H", "V"])(_forward_kernel)
    _backward_dw_tuned = triton.autotune(autotune_configs(), key=["H", "V"],
                                         reset_to_zero=["DX", "DW", "DB"])(_backward_dw_kernel)
    _backward_dx_tuned = triton.autotune(autotune_configs(), key=["H", "V"], reset_to_zero=["DX"])(_backward_dx_kernel)
    TUNED_KERNELS = {"forward": _forward_tuned, "backward_dw": _backward_dw_tuned, "backward_dx": _backward_dx_tuned}
else:
    TUNED_KERNELS = {}


def _launch(name, kernel, grid_of, n, v, h, *args, **kwargs):
    """Launch ``kernel`` with the autotuned tiles on CUDA, else the fixed block_sizes();
    ``grid_of(meta)`` gives the grid from the chosen BLOCK_* values."""
    if name in TUNED_KERNELS:
        return TUNED_KERNELS[name][grid_of](*args, **kwargs)
    blocks = block_sizes(n, v, h)
    return kernel[grid_of(blocks)](*args, **kwargs, **blocks)


def _precision(dtype: torch.dtype) -> int:
    if dtype == torch.float32:
        return IEEE
    if dtype == torch.bfloat16 and INTERPRET:
        return UPCAST
    return NATIVE


def _common_args(xs, ws, bs, xo, wo, bo, xa, wa, ba):
    has_aug = xa is not None
    dummy = xs  # never dereferenced: the HAS_* flags switch the loads off
    return dict(
        tensors=(xs, ws, bs if bs is not None else dummy, xo, wo, bo if bo is not None else dummy,
                 xa if has_aug else dummy, wa if has_aug else dummy, ba if ba is not None else dummy),
        strides=(xs.stride(0), ws.stride(0), xo.stride(0), wo.stride(0),
                 xa.stride(0) if has_aug else 0, wa.stride(0) if has_aug else 0),
        flags=dict(HAS_AUG=has_aug, HAS_BS=bs is not None, HAS_BO=bo is not None, HAS_BA=ba is not None,
                   PRECISION=_precision(xs.dtype)),
    )


class TritonFusedUnlearningKL(torch.autograd.Function):
    """Counted tokens only: [N, H] hidden states (one dtype for all GEMM inputs) -> per-token loss [N] float32."""

    @staticmethod
    def forward(ctx, xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha, direction):
        xs, ws, xo, wo = (t.contiguous() for t in (xs, ws, xo, wo))
        xa = None if xa is None else xa.contiguous()
        wa = None if wa is None else wa.contiguous()
        n, h = xs.shape
        v = ws.shape[0]
        stats = torch.empty((n, 5), dtype=torch.float32, device=xs.device)  # m_s, log d_s, m_t, log d_t, E[diff]
        loss = torch.empty(n, dtype=torch.float32, device=xs.device)
        args = _common_args(xs, ws, bs, xo, wo, bo, xa, wa, ba)
        _launch("forward", _forward_kernel, lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),), n, v, h,
                *args["tensors"], stats, loss, n, v, h, *args["strides"], float(alpha),
                REVERSE=direction == "reverse", **args["flags"])
        ctx.save_for_backward(xs, ws, bs, xo, wo, bo, xa, wa, ba, stats)
        ctx.alpha, ctx.direction = float(alpha), direction
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        xs, ws, bs, xo, wo, bo, xa, wa, ba, stats = ctx.saved_tensors
        n, h = xs.shape
        v = ws.shape[0]
        grad_loss = grad_loss.float().contiguous()
        dx = torch.zeros((n, h), dtype=torch.float32, device=xs.device)
        dw = torch.zeros((v, h), dtype=torch.float32, device=xs.device)
        db = torch.zeros(v, dtype=torch.float32, device=xs.device) if bs is not None else dx
        args = _common_args(xs, ws, bs, xo, wo, bo, xa, wa, ba)
        deterministic = torch.are_deterministic_algorithms_enabled()
        reverse = ctx.direction == "reverse"
        _launch("backward_dw", _backward_dw_kernel, lambda meta: (triton.cdiv(v, meta["BLOCK_V"]),), n, v, h,
                *args["tensors"], stats, grad_loss, dx, dw, db, n, v, h, *args["strides"], ctx.alpha,
                REVERSE=reverse, ATOMIC_DX=not deterministic, **args["flags"])
        if deterministic:
            _launch("backward_dx", _backward_dx_kernel, lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),), n, v, h,
                    *args["tensors"], stats, grad_loss, dx, n, v, h, *args["strides"], ctx.alpha,
                    REVERSE=reverse, **args["flags"])
        return (dx.to(xs.dtype), dw.to(ws.dtype), None if bs is None else db.to(bs.dtype),
                None, None, None, None, None, None, None, None)
