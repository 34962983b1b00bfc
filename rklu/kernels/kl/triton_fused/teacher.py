"""The teacher of the KL objective (rklu/kernels/kl/objective.py) inside the fused kernels: its source and
its target edit, on one [BLOCK_N, BLOCK_V] tile.

Constexpr codes shared by the forward, the JSD pass and the backward (each new path is compiled only into
the variants that use it, so the kernels of the original objective are unchanged):
  DIVERGENCE  0 reverse KL, 1 forward KL, 2 JSD, 3 cross-entropy to the teacher's argmax
  TEACHER     0 the models (original, optionally augmented: a GEMM per model), 1 the student itself
              (the student tile, detached: no GEMM), 2 the labels (one-hot: 0 at the target, -inf elsewhere:
              no GEMM)
  HAS_SHIFT   t[y] -= shift[row] at the row's target column y (after the source and the augmented edit);
              the shift may be +inf (t[y] = -inf) or negative (t[y] rises)
A teacher that can hold -inf (labels, or any shift) makes the statistics guard every ``0 * -inf`` and
``-inf - -inf`` (``INF_TEACHER``, derived from the two flags); without it no guard is compiled.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ...common.tiles import _teacher_tile

REVERSE, FORWARD, JSD, ARGMAX = 0, 1, 2, 3
DIVERGENCE_CODES = {"reverse": REVERSE, "forward": FORWARD, "jsd": JSD, "argmax_ce": ARGMAX}
MODELS, SELF, LABELS = 0, 1, 2
TEACHER_CODES = {"models": MODELS, "self": SELF, "labels": LABELS}


@triton.jit
def _load_targets(TARGETS, SHIFT, rows, row_mask, TEACHER: tl.constexpr, HAS_SHIFT: tl.constexpr):
    """Each row's target column (-1 on padding rows and where no target is needed: matches no column) and
    shift (0 where none)."""
    if (TEACHER == 2) or HAS_SHIFT:
        tgt = tl.load(TARGETS + rows, mask=row_mask, other=-1)
    else:
        tgt = tl.full(rows.shape, -1, tl.int64)
    if HAS_SHIFT:
        shift = tl.load(SHIFT + rows, mask=row_mask, other=0.0)
    else:
        shift = tl.zeros(rows.shape, tl.float32)
    return tgt, shift


@triton.jit
def _target_edit(zt, cols, tgt, shift, HAS_SHIFT: tl.constexpr):
    """t[y] -= shift: +inf gives -inf there, never NaN (a finite t minus +inf)."""
    if HAS_SHIFT:
        zt = tl.where(cols[None, :] == tgt[:, None], zt - shift[:, None], zt)
    return zt


@triton.jit
def _source_tile(zs, cols, tgt, TEACHER: tl.constexpr):
    """The teacher tile of the sources without a GEMM: the student's own tile (self) or the one-hot labels
    teacher (0 at the target column, -inf elsewhere)."""
    if TEACHER == 1:
        zt = zs
    else:
        zt = tl.where(cols[None, :] == tgt[:, None], 0.0, float("-inf")) + tl.zeros_like(zs)
    return zt


@triton.jit
def _edited_teacher(XO, WO, BO, XA, WA, BA, zs, rows, cols, row_mask, col_mask, tgt, shift, H_O, H_A,
                    stride_xo, stride_wo, stride_xa, stride_wa, alpha, logit_scale_o, softcap_o, inv_softcap_o,
                    logit_scale_a, softcap_a, inv_softcap_a,
                    HAS_AUG: tl.constexpr, HAS_BO: tl.constexpr, HAS_BA: tl.constexpr,
                    HAS_SOFTCAP_O: tl.constexpr, HAS_SOFTCAP_A: tl.constexpr, TEACHER: tl.constexpr,
                    HAS_SHIFT: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """The edited teacher tile of any source: the models' GEMMs (``zs`` unused: the forward passes 0.0 and
    runs the student GEMM after folding the teacher in), or the student tile ``zs`` / the labels; then the
    target edit."""
    if TEACHER == 0:
        zt = _teacher_tile(XO, WO, BO, XA, WA, BA, rows, cols, row_mask, col_mask, H_O, H_A,
                           stride_xo, stride_wo, stride_xa, stride_wa, alpha, logit_scale_o, softcap_o,
                           inv_softcap_o, logit_scale_a, softcap_a, inv_softcap_a,
                           HAS_AUG, HAS_BO, HAS_BA, HAS_SOFTCAP_O, HAS_SOFTCAP_A, PRECISION, BLOCK_N,
                           BLOCK_V, BLOCK_H)
    else:
        zt = _source_tile(zs, cols, tgt, TEACHER)
    return _target_edit(zt, cols, tgt, shift, HAS_SHIFT)
