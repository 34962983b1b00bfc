"""The JSD's second forward pass: per (token block x vocab split), the partial loss and S = sum_i p_s,i g_i.

The generalized JSD (Liger-Kernel's ``jsd_beta``: beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t +
(1 - beta) p_s; rklu/kernels/kl/objective.py) is not a function of online statistics the way the KLs are:
log m needs both final log-normalizers. So the forward runs the statistics kernel first (forward.py, its
normalizer-only mode) and this pass after it, recomputing the logit tiles (one more GEMM per model) with the
row statistics in hand. Splits add plainly (no rescaling): [splits, N, 2] -> ``forward.jsd_combine``.

Per entry, with log p = (z - M) - log D for both models:
    log m = logaddexp(log beta + log p_t, log(1 - beta) + log p_s)   (p_t = 0: log m = log(1-beta) + log p_s)
    g = (1 - beta) (log p_s - log m)                                 (d loss / d log p_s, before centering)
    loss = sum p_s g + beta sum_{p_t > 0} p_t (log p_t - log m),    S = sum p_s g
The backward's gradient tile is p_s (g - S) (backward.py).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ...common.tiles import _grouped_pid, _model_tile
from .teacher import _edited_teacher, _load_targets


@triton.jit
def _jsd_terms(zs, zt, m_s, log_d_s, m_t, log_d_t, log_beta, log_1mb, one_minus_beta):
    """(p_s, g, p_t (log p_t - log m)) of one tile, the last 0 where p_t = 0."""
    log_ps = (zs - m_s[:, None]) - log_d_s[:, None]
    log_pt = (zt - m_t[:, None]) - log_d_t[:, None]
    a = log_beta + log_pt
    b = log_1mb + log_ps
    hi = tl.maximum(a, b)
    lo = tl.minimum(a, b)
    log_m = hi + tl.log(1.0 + tl.exp(lo - hi))  # b is finite, so hi is: exp(-inf) = 0 where p_t = 0
    p_s = tl.exp(log_ps)
    p_t = tl.exp(log_pt)
    g = one_minus_beta * (log_ps - log_m)
    t_term = p_t * (tl.where(p_t > 0.0, log_pt, log_m) - log_m)  # 0 where p_t = 0, never 0 * -inf
    return p_s, g, t_term


@triton.jit
def _jsd_kernel(XS, WS, BS, XO, WO, BO, XA, WA, BA, STATS, PERM, TARGETS, SHIFT, PART,
                N, V, H_S, H_O, H_A, stride_xs, stride_ws, stride_xo, stride_wo, stride_xa, stride_wa,
                alpha, logit_scale_s, softcap_s, inv_softcap_s, logit_scale_o, softcap_o, inv_softcap_o,
                logit_scale_a, softcap_a, inv_softcap_a, beta, log_beta, log_1mb, one_minus_beta,
                SPLIT_V, NUM_SPLITS,
                HAS_AUG: tl.constexpr, HAS_BS: tl.constexpr, HAS_BO: tl.constexpr, HAS_BA: tl.constexpr,
                HAS_SOFTCAP_S: tl.constexpr, HAS_SOFTCAP_O: tl.constexpr, HAS_SOFTCAP_A: tl.constexpr,
                TEACHER: tl.constexpr, HAS_SHIFT: tl.constexpr,
                PRECISION: tl.constexpr, SORTED: tl.constexpr, GROUP: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_n, pid_s = _grouped_pid(tl.program_id(0), tl.cdiv(N, BLOCK_N), NUM_SPLITS, GROUP)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    v_start = pid_s * SPLIT_V
    v_end = tl.minimum(V, v_start + SPLIT_V)
    m_s = tl.load(STATS + rows * 7 + 0, mask=row_mask, other=0.0)
    log_d_s = tl.load(STATS + rows * 7 + 1, mask=row_mask, other=0.0)
    m_t = tl.load(STATS + rows * 7 + 2, mask=row_mask, other=0.0)
    log_d_t = tl.load(STATS + rows * 7 + 3, mask=row_mask, other=0.0)
    tgt, shift = _load_targets(TARGETS, SHIFT, rows, row_mask, TEACHER, HAS_SHIFT)
    loss = tl.zeros((BLOCK_N,), tl.float32)
    s_acc = tl.zeros((BLOCK_N,), tl.float32)
    for v0 in range(v_start, v_end, BLOCK_V):
        pos = v0 + tl.arange(0, BLOCK_V)
        col_mask = pos < v_end
        inside = row_mask[:, None] & col_mask[None, :]
        if SORTED:
            cols = tl.load(PERM + pos, mask=col_mask, other=0)
        else:
            cols = pos
        zs = _model_tile(XS, WS, BS, rows, cols, row_mask, col_mask, H_S, stride_xs, stride_ws, logit_scale_s,
                         softcap_s, inv_softcap_s, HAS_BS, HAS_SOFTCAP_S, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        zt = _edited_teacher(XO, WO, BO, XA, WA, BA, zs, rows, cols, row_mask, col_mask, tgt, shift, H_O, H_A,
                             stride_xo, stride_wo, stride_xa, stride_wa, alpha, logit_scale_o, softcap_o,
                             inv_softcap_o, logit_scale_a, softcap_a, inv_softcap_a, HAS_AUG, HAS_BO, HAS_BA,
                             HAS_SOFTCAP_O, HAS_SOFTCAP_A, TEACHER, HAS_SHIFT, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        p_s, g, t_term = _jsd_terms(zs, zt, m_s, log_d_s, m_t, log_d_t, log_beta, log_1mb, one_minus_beta)
        s_term = tl.where(inside, p_s * g, 0.0)
        s_acc += tl.sum(s_term, axis=1)
        loss += tl.sum(s_term + tl.where(inside, beta * t_term, 0.0), axis=1)
    base = PART + (pid_s * N + rows) * 2
    tl.store(base + 0, loss, mask=row_mask)
    tl.store(base + 1, s_acc, mask=row_mask)
