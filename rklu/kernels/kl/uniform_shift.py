"""Unilogit's "uniform" target edit (Vasilev et al. 2025, arXiv 2505.06027) as the per-token shift the KL
backends subtract from the teacher's logit at the label: with q the teacher's p(y) before the edit,

    shift = log(V - 1) + log q - log(1 - q)        gives p_teacher(y) = 1/V after the edit.

log q comes from the fused log-prob op (no [N, V] tensor, Triton on CUDA). That is exact enough while q is not
near 1; as q -> 1, log(1 - q) is computed from the rounding error of log q itself (fp32 logits of magnitude ~10
carry ~1e-6 of it: a teacher with 1 - q ~ 1e-6, a memorized forget token, would get a shift off by O(1) and
p(y) far above 1/V). Those tokens (q > e^-1/2) are recomputed exactly in chunks of tokens:
``t_y - shift = logsumexp_{i != y} t_i - log(V - 1)`` from their teacher logits (chunk_math.uniform_shift).
"""
from __future__ import annotations

import math

import torch

from ..common import backends
from ..common import logit_transform as lt
from ..common.torch_chunks import torch_chunk_tokens
from .chunk_math import uniform_shift

# log q above this: q > 0.61, 1 - q is recomputed exactly (below it, log(1 - q) has at most ~1.6x the relative
# error of log q).
NEAR_ONE_LOG_Q = -0.5


def uniform_target_shift(x, w, b, targets, transform, *, kl_backend, chunk_tokens=None) -> torch.Tensor:
    """[N] shifts (float32, float64 for float64 inputs) for the teacher with hidden states ``x`` [N, H] (the
    counted tokens), lm_head ``w``, ``b`` and logit transform ``transform`` (temperature folded in), at
    ``targets`` [N]. No gradient. The log-prob op runs on ``kl_backend`` when that implements it, else on the
    log-prob's own "auto" choice."""
    from ..logprob.api import fused_linear_token_logprob

    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    logprob_backend = kl_backend if kl_backend in backends.names("logprob") else "auto"
    with torch.no_grad():
        log_q = fused_linear_token_logprob(x, w, targets, bias=b, backend=logprob_backend, chunk_tokens=chunk_tokens,
                                           check_inputs_finite=False, scale=transform.scale,
                                           softcap=transform.softcap).to(dtype)
        shift = shift_from_log_q(log_q, w.shape[0])
        near_one = (log_q > NEAR_ONE_LOG_Q).nonzero().squeeze(1)
        if near_one.numel():
            shift[near_one] = exact_uniform_shift(x.index_select(0, near_one), w, b, targets[near_one], transform,
                                                  dtype, chunk_tokens)
    return shift


def shift_from_log_q(log_q: torch.Tensor, vocab: int) -> torch.Tensor:
    """log(V - 1) + log q - log(1 - q). log q is capped at -eps of its dtype, so the shift stays finite even
    for a q that rounded to 1 (``uniform_target_shift`` recomputes those exactly)."""
    log_q = log_q.clamp(max=-torch.finfo(log_q.dtype).eps)
    return math.log(vocab - 1) + log_q - torch.log(-torch.expm1(log_q))


def exact_uniform_shift(x, w, b, targets, transform, dtype, chunk_tokens=None) -> torch.Tensor:
    """The shift from the teacher logits themselves, ``chunk_tokens`` tokens at a time in ``dtype``."""
    out = torch.empty(x.shape[0], dtype=dtype, device=x.device)
    chunk = chunk_tokens or torch_chunk_tokens(w.shape[0])
    with torch.autocast(x.device.type, enabled=False):
        w_c = w.to(dtype)
        b_c = None if b is None else b.to(dtype)
        for start in range(0, x.shape[0], chunk):
            end = min(x.shape[0], start + chunk)
            logits = torch.nn.functional.linear(x[start:end].to(dtype), w_c, b_c)
            teacher, _ = lt.apply_(logits, transform)
            out[start:end] = uniform_shift(teacher, targets[start:end])
    return out
