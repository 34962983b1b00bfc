"""Building blocks shared by the fused kernels' forward and backward: GEMM precision modes, one logit tile
(one H loop per model, each model with its own hidden size) with or without its model's logit transform, the
teacher tile, and the grouped program order.

Each model has its own hidden size and strides (a teacher may be larger or smaller than the student: every
hidden state matches its own lm_head), so every GEMM loops over its own H.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .logit_transform_triton import _transform

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# CUDA only: triton.autotune over each kernel's config list. The interpreter keeps fixed tiles (autotuning
# would only time the Python interpreter); RKLU_TRITON_AUTOTUNE=0 uses them on CUDA too.
AUTOTUNE = not INTERPRET and os.environ.get("RKLU_TRITON_AUTOTUNE", "1") != "0"
GROUP = 8  # row blocks per group in the grouped program order (``_grouped_pid``)

# How tl.dot treats its operands. NATIVE: input dtype on tensor cores (bf16/fp16), fp32 accumulation.
# IEEE: fp32 inputs in full fp32 (no TF32 rounding). UPCAST: operands cast to fp32 first; the Triton CPU
# interpreter gets bf16 tl.dot wrong, so bf16 runs this way under TRITON_INTERPRET=1.
NATIVE, IEEE, UPCAST = 0, 1, 2


def gemm_dtype(x: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    """Triton GEMM inputs share one dtype: the autocast dtype when autocast is on (what lm_head would use),
    else the wider of the hidden states' and the weight's dtypes. Logits still accumulate in float32."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return torch.promote_types(x.dtype, w.dtype)


def to_dtype(dtype: torch.dtype, *tensors) -> tuple:
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def gemm_precision(dtype) -> int:
    """The tl.dot mode for GEMM inputs of ``dtype``: IEEE for fp32, UPCAST for bf16 under the interpreter,
    else NATIVE."""
    if dtype == torch.float32:
        return IEEE
    if dtype == torch.bfloat16 and INTERPRET:
        return UPCAST
    return NATIVE


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
def _atomic_dx_dw(g_in, X, W, DX, DW, rows, cols, row_mask, col_mask, H, stride_x, stride_w,
                  PRECISION: tl.constexpr, BLOCK_H: tl.constexpr):
    """DX[rows] += g_in @ W[cols] and DW[cols] += g_in.T @ X[rows] by fp32 atomics, BLOCK_H features at a time
    (DX, DW: contiguous [*, H] fp32)."""
    for h0 in range(0, H, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        h_mask = hs < H
        x_mask = row_mask[:, None] & h_mask[None, :]
        w_mask = col_mask[:, None] & h_mask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + hs[None, :], mask=x_mask, other=0.0)
        w = tl.load(W + cols[:, None] * stride_w + hs[None, :], mask=w_mask, other=0.0)
        tl.atomic_add(DX + rows[:, None] * H + hs[None, :], _mm(g_in, w, PRECISION), mask=x_mask)
        tl.atomic_add(DW + cols[:, None] * H + hs[None, :], _mm(tl.trans(g_in), x, PRECISION), mask=w_mask)


@triton.jit
def _logit_tile(X, W, B, rows, cols, row_mask, col_mask, H, stride_x, stride_w,
                HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """float32 [BLOCK_N, BLOCK_V] tile of X[rows] @ W[cols].T (+ B[cols]); never rounded to the input dtype.
    ``cols`` may be any set of vocabulary rows (the backward walks them through a permutation)."""
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
def _model_tile(X, W, B, rows, cols, row_mask, col_mask, H, stride_x, stride_w, logit_scale, softcap,
                inv_softcap, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """One model's logits tile after its logit transform (scale, softcap): what its lm_head would give."""
    return _transform(_logit_tile(X, W, B, rows, cols, row_mask, col_mask, H, stride_x, stride_w, HAS_BIAS,
                                  PRECISION, BLOCK_N, BLOCK_V, BLOCK_H), logit_scale, softcap, inv_softcap,
                      HAS_SOFTCAP)


@triton.jit
def _teacher_tile(XO, WO, BO, XA, WA, BA, rows, cols, row_mask, col_mask, H_O, H_A,
                  stride_xo, stride_wo, stride_xa, stride_wa, alpha, logit_scale_o, softcap_o, inv_softcap_o,
                  logit_scale_a, softcap_a, inv_softcap_a,
                  HAS_AUG: tl.constexpr, HAS_BO: tl.constexpr, HAS_BA: tl.constexpr,
                  HAS_SOFTCAP_O: tl.constexpr, HAS_SOFTCAP_A: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """z_o - alpha * relu(z_aug - z_o) on each model's transformed logits (common/logit_transform_triton.py):
    original then augmented, so two fp32 tiles are live, then one."""
    zt = _model_tile(XO, WO, BO, rows, cols, row_mask, col_mask, H_O, stride_xo, stride_wo, logit_scale_o,
                     softcap_o, inv_softcap_o, HAS_BO, HAS_SOFTCAP_O, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
    if HAS_AUG:
        za = _model_tile(XA, WA, BA, rows, cols, row_mask, col_mask, H_A, stride_xa, stride_wa, logit_scale_a,
                         softcap_a, inv_softcap_a, HAS_BA, HAS_SOFTCAP_A, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        zt = zt - alpha * tl.maximum(za - zt, 0.0)
    return zt


@triton.jit
def _grouped_pid(pid, num_rows, num_cols, GROUP: tl.constexpr):
    """(row block, column block) of program ``pid`` in grouped order: consecutive programs sweep the
    column blocks of a group of GROUP row blocks, so the X tiles of the group and the W tiles of the
    current columns stay in L2 while a wave of programs runs (Triton's matmul tutorial order)."""
    in_group = GROUP * num_cols
    first_row = (pid // in_group) * GROUP
    group_rows = tl.minimum(num_rows - first_row, GROUP)
    local = pid % in_group
    return first_row + local % group_rows, local // group_rows
