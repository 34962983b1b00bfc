"""The row kernel of the chunked backend (``triton_chunked.py``): from a chunk's fp32 logit buffers, each row's
loss and (WRITE_GRAD) its gradient d loss / d student logits, for every objective of ``objective.py``.

Teacher logits t per tile (TEACHER, a constexpr):
    MODELS  l_o, or l_o - alpha * relu(l_aug - l_o)       (the original's and augmented's buffers)
    SELF    the student's own transformed logits           (no teacher buffer is read: the student tile is reused)
    LABELS  -inf everywhere but 0 at the row's target       (one-hot; no teacher buffer)
then, with HAS_TARGET_SHIFT, t[target] -= shift[row] (shift may be +inf: a -inf teacher entry).

Divergences (DIVERGENCE, a constexpr), over one row read block by block from the fp32 buffers:
    REVERSE / FORWARD  one pass: online maxima and normalizers of student and teacher and the KL's expectation,
                       kept relative to the running maxima (no subtraction of two offset-sized numbers); then
                       the gradient pass p_s ((z_s - m_s) - (z_t - m_t) - E_ps[...]) resp. p_s - p_t.
    JSD                pass 1: maxima and normalizers; pass 2 (log-normalizers known): the loss and
                       S = sum p_s g, g = (1 - beta)(log p_s - log m), m = beta p_t + (1 - beta) p_s;
                       pass 3: the gradient p_s (g - S). log(m / p_s) is a softplus of log p_t - log p_s
                       (no log of a sum that underflows), and g enters the gradient through its excess
                       over the value it takes where p_t = 0 (``_jsd_terms``).
                       (Liger-Kernel's generalized JSD, liger_kernel/ops/jsd.py, same beta convention.)
    ARGMAX_CE          one pass: the student's normalizer, the teacher's running maximum and its lowest
                       index (ties across blocks too: only a strictly larger block maximum moves it) with the
                       student logit there; loss lse_s - z_s[a], gradient p_s - onehot(a).

Teacher entries may be -inf (LABELS, or an infinite shift). Then the teacher's running maximum stays -inf
until its first finite entry, so its statistics are kept relative to a reference point 0 until then, and every
term weighted by p_t is selected away where p_t = 0 (0 * -inf would be NaN). Without such entries
(``TEACHER != LABELS`` and no shift) that code is not compiled: the reverse and forward KL of a model teacher
run exactly the arithmetic they always did.

Rows past the chunk read row n_rows - 1 again (finite values, nothing stored): no all-masked rows, whose
-inf maxima would turn the rescale factors into exp(nan).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..common import logit_transform as lt
from ..common.tiles import AUTOTUNE, INTERPRET
from ..common.logit_transform_triton import _transform, _transform_with_grad

DIVERGENCE_CODES = {"reverse": 0, "forward": 1, "jsd": 2, "argmax_ce": 3}
TEACHER_CODES = {"models": 0, "self": 1, "labels": 2}


@triton.jit
def _logits(Z, B, rows, cols, col_mask, stride_z, HAS_B: tl.constexpr):
    z = tl.load(Z + rows[:, None] * stride_z + cols[None, :], mask=col_mask[None, :], other=0.0).to(tl.float32)
    if HAS_B:
        z += tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return z


@triton.jit
def _student_teacher(ZS, ZO, ZA, BS, BO, BA, rows, cols, col_mask, stride_z, alpha, target, shift,
                     logit_scale_s, softcap_s, inv_softcap_s, logit_scale_o, softcap_o, inv_softcap_o,
                     logit_scale_a, softcap_a, inv_softcap_a,
                     HAS_AUG: tl.constexpr, HAS_BS: tl.constexpr, HAS_BO: tl.constexpr, HAS_BA: tl.constexpr,
                     HAS_SOFTCAP_S: tl.constexpr, HAS_SOFTCAP_O: tl.constexpr, HAS_SOFTCAP_A: tl.constexpr,
                     TEACHER: tl.constexpr, HAS_TARGET_SHIFT: tl.constexpr):
    """Each model's transformed logits (common/logit_transform_triton.py), the teacher from them (or from the
    student tile, or one-hot on the target), and the student's chain rule factor d z_s / d l_s."""
    zs, factor = _transform_with_grad(_logits(ZS, BS, rows, cols, col_mask, stride_z, HAS_BS),
                                      logit_scale_s, softcap_s, inv_softcap_s, HAS_SOFTCAP_S)
    if TEACHER == 0:
        zt = _transform(_logits(ZO, BO, rows, cols, col_mask, stride_z, HAS_BO),
                        logit_scale_o, softcap_o, inv_softcap_o, HAS_SOFTCAP_O)
        if HAS_AUG:
            za = _transform(_logits(ZA, BA, rows, cols, col_mask, stride_z, HAS_BA),
                            logit_scale_a, softcap_a, inv_softcap_a, HAS_SOFTCAP_A)
            zt = zt - alpha * tl.maximum(za - zt, 0.0)
    elif TEACHER == 1:
        zt = zs
    else:
        zt = tl.where(cols[None, :] == target[:, None], 0.0, float("-inf"))
    if HAS_TARGET_SHIFT:
        zt = tl.where(cols[None, :] == target[:, None], zt - shift[:, None], zt)
    return zs, zt, factor


@triton.jit
def _softplus(x):
    """log(1 + e^x), with log1p(u) = log(1 + u) * u / ((1 + u) - 1) (Goldberg, "What every computer scientist
    should know about floating-point arithmetic", 1991; core tl has no log1p): all digits where it is tiny."""
    u = tl.exp(-tl.abs(x))
    w = 1.0 + u
    return tl.maximum(x, 0.0) + tl.where(w == 1.0, u, tl.log(w) * tl.fdiv(u, w - 1.0))


@triton.jit
def _jsd_terms(zs, zt, valid, m_s, m_t, log_d_s, log_d_t, r_offset, log_beta, log_1m_beta):
    """(p_s, p_t, r, E) of a tile: r = log p_t - log p_s and E = log m - log p_s - log(1 - beta)
    = softplus(log(beta / (1 - beta)) + r) >= 0, the excess of log(m / p_s) over its value where p_t = 0
    (r = -inf: E = 0 exactly, never NaN). The gradient uses E, not log(m / p_s): g - sum p_s g is the same,
    but where p_t << p_s (most of the vocabulary of a peaked teacher) E is small with all its digits, and
    g - sum p_s g does not cancel two numbers near -(1 - beta) log(1 - beta). r = (z_t - z_s) + r_offset,
    r_offset = (m_s - m_t) + log(d_s / d_t) per row: exact 0 where the teacher is the student, and one
    rounding at the size of z_t - z_s, not two at the size of the logits' spread. Masked columns get
    p_s = p_t = 0."""
    rel_s = zs - m_s[:, None]
    rel_t = zt - m_t[:, None]
    r = (zt - zs) + r_offset[:, None]
    E = _softplus((log_beta - log_1m_beta) + r)
    p_s = tl.exp(tl.where(valid, rel_s - log_d_s[:, None], float("-inf")))
    p_t = tl.exp(tl.where(valid, rel_t - log_d_t[:, None], float("-inf")))
    return p_s, p_t, r, E


@triton.jit
def _kl_from_stats(acc, d_weight, d_other, log_d_weight, log_d_other, PLAIN: tl.constexpr):
    """(mean log-ratio, KL(p_w || p_o)) of a row from acc = sum_v e_w ((z_w - m_w) - (z_o - m_o)) and the
    normalizers d of the weighting model w and the other model o. PLAIN (the default teacher): the two logs
    apart, as the kernel always computed it; else log(d_o / d_w) as one logarithm (see the caller)."""
    mean_rel = acc / d_weight
    if PLAIN:
        loss = mean_rel - log_d_weight + log_d_other
    else:
        loss = mean_rel + tl.log(tl.fdiv(d_other, d_weight))
    return mean_rel, loss


@triton.jit
def _chunk_kernel(ZS, ZO, ZA, BS, BO, BA, TARGETS, SHIFTS, ROW_SCALE, G, LOSS,
                  n_rows, V, stride_z, stride_g, alpha, jsd_beta, log_beta, log_1m_beta,
                  logit_scale_s, softcap_s, inv_softcap_s,
                  logit_scale_o, softcap_o, inv_softcap_o, logit_scale_a, softcap_a, inv_softcap_a,
                  HAS_AUG: tl.constexpr, HAS_BS: tl.constexpr, HAS_BO: tl.constexpr, HAS_BA: tl.constexpr,
                  HAS_SOFTCAP_S: tl.constexpr, HAS_SOFTCAP_O: tl.constexpr, HAS_SOFTCAP_A: tl.constexpr,
                  DIVERGENCE: tl.constexpr, TEACHER: tl.constexpr, HAS_TARGET_SHIFT: tl.constexpr,
                  WRITE_GRAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    """BLOCK_N rows of the chunk per program: loss [rows] and (WRITE_GRAD) the logit gradient [rows, V]."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    rows = tl.minimum(rows, n_rows - 1).to(tl.int64)
    if TEACHER == 2 or HAS_TARGET_SHIFT:
        target = tl.load(TARGETS + rows)
    else:
        target = rows  # never compared: no target edit
    if HAS_TARGET_SHIFT:
        shift = tl.load(SHIFTS + rows)
    else:
        shift = tl.zeros((BLOCK_N,), tl.float32)
    m_s = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    m_t = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    d_s = tl.zeros((BLOCK_N,), tl.float32)
    d_t = tl.zeros((BLOCK_N,), tl.float32)
    # acc = sum_v exp(z_s - m_s) * ((z_s - m_s) - (z_t - m_t)) (reverse; forward: s <-> t), kept relative to
    # the running maxima: E[z_s - z_t] - (m_s - m_t) would cancel two numbers of the logits' offset size.
    acc = tl.zeros((BLOCK_N,), tl.float32)
    # argmax_ce: the teacher's running argmax and the student's logit there.
    arg = tl.zeros((BLOCK_N,), tl.int32)
    zs_arg = tl.zeros((BLOCK_N,), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        # (the factor is dead code here: the compiler drops it)
        zs, zt, _ = _student_teacher(ZS, ZO, ZA, BS, BO, BA, rows, cols, col_mask, stride_z, alpha, target, shift,
                                     logit_scale_s, softcap_s, inv_softcap_s, logit_scale_o, softcap_o,
                                     inv_softcap_o, logit_scale_a, softcap_a, inv_softcap_a,
                                     HAS_AUG, HAS_BS, HAS_BO, HAS_BA, HAS_SOFTCAP_S, HAS_SOFTCAP_O, HAS_SOFTCAP_A,
                                     TEACHER, HAS_TARGET_SHIFT)
        valid = col_mask[None, :]
        # Every block holds a valid column: the new maxima are finite, exp(m_old - m_new) is 0 on the first.
        new_m_s = tl.maximum(m_s, tl.max(tl.where(valid, zs, float("-inf")), axis=1))
        scale_s = tl.exp(m_s - new_m_s)
        rel_s = zs - new_m_s[:, None]
        e_s = tl.exp(tl.where(valid, rel_s, float("-inf")))
        if DIVERGENCE == 3:
            block_max = tl.max(tl.where(valid, zt, float("-inf")), axis=1)
            at_max = valid & (zt == block_max[:, None])
            block_arg = tl.min(tl.where(at_max, cols[None, :], V), axis=1)
            block_zs = tl.sum(tl.where(cols[None, :] == block_arg[:, None], zs, 0.0), axis=1)
            # Strictly larger only: on a tie the earlier block's (lower) index stays.
            better = block_max > m_t
            arg = tl.where(better, block_arg, arg)
            zs_arg = tl.where(better, block_zs, zs_arg)
            m_t = tl.maximum(m_t, block_max)
        else:
            new_m_t = tl.maximum(m_t, tl.max(tl.where(valid, zt, float("-inf")), axis=1))
            # Moving the maxima shifts every earlier term's bracket by the same amount: d_old * shift. On the
            # first block there are no earlier terms (and m_old = -inf): take the shift as 0, never inf - inf.
            first = m_s == float("-inf")
            old_m_s = tl.where(first, new_m_s, m_s)
            if TEACHER == 2 or HAS_TARGET_SHIFT:
                # The teacher's maximum may still be -inf after this block: its terms relative to 0 until it
                # has a finite entry (then d_t = 0 and every term weighted by p_t is 0 so far).
                ref_t = tl.where(new_m_t == float("-inf"), 0.0, new_m_t)
                old_ref_t = tl.where(m_t == float("-inf"), ref_t, m_t)
                scale_t = tl.exp(old_ref_t - ref_t)
            else:
                ref_t = new_m_t
                old_ref_t = tl.where(first, new_m_t, m_t)
                scale_t = tl.exp(m_t - new_m_t)
            rel_t = zt - ref_t[:, None]
            e_t = tl.exp(tl.where(valid, rel_t, float("-inf")))
            if DIVERGENCE == 0:
                moved = (ref_t - old_ref_t) - (new_m_s - old_m_s)
                acc = scale_s * (acc + d_s * moved) + tl.sum(e_s * (rel_s - rel_t), axis=1)
            elif DIVERGENCE == 1:
                moved = (new_m_s - old_m_s) - (ref_t - old_ref_t)
                if TEACHER == 2 or HAS_TARGET_SHIFT:
                    term = e_t * tl.where(e_t > 0.0, rel_t - rel_s, 0.0)  # p_t = 0 entries: 0, not 0 * -inf
                else:
                    term = e_t * (rel_t - rel_s)
                acc = scale_t * (acc + d_t * moved) + tl.sum(term, axis=1)
            d_t = d_t * scale_t + tl.sum(e_t, axis=1)
            m_t = new_m_t
        d_s = d_s * scale_s + tl.sum(e_s, axis=1)
        m_s = new_m_s
    log_d_s = tl.log(d_s)
    last = (V - 1) // BLOCK_V * BLOCK_V
    # A self teacher or an edited one is close to the student: a small divergence, where log(d_t / d_s) as
    # one logarithm of a ratio keeps digits that log d_t - log d_s (two roundings at the logs' size) loses.
    # (tl.fdiv in the new paths: an IEEE division's slow path left an 8-byte stack frame on sm_90.)
    if DIVERGENCE == 0:
        log_d_t = tl.log(d_t)
        # E_ps[(z_s - m_s) - (z_t - m_t)]
        mean_rel, loss = _kl_from_stats(acc, d_s, d_t, log_d_s, log_d_t, TEACHER == 0 and not HAS_TARGET_SHIFT)
    elif DIVERGENCE == 1:
        log_d_t = tl.log(d_t)
        # E_pt[(z_t - m_t) - (z_s - m_s)]
        mean_rel, loss = _kl_from_stats(acc, d_t, d_s, log_d_t, log_d_s, TEACHER == 0 and not HAS_TARGET_SHIFT)
    elif DIVERGENCE == 2:
        log_d_t = tl.log(d_t)
        r_offset = (m_s - m_t) + tl.log(tl.fdiv(d_s, d_t))  # log p_t - log p_s = (z_t - z_s) + r_offset
        one_m_beta = 1.0 - jsd_beta
        loss = tl.zeros((BLOCK_N,), tl.float32)
        # g enters the gradient as g - S only: E is taken relative to an anchor, its value where most of a row's
        # entries sit -- p_t = 0 for a model or labels teacher (E = 0 there already), z_t = z_s for a self
        # teacher (the entries its edit did not touch: E - anchor = 0 exactly) -- and S is normalized by the
        # computed sum p_s, so that a constant E gives g - S = 0 rather than E (1 - sum p_s).
        if TEACHER == 1:
            anchor = _softplus((log_beta - log_1m_beta) + r_offset)
        else:
            anchor = tl.zeros((BLOCK_N,), tl.float32)
        mean_g = tl.zeros((BLOCK_N,), tl.float32)  # sum p_s (E - anchor)
        p_sum = tl.zeros((BLOCK_N,), tl.float32)
        # Backwards: the blocks pass 1 read last first (likeliest still in cache); pass 3 then runs forwards.
        for i in range(0, V, BLOCK_V):
            cols = (last - i) + tl.arange(0, BLOCK_V)
            col_mask = cols < V
            zs, zt, _ = _student_teacher(
                ZS, ZO, ZA, BS, BO, BA, rows, cols, col_mask, stride_z, alpha, target, shift,
                logit_scale_s, softcap_s, inv_softcap_s, logit_scale_o, softcap_o, inv_softcap_o,
                logit_scale_a, softcap_a, inv_softcap_a,
                HAS_AUG, HAS_BS, HAS_BO, HAS_BA, HAS_SOFTCAP_S, HAS_SOFTCAP_O, HAS_SOFTCAP_A,
                TEACHER, HAS_TARGET_SHIFT)
            p_s, p_t, r, E = _jsd_terms(zs, zt, col_mask[None, :], m_s, m_t, log_d_s, log_d_t, r_offset,
                                        log_beta, log_1m_beta)
            L = E + log_1m_beta  # log m - log p_s
            # beta p_t (log p_t - log m) + (1 - beta) p_s (log p_s - log m); p_t = 0 entries add 0.
            teacher_term = p_t * tl.where(p_t > 0.0, r - L, 0.0)
            loss += tl.sum(jsd_beta * teacher_term - one_m_beta * (p_s * L), axis=1)
            mean_g += tl.sum(p_s * (E - anchor[:, None]), axis=1)
            p_sum += tl.sum(p_s, axis=1)
        mean_g = -one_m_beta * tl.fdiv(mean_g, p_sum)  # S, less the anchor's constant share, which g - S cancels
    else:
        loss = log_d_s - (zs_arg - m_s)  # lse_s - z_s[a]
    tl.store(LOSS + rows, loss, mask=row_mask)
    if WRITE_GRAD:
        row_scale = tl.load(ROW_SCALE + rows, mask=row_mask, other=0.0)
        for i in range(0, V, BLOCK_V):
            # Backwards through the row after a forward pass: the blocks read last are the likeliest still in
            # L1/L2 (the JSD's second pass ran backwards: this one runs forwards).
            if DIVERGENCE == 2:
                v0 = i
            else:
                v0 = last - i
            cols = v0 + tl.arange(0, BLOCK_V)
            col_mask = cols < V
            zs, zt, factor = _student_teacher(
                ZS, ZO, ZA, BS, BO, BA, rows, cols, col_mask, stride_z, alpha, target, shift,
                logit_scale_s, softcap_s, inv_softcap_s, logit_scale_o, softcap_o, inv_softcap_o,
                logit_scale_a, softcap_a, inv_softcap_a,
                HAS_AUG, HAS_BS, HAS_BO, HAS_BA, HAS_SOFTCAP_S, HAS_SOFTCAP_O, HAS_SOFTCAP_A,
                TEACHER, HAS_TARGET_SHIFT)
            valid = col_mask[None, :]
            if DIVERGENCE == 2:
                p_s, p_t, r, E = _jsd_terms(zs, zt, valid, m_s, m_t, log_d_s, log_d_t, r_offset, log_beta,
                                            log_1m_beta)
                g = p_s * (-one_m_beta * (E - anchor[:, None]) - mean_g[:, None])
            else:
                rel_s = zs - m_s[:, None]
                p_s = tl.exp(tl.where(valid, rel_s - log_d_s[:, None], float("-inf")))
                if DIVERGENCE == 0:
                    # log p_s - log p_t - KL == (z_s - m_s) - (z_t - m_t) - E_ps[...]: the normalizers cancel.
                    g = p_s * ((rel_s - (zt - m_t[:, None])) - mean_rel[:, None])
                elif DIVERGENCE == 1:
                    g = p_s - tl.exp(tl.where(valid, (zt - m_t[:, None]) - log_d_t[:, None], float("-inf")))
                else:
                    g = p_s - tl.where(cols[None, :] == arg[:, None], 1.0, 0.0)
            # d loss / d (untransformed) student logits: the row's weight and the transform's chain factor.
            g = g * row_scale[:, None] * factor
            tl.store(G + rows[:, None] * stride_g + cols[None, :], g.to(G.dtype.element_ty),
                     mask=row_mask[:, None] & valid)


def capped_configs(divergence: str, teacher: str = "models", shift: bool = False) -> bool:
    """Whether a variant takes the register-capped config list: every path of the objective (a divergence other
    than the KLs, a self / labels teacher, a target shift) keeps more per-row state live than the plain KLs."""
    return divergence not in ("reverse", "forward") or teacher != "models" or shift


def autotune_configs(divergence: str = "reverse", teacher: str = "models", shift: bool = False) -> list:
    """CUDA tiles (BLOCK_N rows x BLOCK_V vocab entries per step): a memory-bound row kernel, so few rows and
    long vocab strips; every config is checked spill-free on sm_80/sm_90 by benchmarks/gpu_compile.py."""
    # (4, 1024) spilled 8 bytes on sm_90 with 8 warps (fp32) and with 16 warps (bf16, 128-register cap):
    # dropped (benchmarks/results/gpu-compile.md).
    shapes = [(1, 2048, 8, 1), (2, 1024, 8, 1), (1, 4096, 16, 1)]
    if capped_configs(divergence, teacher, shift):
        # The JSD's three passes keep more per-row state live: ptxas stopped at 64 registers and spilled 8-16
        # bytes on sm_90 (16 warps; a self teacher with 2 rows at 8 warps) unless told it may use what a block
        # of that size can have (65536 / threads, at most 255); a target shift with softcaps spilled 8 bytes
        # on sm_80 at 16 warps likewise.
        return [triton.Config(dict(BLOCK_N=bn, BLOCK_V=bv), num_warps=w, num_stages=st,
                              maxnreg=min(255, 65536 // (32 * w))) for bn, bv, w, st in shapes]
    return [triton.Config(dict(BLOCK_N=bn, BLOCK_V=bv), num_warps=w, num_stages=st) for bn, bv, w, st in shapes]


def block_sizes() -> dict:
    """Fixed tiles for the interpreter (it steps through blocks in Python: fewer, larger ones)."""
    return dict(BLOCK_N=32, BLOCK_V=1024, num_warps=4)


# One autotuner per config list (the JSD's carries register caps); each compiles its own flag variants.
_chunk_tuned = triton.autotune(autotune_configs(), key=["V"])(_chunk_kernel) if AUTOTUNE else None
_chunk_tuned_jsd = triton.autotune(autotune_configs("jsd"), key=["V"])(_chunk_kernel) if AUTOTUNE else None
TUNED_KERNELS = {"chunk": _chunk_tuned, "chunk_jsd": _chunk_tuned_jsd} if AUTOTUNE else {}


def run_chunk_kernel(zs, zo, za, bs, bo, ba, row_scale, g, loss, alpha, write_grad, transforms, *,
                     divergence="reverse", teacher="models", jsd_beta=0.5, targets=None, shifts=None):
    """Loss [rows] into ``loss`` and (``write_grad``) the gradient into ``g`` for one chunk of fp32 logits
    ``zs`` (and ``zo``, ``za`` for a model teacher; None otherwise). ``targets`` int64 [rows] for a labels
    teacher or a target shift, ``shifts`` fp32 [rows] or None."""
    import math

    n, v = zs.shape
    dummy = zs  # never dereferenced: the HAS_* / TEACHER / WRITE_GRAD flags switch the accesses off
    models = teacher == "models"
    jsd = divergence == "jsd"
    args = (zs, zo if models else dummy, za if za is not None else dummy, bs if bs is not None else dummy,
            bo if bo is not None and models else dummy, ba if ba is not None else dummy,
            targets if targets is not None else dummy, shifts if shifts is not None else dummy,
            row_scale if row_scale is not None else dummy, g if g is not None else dummy, loss,
            n, v, zs.stride(0), g.stride(0) if g is not None else 0, float(alpha), float(jsd_beta),
            math.log(jsd_beta) if jsd else 0.0, math.log1p(-jsd_beta) if jsd else 0.0)
    transform_args, (soft_s, soft_o, soft_a) = lt.kernel_args(transforms)
    args += transform_args
    flags = dict(HAS_AUG=za is not None and models, HAS_BS=bs is not None, HAS_BO=bo is not None and models,
                 HAS_BA=ba is not None and za is not None and models, HAS_SOFTCAP_S=soft_s,
                 HAS_SOFTCAP_O=soft_o and models, HAS_SOFTCAP_A=soft_a and za is not None and models,
                 DIVERGENCE=DIVERGENCE_CODES[divergence], TEACHER=TEACHER_CODES[teacher],
                 HAS_TARGET_SHIFT=shifts is not None, WRITE_GRAD=write_grad)
    if AUTOTUNE:
        tuned = _chunk_tuned_jsd if capped_configs(divergence, teacher, shifts is not None) else _chunk_tuned
        tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](*args, **flags)
    else:
        if INTERPRET:
            blocks = block_sizes()
        else:
            first = autotune_configs(divergence)[0]
            blocks = dict(first.kwargs, num_warps=first.num_warps)
            if first.maxnreg:
                blocks["maxnreg"] = first.maxnreg
        _chunk_kernel[(triton.cdiv(n, blocks["BLOCK_N"]),)](*args, **flags, **blocks)
