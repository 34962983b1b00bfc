"""Forward of the fused unlearning KL: per-(token block x vocab split) partial statistics, then a combine.

Grid: one program per (block of BLOCK_N tokens, vocab split of SPLIT_V entries), in grouped order
(``_grouped_pid``). A program walks its split in BLOCK_V blocks; per block it computes the teacher tile
first (original, then augmented -> teacher: at most two fp32 [BLOCK_N, BLOCK_V] tiles live), then the
student tile, one H loop per model. It keeps online statistics of its split per token and writes them to a
[splits, N, 5] fp32 buffer; ``combine_partials`` (torch ops on O(N * splits) data) merges the splits. Why
splits and not one program per token block walking the whole vocabulary: with N = 8192 and BLOCK_N = 64
that is 128 programs on a 132-SM GPU (one wave, no latency hiding) and X re-read from L2 for each vocab
block by few programs; with splits the grid fills the machine and the W tiles of a split are shared by the
row blocks of a group while they sit in L2.

Statistics of a split, per token: the student and teacher maxima m_s, m_t, the normalizers
d = sum exp(z - m), and r, the mean log-ratio under the weighting model (p_s for the reverse KL, p_t for
the forward KL):
    reverse: r = E_{p_s}[(z_s - c_s) - (z_t - c_t)]      forward: r = E_{p_t}[(z_t - m_t) - (z_s - m_s)]
Every difference formed is of two logits of the same row, so a softmax-invariant common offset (a teacher
bias of 1e4) cancels instead of making E[z_s - z_t] and (m_s - m_t) two numbers of the offset's size whose
difference is the small KL (reverse: when the student equals the teacher every term is exactly 0; forward:
the two parts are small and cancel to their rounding).
Forward KL: relative to the running maxima (earlier terms shift by d * (m_new - m_old) when a maximum moves,
a difference of two logits of the same row), so where the teacher puts its mass the terms are small: a
one-hot teacher whose target logit is 1e4 (Cut-Cross-Entropy's forward test as a forward KL) keeps the
torch backend's accuracy. Relative to a fixed reference instead, E_{p_t}[z_t - c] and (M_t - c) are two
numbers of size 1e4 whose difference is the small loss, each rounded to its ulp (~1e-3).
Reverse KL: relative to per-row reference logits c_s, c_t, the row's logits of the vocabulary entry with
the largest mean student logit (``reference_logits``: a GEMV in torch, O(N * H); near the row's top logits,
so (z - c) is small where the probability usually is), the same constant for every split and for the
backward, so the splits combine without re-centering and the backward forms the log-ratio with exactly the
forward's expression: where p_s is one-hot in fp32 (logits ~1e4) the mean is bitwise the argmax's term and
the gradient exactly 0, as in the materialized reference (a running-max re-centering would round
differently and leave ~1e-3 there). The price: a student whose mass sits far above its reference entry
(a one-hot student at 1e4 on a row whose top entry is not the reference) rounds E[z_s - c_s] and
(M_s - c_s) at its ulp, like the forward KL would with references (tests/kernels/test_kernel_extreme_logits.py).

With gradient filtering the forward walks the vocabulary through the same permutation as the backward
(``PERM``, statistics don't depend on the order): a logit then sits at the same place of the same-shaped
tile in both passes, so the backward's recomputed logit is bitwise the one the statistics came from. At
|z| ~ 1e4 one ulp of fp32 is 1e-3, and p = exp(z - M - log D) would move by that much (the CPU
interpreter's numpy GEMMs round differently by position in the tile; on a GPU each element's K-order is
fixed by BLOCK_H, which is why the forward and backward configs of a dtype share BLOCK_H).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...common import logit_transform as lt
from ...common.tiles import _grouped_pid, _model_tile
from .teacher import ARGMAX, FORWARD, REVERSE, _edited_teacher, _load_targets

NUM_STATS = 5  # per split: m_s, d_s, m_t, d_t, r
NUM_ROW_STATS = 7  # combined: M_s, log D_s, M_t, log D_t, mean, c_s, c_t


@triton.jit
def _forward_kernel(XS, WS, BS, XO, WO, BO, XA, WA, BA, PART, PERM, REF, TARGETS, SHIFT,
                    N, V, H_S, H_O, H_A, stride_xs, stride_ws, stride_xo, stride_wo, stride_xa, stride_wa,
                    alpha, logit_scale_s, softcap_s, inv_softcap_s, logit_scale_o, softcap_o, inv_softcap_o,
                    logit_scale_a, softcap_a, inv_softcap_a, SPLIT_V, NUM_SPLITS,
                    HAS_AUG: tl.constexpr, HAS_BS: tl.constexpr, HAS_BO: tl.constexpr, HAS_BA: tl.constexpr,
                    HAS_SOFTCAP_S: tl.constexpr, HAS_SOFTCAP_O: tl.constexpr, HAS_SOFTCAP_A: tl.constexpr,
                    DIVERGENCE: tl.constexpr, TEACHER: tl.constexpr, HAS_SHIFT: tl.constexpr,
                    PRECISION: tl.constexpr, SORTED: tl.constexpr, GROUP: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_n, pid_s = _grouped_pid(tl.program_id(0), tl.cdiv(N, BLOCK_N), NUM_SPLITS, GROUP)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    v_start = pid_s * SPLIT_V
    v_end = tl.minimum(V, v_start + SPLIT_V)
    m_s = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    m_t = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    if DIVERGENCE == 0:
        c_s = tl.load(REF + rows * 2 + 0, mask=row_mask, other=0.0)
        c_t = tl.load(REF + rows * 2 + 1, mask=row_mask, other=0.0)
    tgt, shift = _load_targets(TARGETS, SHIFT, rows, row_mask, TEACHER, HAS_SHIFT)
    d_s = tl.zeros((BLOCK_N,), tl.float32)
    d_t = tl.zeros((BLOCK_N,), tl.float32)
    acc = tl.zeros((BLOCK_N,), tl.float32)
    if DIVERGENCE == 3:
        # The teacher's argmax so far (its lowest column on ties) and the student's logit there.
        arg_t = tl.full((BLOCK_N,), 2147483647, tl.int32)
    for v0 in range(v_start, v_end, BLOCK_V):
        pos = v0 + tl.arange(0, BLOCK_V)
        col_mask = pos < v_end
        valid = col_mask[None, :]
        if SORTED:
            cols = tl.load(PERM + pos, mask=col_mask, other=0)
        else:
            cols = pos
        if TEACHER == 0:
            # Teacher first, folded into its statistics at once, so only one teacher tile (z_t - c_t, or e_t
            # for the forward KL) stays live while the student GEMM runs: two fp32 tiles at a time.
            zs = 0.0
        else:
            # Self / labels teacher: no teacher GEMM; the student tile comes first and gives the teacher's.
            zs = _model_tile(XS, WS, BS, rows, cols, row_mask, col_mask, H_S, stride_xs, stride_ws, logit_scale_s,
                             softcap_s, inv_softcap_s, HAS_BS, HAS_SOFTCAP_S, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        zt = _edited_teacher(XO, WO, BO, XA, WA, BA, zs, rows, cols, row_mask, col_mask, tgt, shift, H_O, H_A,
                             stride_xo, stride_wo, stride_xa, stride_wa, alpha, logit_scale_o, softcap_o,
                             inv_softcap_o, logit_scale_a, softcap_a, inv_softcap_a, HAS_AUG, HAS_BO, HAS_BA,
                             HAS_SOFTCAP_O, HAS_SOFTCAP_A, TEACHER, HAS_SHIFT, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        # Every block holds at least one valid column, so the maxima are finite and the rescale factors
        # exp(m_old - m_new) are exp(-inf) = 0 on the first block, never exp(nan) -- unless the teacher
        # holds -inf (labels, or a shift of +inf): then a block's teacher may be all -inf, and the guards
        # below (compiled only for such teachers) keep every 0 * -inf and -inf - -inf out.
        tile_m_t = tl.max(tl.where(valid, zt, float("-inf")), axis=1)
        new_m_t = tl.maximum(m_t, tile_m_t)
        if DIVERGENCE == 3:
            # Lowest column among the tile's maxima (columns compared, not positions: under PERM too).
            tile_arg = tl.min(tl.where(valid & (zt == tile_m_t[:, None]), cols.to(tl.int32)[None, :],
                                       2147483647), axis=1)
            take = (tile_m_t > m_t) | ((tile_m_t == m_t) & (tile_arg < arg_t))
            arg_t = tl.where(take, tile_arg, arg_t)
        else:
            if (TEACHER == 2) or HAS_SHIFT:
                base_t = tl.where(new_m_t == float("-inf"), 0.0, new_m_t)
                scale_t = tl.where(new_m_t == float("-inf"), 1.0, tl.exp(m_t - base_t))
            else:
                base_t = new_m_t
                scale_t = tl.exp(m_t - new_m_t)
            # Padding columns go through exp(-inf) = 0: exp of their (zero) logits minus the max could overflow.
            e_t = tl.exp(tl.where(valid, zt - base_t[:, None], float("-inf")))
            if DIVERGENCE == 0:
                zt = zt - c_t[:, None]
            if DIVERGENCE == 1:
                # Forward KL: acc = sum e_t ((z_t - m_t) - (z_s - m_s)), relative to the running maxima: when a
                # maximum moves by `shift`, the earlier terms (weight w_prev in the new scale) move by
                # w_prev * shift (on the first block there are none: shift 0, never inf - inf). The teacher's
                # part is added now, the student's after its GEMM, with w_prev taken again from d_t and e_t
                # (no extra vector stays live across the GEMM: this kernel is at its register limit).
                w_prev = d_t * scale_t
                shift_t = base_t - tl.where(m_t == float("-inf"), base_t, m_t)
                if (TEACHER == 2) or HAS_SHIFT:
                    # e_t = 0 where z_t = -inf: the term is 0 there (e_t * (z_t - m) would be 0 * -inf).
                    term_t = e_t * (tl.where(e_t > 0.0, zt, base_t[:, None]) - base_t[:, None])
                else:
                    term_t = e_t * (zt - base_t[:, None])
                acc = (acc * scale_t - w_prev * shift_t) + tl.sum(term_t, axis=1)
            d_t = d_t * scale_t + tl.sum(e_t, axis=1)
        m_t = new_m_t
        if TEACHER == 0:
            zs = _model_tile(XS, WS, BS, rows, cols, row_mask, col_mask, H_S, stride_xs, stride_ws, logit_scale_s,
                             softcap_s, inv_softcap_s, HAS_BS, HAS_SOFTCAP_S, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        tile_m_s = tl.max(tl.where(valid, zs, float("-inf")), axis=1)
        new_m_s = tl.maximum(m_s, tile_m_s)
        scale_s = tl.exp(m_s - new_m_s)
        e_s = tl.exp(tl.where(valid, zs - new_m_s[:, None], float("-inf")))
        if DIVERGENCE == 0:
            acc = acc * scale_s + tl.sum(e_s * ((zs - c_s[:, None]) - zt), axis=1)
        if DIVERGENCE == 1:
            shift_s = new_m_s - tl.where(m_s == float("-inf"), new_m_s, m_s)
            acc = (acc + (d_t - tl.sum(e_t, axis=1)) * shift_s) - tl.sum(e_t * (zs - new_m_s[:, None]), axis=1)
        if DIVERGENCE == 3:
            # acc: the student's logit at the running argmax, taken from the tile that holds that column.
            hit = valid & (cols.to(tl.int32)[None, :] == arg_t[:, None])
            acc = tl.where(tl.max(hit.to(tl.int32), axis=1) > 0, tl.sum(tl.where(hit, zs, 0.0), axis=1), acc)
        d_s = d_s * scale_s + tl.sum(e_s, axis=1)
        m_s = new_m_s
    if DIVERGENCE == 0:
        r = acc / d_s
    elif DIVERGENCE == 1:
        if (TEACHER == 2) or HAS_SHIFT:
            r = acc / tl.where(d_t > 0.0, d_t, 1.0)  # a split without teacher mass: r = 0, not 0 / 0
        else:
            r = acc / d_t
    else:
        r = acc
    if DIVERGENCE == 3:
        d_t = arg_t.to(tl.float32)  # exact: V < 2^24 (checked at launch)
    base = PART + (pid_s * N + rows) * 5
    tl.store(base + 0, m_s, mask=row_mask)
    tl.store(base + 1, d_s, mask=row_mask)
    tl.store(base + 2, m_t, mask=row_mask)
    tl.store(base + 3, d_t, mask=row_mask)
    tl.store(base + 4, r, mask=row_mask)


def combine_partials(part: torch.Tensor, ref: torch.Tensor, divergence: int | bool,
                     inf_teacher: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """[splits, N, 5] partial statistics and the [N, 2] references -> (per-token loss [N], stats [N, 7]).

    ``divergence``: teacher.py's code (True / False: the reverse / forward KL). stats = (M_s, log D_s, M_t,
    log D_t, extra, c_s, c_t) with extra = E_{p_s}[(z_s - c_s) - (z_t - c_t)] for the reverse KL (the forward
    KL's backward does not need it), the teacher's argmax column for argmax_ce; the JSD pass fills it later
    (``jsd_combine``) and its loss is that pass's. Max and log-normalizer are kept apart: log p = (z - M) -
    log D stays exact near the max, where z - (M + log D) would round the lse at the logits' magnitude.
    ``inf_teacher``: the teacher may hold -inf, so a split may carry no teacher mass at all (d_t = 0,
    m_t = -inf, r = NaN): its terms are dropped instead of multiplied by 0.
    """
    divergence = (REVERSE if divergence else FORWARD) if isinstance(divergence, bool) else divergence
    m_s, d_s, m_t, d_t, r = part.unbind(-1)
    big_s = m_s.max(0).values
    big_t = m_t.max(0).values
    w_s = d_s * torch.exp(m_s - big_s)
    sum_s = w_s.sum(0)
    c_s, c_t = ref.unbind(-1)
    if divergence == ARGMAX:
        # The row's argmax: the lowest column among the splits holding the row's maximum (splits walk
        # permuted columns with the filter, so the columns are compared, not the split order).
        cand = torch.where(m_t == big_t, d_t, torch.full_like(d_t, float("inf")))
        arg, split = cand.min(0)
        z_arg = r.gather(0, split[None]).squeeze(0)
        loss = (big_s - z_arg) + torch.log(sum_s)
        zero = torch.zeros_like(big_s)
        stats = torch.stack((big_s, torch.log(sum_s), big_t, zero, arg, c_s, c_t), dim=1)
        return loss, stats
    w_t = d_t * torch.exp(m_t - big_t)
    if inf_teacher:
        w_t = torch.where(d_t > 0, w_t, torch.zeros_like(w_t))
    sum_t = w_t.sum(0)
    if divergence == REVERSE:
        # (M - c): differences of two logits of the same row, free of any common offset.
        mean = (w_s * r).sum(0) / sum_s
        loss = mean - (big_s - c_s) + (big_t - c_t) - torch.log(sum_s) + torch.log(sum_t)
    elif divergence == FORWARD:
        # A split's r is relative to its own maxima: re-based on the row's (0 in the split holding them),
        # grouped so that equal models give exactly 0.
        term = w_t * (r + ((big_s - m_s) - (big_t - m_t)))
        if inf_teacher:
            term = torch.where(w_t > 0, term, torch.zeros_like(term))
        mean = term.sum(0) / sum_t
        loss = mean - torch.log(sum_t) + torch.log(sum_s)
    else:  # JSD: the normalizers only; the divergence comes from the second pass
        mean = torch.zeros_like(big_s)
        loss = mean
    stats = torch.stack((big_s, torch.log(sum_s), big_t, torch.log(sum_t), mean, c_s, c_t), dim=1)
    return loss, stats


def jsd_combine(part: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """[splits, N, 2] partial sums of the JSD pass (loss, S = sum p_s g) -> per-token loss [N]; S goes to
    stats' extra column for the backward."""
    sums = part.sum(0)
    stats[:, 4] = sums[:, 1]
    return sums[:, 0].contiguous()


def reference_logits(xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha: float, col=None,
                     transforms=(lt.IDENTITY,) * 3, teacher_source: str = "models", targets=None,
                     target_shift=None) -> torch.Tensor:
    """[N, 2] fp32: each row's (transformed) student and teacher logit of vocabulary entry ``col`` (a 1-element
    tensor). Any per-row constant is correct (it only has to be the same in the forward and the backward);
    one near the row's largest logits keeps the terms (z - c) small, hence exact. The teacher's includes the
    source and, for the models' teacher, the target edit where ``col`` is the row's target; where that makes it
    infinite (a shift of +inf) the row keeps the unedited logit. The labels teacher takes 0 (its value at the
    target, the row's maximum: its -inf elsewhere would poison every difference). The self teacher takes the
    student's own reference, unedited: then (z_s - c_s) - (z_t - c_t) is bitwise 0 on every entry but the
    target's, where an edited c_t would leave the shift's rounding on all of them (the reverse KL's gradient is
    small there, O(p_s(y) shift), so that rounding would be a large relative error)."""
    index = torch.zeros(1, dtype=torch.long, device=xs.device) if col is None else col.reshape(1)

    def logit0(x, w, b):  # a tensor index: no host synchronization
        z = x.float() @ w.index_select(0, index)[0].float()
        return z if b is None else z + b.index_select(0, index).float()

    t_s, t_o, t_a = transforms
    with torch.autocast(xs.device.type, enabled=False):
        c_s = lt.apply(logit0(xs, ws, bs), t_s)
        if teacher_source == "labels":
            c_t = torch.zeros_like(c_s)
        else:
            c_t = c_s.clone() if teacher_source == "self" else lt.apply(logit0(xo, wo, bo), t_o)
            if xa is not None and teacher_source == "models":
                c_t = c_t - alpha * torch.relu(lt.apply(logit0(xa, wa, ba), t_a) - c_t)
            if target_shift is not None and teacher_source == "models":
                edited = torch.where(targets == index, c_t - target_shift.float(), c_t)
                c_t = torch.where(torch.isfinite(edited), edited, c_t)
    return torch.stack((c_s, c_t), dim=1).contiguous()
