"""Torch chunked backend of the fused linear log-prob: chunks of tokens, peak extra memory one [chunk, V]
working set instead of [N, V]. The CPU path and the fallback on GPUs without Triton.

Forward stores per-token max and log-normalizer only (O(N)); backward recomputes each chunk's logits.
Unlike the KL's torch backend the gradient is never computed in the forward: NPO/DPO weight each sequence
differently (upstream gradient per token), and a forward-only call (teachers, evaluation) stays one GEMM.
"""
from __future__ import annotations

import torch

from ..common import logit_transform as lt
from ..common.torch_chunks import compute_dtype, torch_chunk_tokens


def _chunk_logits(x, w32, b32):
    # Logits stay float32 even inside torch.autocast (which would run this GEMM in bf16).
    with torch.autocast(x.device.type, enabled=False):
        z = x.to(w32.dtype) @ w32.T
        return z if b32 is None else z.add_(b32)


def token_logprob(x, w, b, labels, *, chunk_tokens, transform=lt.IDENTITY):
    """The log-prob op of backend "torch" (common/backends.py)."""
    return TorchChunkedTokenLogprob.apply(x, w, b, labels, chunk_tokens, transform)


class TorchChunkedTokenLogprob(torch.autograd.Function):
    """Counted tokens only: x [N, H], labels [N] in [0, V) -> log p(label) [N] (float32, float64 for float64)."""

    @staticmethod
    def forward(ctx, x, w, b, labels, chunk_tokens, transform=lt.IDENTITY):
        dtype = compute_dtype(x, w)
        w32 = w.detach().to(dtype)
        b32 = None if b is None else b.detach().to(dtype)
        n = x.shape[0]
        chunk = chunk_tokens or torch_chunk_tokens(w.shape[0])
        logp = torch.empty(n, dtype=dtype, device=x.device)
        stats = torch.empty((n, 2), dtype=dtype, device=x.device)  # max, log-normalizer
        with torch.no_grad():
            for start in range(0, n, chunk):
                end = min(n, start + chunk)
                z, _ = lt.apply_(_chunk_logits(x[start:end], w32, b32), transform)
                z_label = z.gather(1, labels[start:end, None]).squeeze(1)
                m = z.max(dim=1).values
                log_d = z.sub_(m[:, None]).exp_().sum(dim=1).log_()  # z now holds exp(z - m)
                # (z_y - m) - log d: exact near the max, where z_y - (m + log d) would round at |z|.
                logp[start:end] = (z_label - m) - log_d
                stats[start:end, 0], stats[start:end, 1] = m, log_d
        ctx.chunk, ctx.transform = chunk, transform
        ctx.dtypes = (x.dtype, w.dtype, None if b is None else b.dtype)
        ctx.save_for_backward(x, w, b, labels, stats)
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        x, w, b, labels, stats = ctx.saved_tensors
        dtype = stats.dtype
        w32 = w.detach().to(dtype)
        b32 = None if b is None else b.detach().to(dtype)
        dx = torch.zeros(x.shape, dtype=dtype, device=x.device)
        dw = torch.zeros_like(w32)
        db = None if b is None else torch.zeros_like(b32)
        grad_logp = grad_logp.to(dtype)
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            for start in range(0, x.shape[0], ctx.chunk):
                end = min(x.shape[0], start + ctx.chunk)
                z, factor = lt.apply_(_chunk_logits(x[start:end], w32, b32), ctx.transform, True)
                m, log_d = stats[start:end, 0], stats[start:end, 1]
                up = grad_logp[start:end]
                # d log p(y) / dz = onehot(y) - softmax(z), times the upstream weight of the token
                g = z.sub_(m[:, None]).sub_(log_d[:, None]).exp_().mul_(-up[:, None])
                rows = torch.arange(end - start, device=x.device)
                g[rows, labels[start:end]] += up
                g = lt.chain(g, factor)
                dx[start:end] = g @ w32
                dw.addmm_(g.T, x[start:end].to(dtype))
                if db is not None:
                    db += g.sum(0)
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        return dx.to(x_dtype), dw.to(w_dtype), None if db is None else db.to(b_dtype), None, None, None

