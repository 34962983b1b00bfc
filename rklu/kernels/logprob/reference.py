"""Plain PyTorch reference of the per-token label log-probability: materializes every logit (the yardstick).

    log p(y | x) = z_y - logsumexp(z),   z = x @ W.T (+ b)
Computed in float32 (float64 stays float64); ignored tokens give 0.
"""
from __future__ import annotations

import torch

from ..common.torch_chunks import compute_dtype


def token_logprob_reference(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
    """log-softmax of ``logits [..., V]`` at ``labels [...]``; 0 where ``labels == ignore_index``.
    Differentiable w.r.t. ``logits``."""
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal the logits' leading shape "
                         f"{tuple(logits.shape[:-1])}")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    counted = labels != ignore_index
    safe = labels.masked_fill(~counted, 0).long()
    # log_softmax subtracts the max first: z - logsumexp(z) would round the lse at the logits' magnitude.
    logp = torch.log_softmax(logits.to(dtype), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(counted, logp, torch.zeros_like(logp))


def token_logprob_linear(x, w, b, labels, *, chunk_tokens):
    """The log-prob op of backend "reference" (common/backends.py): the whole [N, V] logits, then the reference."""
    dtype = compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        logits = torch.nn.functional.linear(x.to(dtype), w.to(dtype), None if b is None else b.to(dtype))
    return token_logprob_reference(logits, labels)
