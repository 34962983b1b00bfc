"""Plain PyTorch reference of the unlearning KL: materializes every logit, used as ground truth.

Math (per token, over the vocabulary):
    l_t = l_o - alpha * relu(l_aug - l_o)        teacher logits (l_t = l_o without an augmented model)
    l = c * tanh(scale * l_raw / c)              each model's own logit transform (common/logit_transform.py),
                                                 applied to the given logits first (scale 1, no cap: none)
    reverse: KL(p_s || p_t) = sum p_s (log p_s - log p_t)   -- RKLU forget loss
    forward: KL(p_t || p_s) = sum p_t (log p_t - log p_s)   -- FKLU, and the "+KL" retain term
Everything is computed in float32 (float64 stays float64) so the reference is the accuracy yardstick.
"""
from __future__ import annotations

import torch

from ..common import logit_transform as lt
from ..common.torch_chunks import compute_dtype
from ..common.validation import DIRECTIONS, REDUCTIONS  # noqa: F401  (re-exported: the accepted names)


def teacher_logits(original_logits: torch.Tensor, augmented_logits: torch.Tensor | None, alpha: float, *,
                   original_scale: float = 1.0, original_softcap: float | None = None,
                   augmented_scale: float = 1.0, augmented_softcap: float | None = None) -> torch.Tensor:
    """l_o - alpha * relu(l_aug - l_o) on each model's transformed logits (l_o without an augmented model)."""
    original = lt.apply(original_logits, lt.logit_transform("original", original_scale, original_softcap))
    if augmented_logits is None:
        return original
    augmented = lt.apply(augmented_logits, lt.logit_transform("augmented", augmented_scale, augmented_softcap))
    return original - alpha * torch.relu(augmented - original)


def reduce_per_token(per_token: torch.Tensor, counted: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce a per-token loss over the counted tokens; an empty selection gives 0, never NaN."""
    per_token = torch.where(counted, per_token, torch.zeros_like(per_token))
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    return total / counted.sum().clamp(min=1)


def unlearning_kl_reference(
    student_logits: torch.Tensor,
    original_logits: torch.Tensor,
    augmented_logits: torch.Tensor | None = None,
    *,
    alpha: float = 8.0,
    direction: str = "reverse",
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    student_scale: float = 1.0,
    student_softcap: float | None = None,
    original_scale: float = 1.0,
    original_softcap: float | None = None,
    augmented_scale: float = 1.0,
    augmented_softcap: float | None = None,
) -> torch.Tensor:
    """Reference loss on materialized logits [..., V]. Differentiable w.r.t. ``student_logits`` only.

    Tokens whose label equals ``ignore_index`` don't count; ``reduction="none"`` returns the per-token loss
    with zeros at ignored tokens (shape = leading shape of the logits). ``<model>_scale`` / ``<model>_softcap``
    transform that model's logits first (``common/logit_transform.py``; autograd carries the chain rule).
    """
    from ..common.validation import check_direction_reduction, check_alpha

    check_direction_reduction(direction, reduction)
    check_alpha(alpha)
    student_transform, _, _ = lt.model_transforms(student_scale, student_softcap, original_scale, original_softcap,
                                                  augmented_scale, augmented_softcap)  # checks all three
    teacher_transforms = dict(original_scale=original_scale, original_softcap=original_softcap,
                              augmented_scale=augmented_scale, augmented_softcap=augmented_softcap)
    if student_logits.shape != original_logits.shape or (
        augmented_logits is not None and augmented_logits.shape != student_logits.shape
    ):
        raise ValueError(
            "logit shapes differ: student "
            f"{tuple(student_logits.shape)}, original {tuple(original_logits.shape)}"
            + ("" if augmented_logits is None else f", augmented {tuple(augmented_logits.shape)}")
        )
    compute_dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    student = lt.apply(student_logits.to(compute_dtype), student_transform)
    teacher = teacher_logits(
        original_logits.detach().to(compute_dtype),
        None if augmented_logits is None else augmented_logits.detach().to(compute_dtype),
        alpha, **teacher_transforms,
    )
    log_p_student = torch.log_softmax(student, dim=-1)
    log_p_teacher = torch.log_softmax(teacher, dim=-1)
    if direction == "reverse":
        per_token = (log_p_student.exp() * (log_p_student - log_p_teacher)).sum(-1)
    else:
        per_token = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    if labels is None:
        counted = torch.ones(per_token.shape, dtype=torch.bool, device=per_token.device)
    else:
        if labels.shape != per_token.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} must equal the logits' leading shape {tuple(per_token.shape)}")
        counted = labels != ignore_index
    return reduce_per_token(per_token, counted, reduction)


def unlearning_kl_linear(xs, ws, bs, xo, wo, bo, xa, wa, ba, *, alpha, direction, grad_in_forward, chunk_tokens,
                         grad_filter, transforms=(lt.IDENTITY,) * 3):
    """The KL op of backend "reference" (common/backends.py): the whole [N, V] logits of each model, then
    ``unlearning_kl_reference`` per token, with autograd's dense gradients."""
    dtype = compute_dtype(xs)

    def logits(x, w, b):
        return torch.nn.functional.linear(x.to(dtype), w.to(dtype), None if b is None else b.to(dtype))

    augmented = None if xa is None else logits(xa, wa, ba)
    t_s, t_o, t_a = transforms
    return unlearning_kl_reference(logits(xs, ws, bs), logits(xo, wo, bo), augmented, alpha=alpha,
                                   direction=direction, reduction="none", student_scale=t_s.scale,
                                   student_softcap=t_s.softcap, original_scale=t_o.scale,
                                   original_softcap=t_o.softcap, augmented_scale=t_a.scale,
                                   augmented_softcap=t_a.softcap)
