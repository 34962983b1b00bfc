"""Backward of the fused unlearning KL: one program per (token block x vocab block) tile, grouped order.

Each tile recomputes its logits once (student first, then the teacher) and turns them into the gradient
tile g = d loss / d z_student (times the upstream per-token weight). Two ways to finish:

* default (``STORE_G=False``), Cut-Cross-Entropy's way: the tile multiplies g into dX (g @ W) and dW
  (g.T @ X) and adds both with fp32 atomics. No program owns a dW row block, so nothing is read-modified-
  written per row block; the atomic traffic is N*H*4 bytes per vocab block for dX and V*H*4 per token
  block for dW, hidden behind the GEMMs at large tiles.
* deterministic (``torch.use_deterministic_algorithms(True)``, ``STORE_G=True``): the launch covers one
  chunk of tokens and the tile writes g, in the GEMM input dtype, to a [chunk, V] buffer; cuBLAS / torch.mm
  then does dX and dW (fixed reduction order: bitwise reproducible). O(chunk * V) extra memory.

Gradient filtering (``FILTER``, Cut-Cross-Entropy's filter, applied to a KL): the student tile comes first.
  reverse KL: g = p_s * (log-ratio - KL) is exactly proportional to p_s, so a tile whose largest p_s is
    below ``eps`` skips the teacher recompute (one or two GEMMs) and both gradient GEMMs;
  forward KL: g = p_s - p_t needs p_t. The teacher z_t = z_o - alpha * relu(z_a - z_o) <= z_o, so
    p_t <= exp(z_o - M_t - log D_t): with the original tile alone we bound p_t, and a tile where both p_s
    and that bound are below ``eps`` skips the augmented recompute and both gradient GEMMs (the original
    GEMM cannot be skipped: without it nothing bounds p_t).
  forward KL with the self / labels teacher: p_t costs no GEMM, so the tile is kept where max(p_s, p_t) >= eps;
    with a target shift the original's bound uses the edited original (z_o[y] - shift >= z_t[y]: a negative
    shift raises the target entry, and the unedited z_o would no longer bound it);
  JSD: g_tile = p_s (g - S) with log p_s <= log(p_s / m) <= -log(1 - beta), so every entry is at most
    p_max ((1 - beta) (-log p_max - log(1 - beta)) + max |S|) (p (-log p) grows below 1/e): a tile under eps
    by that bound skips the teacher GEMMs and both gradient GEMMs (a sound bound, weaker than the KLs': it
    skips tiles whose p_max is ~10-20x below eps);
  argmax_ce: g = p_s - onehot(a), no teacher at all; a tile is kept where p_max >= eps or it holds a row's a.
Skipped entries are each below eps in magnitude (|g| <= p * max(1, |log-ratio - KL|) for the reverse KL);
eps = finfo(input dtype).eps / 32 like CCE's "auto": 2^-12 for bf16 (below the bf16 rounding of the
gradient itself), 2^-28 for fp32 (far inside the 1e-5 relative tolerance). The vocabulary is visited in the
order of decreasing mean student logit (``PERM``, computed in the forward), so the few tokens that carry
probability for a block of rows gather in few vocab blocks and token-level sparsity becomes tile sparsity;
W, bias and the teachers' W rows are read through the permutation, dW/db written through it.
Under a logit transform (``HAS_SOFTCAP_*``, ``logit_scale_*``: common/logit_transform_triton.py) every p above comes
from the transformed logits, the teacher bound from the transformed original (z_t <= z_o holds for them just
the same), and the gradient w.r.t. the student's raw logits is g_l = scale * (1 - tanh^2) * g. The filter
still compares p with eps: the factor scale multiplies every entry and the dense result alike (the largest
entries are O(scale), as they are O(1) without it), and 1 - tanh^2 <= 1 only shrinks an entry, so a skipped
entry stays below eps relative to the gradient's scale, the guarantee the untransformed filter gives.
(Dividing eps by the scale would bound |g_l| absolutely instead, and at Cohere's scale 1/16 skip entries 16x
larger relative to the gradient.)
Every tile adds 1 to ``COUNTER[1]`` and every kept tile 1 to ``COUNTER[0]`` (int32), so the kept fraction
f can be measured.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ...common.tiles import _atomic_dx_dw, _grad_operand, _grouped_pid, _model_tile
from ...common.logit_transform_triton import _transform_grad
from .jsd import _jsd_terms
from .teacher import _edited_teacher, _load_targets, _source_tile, _target_edit


@triton.jit
def _apply_grad(dz, upstream, zs, XS, WS, DX, DW, DB, G, COUNTER, rows, local, cols, row_mask, col_mask, H_S,
                stride_xs, stride_ws, stride_g, logit_scale_s, softcap_s, inv_softcap_s,
                HAS_BS: tl.constexpr, HAS_SOFTCAP_S: tl.constexpr, PRECISION: tl.constexpr,
                STORE_G: tl.constexpr, BLOCK_HG: tl.constexpr):
    """A kept tile's gradient: ``dz`` (d loss / d transformed student logits, per unit upstream) times the
    upstream, through the student's logit transform, into G (deterministic mode) or atomically into dX, dW, db."""
    g = _transform_grad(dz * upstream[:, None], zs, logit_scale_s, softcap_s, inv_softcap_s, HAS_SOFTCAP_S)
    tl.atomic_add(COUNTER, 1)
    if STORE_G:
        tl.store(G + local[:, None] * stride_g + cols[None, :], g.to(G.dtype.element_ty),
                 mask=row_mask[:, None] & col_mask[None, :])
    else:
        if HAS_BS:
            tl.atomic_add(DB + cols, tl.sum(g, axis=0), mask=col_mask)
        g_in = _grad_operand(g, XS, PRECISION)
        # Its own H step: each fp32 atomic needs its own address register (no vector atomics on sm_80),
        # so the [BLOCK_V, BLOCK_HG] dW tile is what sets the register budget here.
        _atomic_dx_dw(g_in, XS, WS, DX, DW, rows, cols, row_mask, col_mask, H_S, stride_xs, stride_ws,
                      PRECISION, BLOCK_HG)


@triton.jit
def _store_zero(G, local, cols, row_mask, col_mask, stride_g,
                STORE_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    # A skipped tile still owns its part of the deterministic mode's gradient buffer (reused per chunk).
    if STORE_G:
        tl.store(G + local[:, None] * stride_g + cols[None, :],
                 tl.zeros((BLOCK_N, BLOCK_V), tl.float32).to(G.dtype.element_ty),
                 mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _backward_kernel(XS, WS, BS, XO, WO, BO, XA, WA, BA, STATS, GRAD_OUT, PERM, TARGETS, SHIFT,
                     DX, DW, DB, G, COUNTER,
                     ROW0, NUM_ROWS, V, H_S, H_O, H_A,
                     stride_xs, stride_ws, stride_xo, stride_wo, stride_xa, stride_wa, stride_g, alpha, eps,
                     logit_scale_s, softcap_s, inv_softcap_s, logit_scale_o, softcap_o, inv_softcap_o,
                     logit_scale_a, softcap_a, inv_softcap_a, log_beta, log_1mb, one_minus_beta,
                     HAS_AUG: tl.constexpr, HAS_BS: tl.constexpr, HAS_BO: tl.constexpr, HAS_BA: tl.constexpr,
                     HAS_SOFTCAP_S: tl.constexpr, HAS_SOFTCAP_O: tl.constexpr, HAS_SOFTCAP_A: tl.constexpr,
                     DIVERGENCE: tl.constexpr, TEACHER: tl.constexpr, HAS_SHIFT: tl.constexpr,
                     PRECISION: tl.constexpr, FILTER: tl.constexpr,
                     SORTED: tl.constexpr, STORE_G: tl.constexpr, GROUP: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                     BLOCK_HG: tl.constexpr):
    pid_n, pid_v = _grouped_pid(tl.program_id(0), tl.cdiv(NUM_ROWS, BLOCK_N), tl.cdiv(V, BLOCK_V), GROUP)
    local = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = local < NUM_ROWS
    rows = ROW0 + local
    pos = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    col_mask = pos < V
    if SORTED:
        cols = tl.load(PERM + pos, mask=col_mask, other=0)
    else:
        cols = pos
    inside = row_mask[:, None] & col_mask[None, :]
    tl.atomic_add(COUNTER + 1, 1)  # every tile; COUNTER[0] counts the kept ones

    m_s = tl.load(STATS + rows * 7 + 0, mask=row_mask, other=0.0)
    log_d_s = tl.load(STATS + rows * 7 + 1, mask=row_mask, other=0.0)
    m_t = tl.load(STATS + rows * 7 + 2, mask=row_mask, other=0.0)
    log_d_t = tl.load(STATS + rows * 7 + 3, mask=row_mask, other=0.0)
    upstream = tl.load(GRAD_OUT + rows, mask=row_mask, other=0.0)
    tgt, shift = _load_targets(TARGETS, SHIFT, rows, row_mask, TEACHER, HAS_SHIFT)

    zs = _model_tile(XS, WS, BS, rows, cols, row_mask, col_mask, H_S, stride_xs, stride_ws, logit_scale_s, softcap_s,
                     inv_softcap_s, HAS_BS, HAS_SOFTCAP_S, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
    if (DIVERGENCE == 0) or (DIVERGENCE == 2):
        # Reverse KL and JSD: the filter looks at the student tile alone, so a skipped tile costs no teacher GEMM.
        if DIVERGENCE == 2:
            s_row = tl.load(STATS + rows * 7 + 4, mask=row_mask, other=0.0)
        keep = True
        if FILTER:
            if DIVERGENCE == 0:
                p_max = tl.exp(tl.max(tl.max(tl.where(inside, zs - m_s[:, None], float("-inf")), axis=1) - log_d_s,
                                      axis=0))
                keep = p_max >= eps
            else:
                # |p_s (g - S)| <= p_s (|g| + |S|) and log p_s <= log(p_s / m) <= -log(1 - beta) (m <= 1,
                # m >= (1 - beta) p_s), so |g| <= (1 - beta) (-log p_s - log(1 - beta)) and, with p (-log p)
                # increasing below 1/e, every entry of the tile is at most
                # p_max ((1 - beta) (-log p_max - log(1 - beta)) + max |S|)   (p_max < 1/e; else keep).
                log_p_max = tl.max(tl.max(tl.where(inside, zs - m_s[:, None], float("-inf")), axis=1) - log_d_s,
                                   axis=0)
                s_max = tl.max(tl.where(row_mask, tl.abs(s_row), 0.0), axis=0)
                bound = tl.exp(log_p_max) * (one_minus_beta * (-log_p_max - log_1mb) + s_max)
                keep = (log_p_max > -1.0) | (bound >= eps)
        if keep:
            zt = _edited_teacher(XO, WO, BO, XA, WA, BA, zs, rows, cols, row_mask, col_mask, tgt, shift, H_O,
                                 H_A, stride_xo, stride_wo, stride_xa, stride_wa, alpha, logit_scale_o, softcap_o,
                                 inv_softcap_o, logit_scale_a, softcap_a, inv_softcap_a, HAS_AUG, HAS_BO, HAS_BA,
                                 HAS_SOFTCAP_O, HAS_SOFTCAP_A, TEACHER, HAS_SHIFT, PRECISION, BLOCK_N, BLOCK_V,
                                 BLOCK_H)
            if DIVERGENCE == 0:
                # log p_s - log p_t - KL == ((z_s - c_s) - (z_t - c_t)) - E_ps[same]: the normalizers cancel
                # analytically, nothing of a common offset's size is formed, and the log-ratio is the forward's
                # expression on bitwise the forward's logits: when p_s is one-hot in fp32 the mean is exactly
                # the argmax's term and the gradient exactly 0.
                mean = tl.load(STATS + rows * 7 + 4, mask=row_mask, other=0.0)
                c_s = tl.load(STATS + rows * 7 + 5, mask=row_mask, other=0.0)
                c_t = tl.load(STATS + rows * 7 + 6, mask=row_mask, other=0.0)
                p_s = tl.exp(tl.where(inside, (zs - m_s[:, None]) - log_d_s[:, None], float("-inf")))
                g = p_s * (((zs - c_s[:, None]) - (zt - c_t[:, None])) - mean[:, None])
            else:
                p_s, g, t_term = _jsd_terms(zs, zt, m_s, log_d_s, m_t, log_d_t, log_beta, log_1mb, one_minus_beta)
                g = tl.where(inside, p_s * (g - s_row[:, None]), 0.0)
            _apply_grad(g, upstream, zs, XS, WS, DX, DW, DB, G, COUNTER, rows, local, cols, row_mask,
                        col_mask, H_S, stride_xs, stride_ws, stride_g, logit_scale_s, softcap_s, inv_softcap_s,
                        HAS_BS, HAS_SOFTCAP_S, PRECISION, STORE_G, BLOCK_HG)
        else:
            _store_zero(G, local, cols, row_mask, col_mask, stride_g, STORE_G, BLOCK_N, BLOCK_V)
    elif (DIVERGENCE == 1) and (TEACHER == 0):
        # Forward KL of the models' teacher: the original's tile bounds p_t, so a skipped tile costs no
        # augmented GEMM.
        p_s = tl.exp(tl.where(inside, (zs - m_s[:, None]) - log_d_s[:, None], float("-inf")))
        zo = _model_tile(XO, WO, BO, rows, cols, row_mask, col_mask, H_O, stride_xo, stride_wo, logit_scale_o,
                         softcap_o, inv_softcap_o, HAS_BO, HAS_SOFTCAP_O, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        keep = True
        if FILTER:
            # z_t <= z_o (both edited at the target: a negative shift raises both), so
            # exp(z_o - M_t - log D_t) bounds p_t from above.
            zb = _target_edit(zo, cols, tgt, shift, HAS_SHIFT)
            bound = tl.max(tl.max(tl.where(inside, (zb - m_t[:, None]) - log_d_t[:, None], float("-inf")), axis=1), axis=0)
            # p_t <= 1 too: clamp the exponent (z_o may sit far above the pushed-down teacher's max).
            keep = tl.maximum(tl.max(tl.max(p_s, axis=1), axis=0), tl.exp(tl.minimum(bound, 0.0))) >= eps
        if keep:
            zt = zo
            if HAS_AUG:
                za = _model_tile(XA, WA, BA, rows, cols, row_mask, col_mask, H_A, stride_xa, stride_wa,
                                 logit_scale_a, softcap_a, inv_softcap_a, HAS_BA, HAS_SOFTCAP_A, PRECISION,
                                 BLOCK_N, BLOCK_V, BLOCK_H)
                zt = zo - alpha * tl.maximum(za - zo, 0.0)
            zt = _target_edit(zt, cols, tgt, shift, HAS_SHIFT)
            p_t = tl.exp(tl.where(inside, (zt - m_t[:, None]) - log_d_t[:, None], float("-inf")))
            _apply_grad(p_s - p_t, upstream, zs, XS, WS, DX, DW, DB, G, COUNTER, rows, local, cols, row_mask,
                        col_mask, H_S, stride_xs, stride_ws, stride_g, logit_scale_s, softcap_s, inv_softcap_s,
                        HAS_BS, HAS_SOFTCAP_S, PRECISION, STORE_G, BLOCK_HG)
        else:
            _store_zero(G, local, cols, row_mask, col_mask, stride_g, STORE_G, BLOCK_N, BLOCK_V)
    else:
        # Forward KL of a self / labels teacher, or argmax_ce (p_t = onehot(a), a from the forward's statistics):
        # the target distribution costs no GEMM, so the filter looks at it exactly.
        p_s = tl.exp(tl.where(inside, (zs - m_s[:, None]) - log_d_s[:, None], float("-inf")))
        if DIVERGENCE == 1:
            zt = _target_edit(_source_tile(zs, cols, tgt, TEACHER), cols, tgt, shift, HAS_SHIFT)
            p_t = tl.exp(tl.where(inside, (zt - m_t[:, None]) - log_d_t[:, None], float("-inf")))
        else:
            arg = tl.load(STATS + rows * 7 + 4, mask=row_mask, other=-1.0).to(tl.int32)
            p_t = (inside & (cols.to(tl.int32)[None, :] == arg[:, None])).to(tl.float32)
        keep = True
        if FILTER:
            keep = tl.max(tl.max(tl.maximum(p_s, p_t), axis=1), axis=0) >= eps
        if keep:
            _apply_grad(p_s - p_t, upstream, zs, XS, WS, DX, DW, DB, G, COUNTER, rows, local, cols, row_mask,
                        col_mask, H_S, stride_xs, stride_ws, stride_g, logit_scale_s, softcap_s, inv_softcap_s,
                        HAS_BS, HAS_SOFTCAP_S, PRECISION, STORE_G, BLOCK_HG)
        else:
            _store_zero(G, local, cols, row_mask, col_mask, stride_g, STORE_G, BLOCK_N, BLOCK_V)
