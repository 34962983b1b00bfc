"""Public entry point of the fused linear log-prob: per-token log p(label) from hidden states and the lm_head,
for the NLL-type losses (GA, NPO, DPO, IDK, the "+RT" retain term), without a [tokens x vocab] tensor."""
from __future__ import annotations

import torch

from ..common import logit_transform as lt
from ..common import backends
from ..common.masking import reduce_counted, select_counted, zero_loss
from ..common.validation import check_finite


def fused_linear_token_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
    chunk_tokens: int | None = None,
    check_inputs_finite: bool = True,
    scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """``log softmax(z)[label]`` per token, ``z = hidden @ weight.T + bias`` times ``scale`` and, with a
    ``softcap`` c, capped to ``c * tanh(z / c)`` (the head's logit transform, ``common/logit_transform.py``): shape
    ``labels.shape``, 0 where ``labels == ignore_index``; float32 (float64 for float64 inputs on the torch/reference backends).

    Differentiable w.r.t. ``hidden``, ``weight`` and ``bias``. Logits are float32 whatever the input dtype
    (the GEMMs use the autocast dtype under autocast, like lm_head would). ``backend``: ``"triton"`` (CUDA,
    or CPU under TRITON_INTERPRET=1), ``"torch"`` (chunks of ``chunk_tokens`` tokens), ``"reference"``
    (materializes the logits), ``"auto"`` (triton on CUDA, else torch). Labels are the targets themselves:
    shift them for next-token prediction first (hidden[:, :-1] with labels[:, 1:]).
    """
    backends.check_name(backend, "logprob")
    transform = lt.logit_transform("", scale, softcap)
    _check_inputs(hidden, weight, bias, labels, ignore_index)
    if hidden.dtype == torch.float64 and backend in ("auto", "triton"):
        if backend == "triton":
            raise ValueError("backend='triton' computes in float32; use backend='torch' or 'reference' for float64 inputs")
        backend = "torch"
    backend = backends.resolve("logprob", backend, hidden.device)
    if check_inputs_finite:
        check_finite("hidden", hidden)

    lead_shape = labels.shape
    h = hidden.shape[-1]
    counted, (x, y) = select_counted(labels, ignore_index, hidden.reshape(-1, h), labels.reshape(-1, 1))
    if x.shape[0] == 0:
        return zero_loss(lead_shape, "none", hidden, weight, bias)
    y = y.reshape(-1).long()
    logp = backends.function("logprob", backend)(x, weight, bias, y, chunk_tokens=chunk_tokens,
                                                   transform=transform)
    return reduce_counted(logp, counted, lead_shape, "none")


def _check_inputs(hidden, weight, bias, labels, ignore_index) -> None:
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias), ("labels", labels)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of token ids, got dtype {labels.dtype}")
    for name, t in (("weight", weight), ("bias", bias), ("labels", labels)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}: put all tensors on one device")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [V, H], got shape {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden size mismatch: hidden has H={hidden.shape[-1] if hidden.dim() else None} but "
                         f"weight is {tuple(weight.shape)} (expected [V, H])")
    v = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (v,):
        raise ValueError(f"bias must have shape ({v},), got {tuple(bias.shape)}")
    if tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal the hidden states' leading shape "
                         f"{tuple(hidden.shape[:-1])}")
    counted = labels[labels != ignore_index]
    if counted.numel() and bool(((counted < 0) | (counted >= v)).any()):
        bad = counted[(counted < 0) | (counted >= v)][0].item()
        raise ValueError(f"labels out of range: found {bad}, expected token ids in [0, {v}) or "
                         f"ignore_index={ignore_index}")
