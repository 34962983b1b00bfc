"""Plain PyTorch reference of the per-token label log-probability: materializes every logit (the yardstick).

    log p(y | x) = z_y - logsumexp(z),   z = x @ W.T (+ b), then the head's logit transform
                                         (scale, softcap: common/logit_transform.py)
Computed in float32 (float64 stays float64); ignored tokens give 0.
"""
from __future__ import annotations

import torch

from ..common import logit_transform as lt
from ..common.torch_chunks import compute_dtype



def token_logprob_reference(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100,
                            scale: float = 1.0, softcap: float | None = None) -> torch.Tensor:
    """log-softmax of the transformed ``logits [..., V]`` at ``labels [...]``; 0 where ``labels == ignore_index``.
    Differentiable w.r.t. ``logits``."""
    transform = lt.logit_transform("", scale, softcap)
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal the logits' leading shape "
                         f"{tuple(logits.shape[:-1])}")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    counted = labels != ignore_index
    safe = labels.masked_fill(~counted, 0).long()
    # log_softmax subtracts the max first: z - logsumexp(z) would round the lse at the logits' magnitude.
    logp = torch.log_softmax(lt.apply(logits.to(dtype), transform), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(counted, logp, torch.zeros_like(logp))


def token_logprob_linear(x, w, b, labels, *, chunk_tokens, transform=lt.IDENTITY):
    """The log-prob op of backend "reference" (common/backends.py): the whole [N, V] logits, then the reference."""
    dtype = compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        logits = torch.nn.functional.linear(x.to(dtype), w.to(dtype), None if b is None else b.to(dtype))
    return token_logprob_reference(logits, labels, scale=transform.scale, softcap=transform.softcap)
