"""Torch chunked backend: the fused operation with the same math and memory shape as the Triton kernel,
in chunks of tokens, so peak extra memory is one [chunk, V] working set instead of [N, V].

This is the CPU path and the fallback on GPUs without Triton.
"""
from __future__ import annotations

import torch

from ..common import logit_transform as lt
from ..common.torch_chunks import compute_dtype, torch_chunk_tokens
from .chunk_math import ChunkObjective, chunk_loss_and_grad


def _logits(hidden: torch.Tensor, weight32: torch.Tensor, bias32: torch.Tensor | None) -> torch.Tensor:
    out = hidden.to(weight32.dtype) @ weight32.T
    return out if bias32 is None else out.add_(bias32)


def _as(t, dtype):
    return None if t is None else t.detach().to(dtype)


def unlearning_kl(xs, ws, bs, xo, wo, bo, xa, wa, ba, *, alpha, direction, grad_in_forward, chunk_tokens,
                  grad_filter, transforms=(lt.IDENTITY,) * 3, teacher_source="models", jsd_beta=0.5, targets=None,
                  target_shift=None):
    """The KL op of backend "torch" (common/backends.py). Dense gradients: ``grad_filter`` does not apply.
    The self teacher reuses each chunk's student logits (no second GEMM); the labels teacher ignores xo."""
    objective = ChunkObjective(teacher_source, float(jsd_beta), targets, target_shift)
    return TorchChunkedUnlearningKL.apply(xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha, direction, grad_in_forward,
                                          chunk_tokens, transforms, objective)


_DEFAULT_OBJECTIVE = ChunkObjective()


class TorchChunkedUnlearningKL(torch.autograd.Function):
    """Counted tokens only ([N, H] inputs). Returns the per-token loss [N] in float32.

    Gradient strategy: when the caller reduces with a uniform weight (mean/sum) the gradient is computed
    inside the forward pass (one pass over the logits instead of two; backward only rescales by the
    incoming scalar). With ``reduction="none"`` each token has its own upstream weight, so the backward
    recomputes the chunk's logits.
    """

    @staticmethod
    def forward(ctx, xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha, direction, grad_in_forward, chunk_tokens,
                transforms=(lt.IDENTITY,) * 3, objective=_DEFAULT_OBJECTIVE):
        dtype = compute_dtype(xs, ws)
        ws32, bs32 = _as(ws, dtype), _as(bs, dtype)
        # The self and labels teachers never read the original model (the API passes the student's in its place).
        wo32, bo32 = (_as(wo, dtype), _as(bo, dtype)) if objective.uses_original else (None, None)
        wa32, ba32 = _as(wa, dtype), _as(ba, dtype)
        n = xs.shape[0]
        chunk = chunk_tokens or torch_chunk_tokens(ws.shape[0])
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        in_forward = grad_in_forward and need_grad
        per_token = torch.empty(n, dtype=dtype, device=xs.device)
        grads = _GradAccumulator(xs, ws32, bs32) if in_forward else None
        with torch.no_grad():
            for start in range(0, n, chunk):
                end = min(n, start + chunk)
                loss, g = _chunk(xs, xo, xa, start, end, ws32, bs32, wo32, bo32, wa32, ba32, alpha, direction,
                                 in_forward, transforms, objective)
                per_token[start:end] = loss
                if in_forward:
                    grads.add(g, start, end)
        ctx.alpha, ctx.direction, ctx.chunk, ctx.transforms = alpha, direction, chunk, transforms
        ctx.objective = objective
        ctx.grad_in_forward = in_forward
        ctx.dtypes = (xs.dtype, ws.dtype, None if bs is None else bs.dtype)
        ctx.has_bias = bs is not None
        if in_forward:
            ctx.save_for_backward(*grads.result())
        else:
            ctx.save_for_backward(xs, ws, bs, xo, wo, bo, xa, wa, ba)
        return per_token  # float32, or float64 for float64 inputs

    @staticmethod
    def backward(ctx, grad_per_token):
        if ctx.grad_in_forward:
            dx, dw, db = ctx.saved_tensors
            # Uniform upstream weight (mean/sum): every entry of grad_per_token is the same scalar.
            scale = grad_per_token[0].to(dx.dtype) if grad_per_token.numel() else 0.0
            dx, dw = dx * scale, dw * scale
            db = db * scale if db is not None else None
        else:
            xs, ws, bs, xo, wo, bo, xa, wa, ba = ctx.saved_tensors
            dtype = compute_dtype(xs, ws)
            ws32, bs32 = _as(ws, dtype), _as(bs, dtype)
            wo32, bo32 = (_as(wo, dtype), _as(bo, dtype)) if ctx.objective.uses_original else (None, None)
            wa32, ba32 = _as(wa, dtype), _as(ba, dtype)
            grads = _GradAccumulator(xs, ws32, bs32)
            with torch.no_grad():
                for start in range(0, xs.shape[0], ctx.chunk):
                    end = min(xs.shape[0], start + ctx.chunk)
                    _, g = _chunk(xs, xo, xa, start, end, ws32, bs32, wo32, bo32, wa32, ba32, ctx.alpha,
                                  ctx.direction, True, ctx.transforms, ctx.objective)
                    grads.add(g.mul_(grad_per_token[start:end, None].to(g.dtype)), start, end)
            dx, dw, db = grads.result()
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        return (dx.to(x_dtype), dw.to(w_dtype), None if db is None else db.to(b_dtype),
                None, None, None, None, None, None, None, None, None, None, None, None)


def _chunk(xs, xo, xa, start, end, ws32, bs32, wo32, bo32, wa32, ba32, alpha, direction, need_grad, transforms,
           objective):
    # Logits stay float32 even inside torch.autocast (which would otherwise run these GEMMs in bf16).
    with torch.autocast(xs.device.type, enabled=False):
        return _chunk_fp32(xs, xo, xa, start, end, ws32, bs32, wo32, bo32, wa32, ba32, alpha, direction,
                           need_grad, transforms, objective)


def _chunk_fp32(xs, xo, xa, start, end, ws32, bs32, wo32, bo32, wa32, ba32, alpha, direction, need_grad,
                transforms, objective):
    """Per-token loss and d loss / d (untransformed) student logits of one chunk."""
    t_s, t_o, t_a = transforms
    student, factor = lt.apply_(_logits(xs[start:end], ws32, bs32), t_s, need_grad)
    original = lt.apply_(_logits(xo[start:end], wo32, bo32), t_o)[0] if objective.uses_original else None
    augmented = None if xa is None else lt.apply_(_logits(xa[start:end], wa32, ba32), t_a)[0]
    loss, g = chunk_loss_and_grad(student, original, augmented, alpha, direction, need_grad,
                                  **objective.chunk_kwargs(start, end))
    return loss, None if g is None else lt.chain(g, factor)


class _GradAccumulator:
    """dx rows per chunk, dW and db summed over chunks, all in the compute dtype."""

    def __init__(self, xs, ws32, bs32):
        self.xs, self.ws32 = xs, ws32
        self.dx = torch.zeros(xs.shape, dtype=ws32.dtype, device=xs.device)
        self.dw = torch.zeros_like(ws32)
        self.db = None if bs32 is None else torch.zeros_like(bs32)

    def add(self, g, start, end):
        with torch.autocast(g.device.type, enabled=False):
            self._add(g, start, end)

    def _add(self, g, start, end):
        self.dx[start:end] = g @ self.ws32
        self.dw.addmm_(g.T, self.xs[start:end].to(g.dtype))
        if self.db is not None:
            self.db += g.sum(0)

    def result(self):
        return self.dx, self.dw, self.db
