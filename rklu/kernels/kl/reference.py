"""Plain PyTorch reference of the unlearning KL: materializes every logit, used as ground truth.

Math (per token, over the vocabulary; the objective's choices are those of ``objective.py``):
    l = c * tanh(scale * l_raw / c)              each model's own logit transform (common/logit_transform.py),
                                                 applied to the given logits first (scale 1, no cap: none),
                                                 then divided by the temperature T
    teacher t:  "models": l_o - alpha * relu(l_aug - l_o)  (l_o without an augmented model; RKLU, WHP)
                "self":   l_s, detached                    (CE-U, Yang et al. 2025, arXiv 2503.01224; Unilogit)
                "labels": 0 at the label y, -inf elsewhere (JensUn, Singh et al. 2025, arXiv 2509.02820)
    target edit of t_y: "subtract" t_y -= target_shift (UNDIAL, Dong et al. 2024, arXiv 2402.10052);
                "uniform" t_y such that p_t(y) = 1/V (Unilogit, Vasilev et al. 2025, arXiv 2505.06027);
                "exclude" t_y = -inf (CE-U)
    reverse: KL(p_s || p_t) = sum p_s (log p_s - log p_t)   -- RKLU forget loss
    forward: KL(p_t || p_s) = sum p_t (log p_t - log p_s)   -- FKLU, UNDIAL, CE-U and the "+KL" retain term
    jsd:     beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s  (Liger-Kernel's
             generalized JSD; beta 0 / 1 are the forward / reverse KL)
    argmax_ce: -log p_s(argmax t), ties to the lowest index (WHP, Eldan & Russinovich 2023, arXiv 2310.02238)
Entries with p_t = 0 contribute 0. Everything is computed in float32 (float64 stays float64) so the reference is
the accuracy yardstick.
"""
from __future__ import annotations

import math

import torch

from ..common import logit_transform as lt
from ..common.torch_chunks import compute_dtype
from ..common.validation import DIRECTIONS, REDUCTIONS  # noqa: F401  (re-exported: the accepted names)
from . import objective_inputs as oi
from .chunk_math import uniform_shift
from .loss_options import LossOptions


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
    original_logits: torch.Tensor | None = None,
    augmented_logits: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    **options,
) -> torch.Tensor:
    """Reference loss on materialized logits [..., V]. Differentiable w.r.t. ``student_logits`` only.

    Tokens whose label equals ``ignore_index`` don't count; ``reduction="none"`` returns the per-token loss
    with zeros at ignored tokens (shape = leading shape of the logits). ``<model>_scale`` / ``<model>_softcap``
    transform that model's logits first (``common/logit_transform.py``; autograd carries the chain rule).
    The objective arguments are those of ``fused_linear_unlearning_kl``: ``original_logits`` is None for the
    "self" and "labels" teachers; target edits and the labels teacher need ``labels``.
    """
    loss = LossOptions.of("unlearning_kl_reference", options)
    objective, transforms = loss.resolve(reduction, augmented=augmented_logits is not None, labels=labels is not None)
    oi.check_teacher_inputs(objective, dict(original_logits=original_logits))
    for name, other in (("original", original_logits), ("augmented", augmented_logits)):
        if other is not None and other.shape != student_logits.shape:
            raise ValueError(f"logit shapes differ: student {tuple(student_logits.shape)}, {name} "
                             f"{tuple(other.shape)}")
    lead = student_logits.shape[:-1]
    if labels is None:
        counted = torch.ones(lead, dtype=torch.bool, device=student_logits.device)
    else:
        if labels.shape != lead:
            raise ValueError(f"labels shape {tuple(labels.shape)} must equal the logits' leading shape {tuple(lead)}")
        counted = labels != ignore_index
    vocab = student_logits.shape[-1]
    targets = None
    if objective.has_target_edit:
        oi.checked_targets(labels[counted], vocab)
        # Ignored tokens get target 0: never -100 as an index; their loss is zeroed below.
        targets = torch.where(counted, labels, torch.zeros_like(labels)).long()

    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    student = lt.apply(student_logits.to(dtype), transforms[0])
    if objective.teacher == "models":
        t_o, t_a = transforms[1], transforms[2]
        teacher = teacher_logits(
            original_logits.detach().to(dtype),
            None if augmented_logits is None else augmented_logits.detach().to(dtype),
            loss.alpha, original_scale=t_o.scale, original_softcap=t_o.softcap, augmented_scale=t_a.scale,
            augmented_softcap=t_a.softcap)
    else:
        teacher = student.detach()
    shift = None
    if objective.target_edit == "uniform":
        shift = uniform_shift(teacher, targets)
    elif objective.target_edit in ("subtract", "exclude"):
        shift = oi.fixed_target_shift(objective, 1, dtype, student.device).expand(lead)
    teacher = edited_teacher_logits(teacher, objective.teacher, targets, shift)
    per_token = divergence_per_token(student, teacher, objective.kernel_divergence, objective.jsd_beta)
    return reduce_per_token(per_token, counted, reduction)


def edited_teacher_logits(teacher, teacher_source, targets, shift):
    """The source's teacher logits (``teacher``; ignored for "labels", which is one-hot on ``targets``) with
    ``shift`` [...] subtracted at ``targets`` (None: no edit)."""
    if teacher_source == "labels":
        teacher = torch.full_like(teacher, -math.inf).scatter(-1, targets[..., None], 0.0)
    if shift is None:
        return teacher
    onehot = torch.zeros_like(teacher).scatter(-1, targets[..., None], 1.0).bool()
    return torch.where(onehot, teacher - shift.to(teacher.dtype)[..., None], teacher)


def divergence_per_token(student, teacher, divergence, jsd_beta=0.5):
    """The divergence between softmax(student) and softmax(teacher) per token, by autograd-friendly formulas;
    entries with p_t = 0 (teacher logit -inf) contribute 0."""
    log_p_student = torch.log_softmax(student, dim=-1)
    if divergence == "argmax_ce":
        # torch.argmax returns the first maximal index: ties go to the lowest token id.
        target = teacher.argmax(-1, keepdim=True)
        return -log_p_student.gather(-1, target).squeeze(-1)
    log_p_teacher = torch.log_softmax(teacher, dim=-1)
    p_student, p_teacher = log_p_student.exp(), log_p_teacher.exp()
    if divergence == "reverse":
        return (p_student * (log_p_student - log_p_teacher)).sum(-1)
    if divergence == "forward":
        return _masked(p_teacher, log_p_teacher - log_p_student).sum(-1)
    beta = jsd_beta
    log_m = torch.logaddexp(log_p_teacher + math.log(beta), log_p_student + math.log1p(-beta))
    return beta * _masked(p_teacher, log_p_teacher - log_m).sum(-1) + (1 - beta) * (
        p_student * (log_p_student - log_m)).sum(-1)


def _masked(p, log_ratio):
    """p * log_ratio with 0 where p = 0 (where log_ratio may be -inf or NaN): no 0 * inf, no NaN gradient."""
    zero = p == 0
    return torch.where(zero, torch.zeros_like(p), p * torch.where(zero, torch.zeros_like(log_ratio), log_ratio))


def unlearning_kl_linear(xs, ws, bs, xo, wo, bo, xa, wa, ba, *, alpha, direction, grad_in_forward, chunk_tokens,
                         grad_filter, transforms=(lt.IDENTITY,) * 3, teacher_source="models", jsd_beta=0.5,
                         targets=None, target_shift=None):
    """The KL op of backend "reference" (common/backends.py): the whole [N, V] logits of each model, then the
    reference math per token, with autograd's dense gradients. ``transforms`` already hold the temperature."""
    dtype = compute_dtype(xs)

    def logits(x, w, b):
        return torch.nn.functional.linear(x.to(dtype), w.to(dtype), None if b is None else b.to(dtype))

    t_s, t_o, t_a = transforms
    student = lt.apply(logits(xs, ws, bs), t_s)
    if teacher_source == "models":
        augmented = None if xa is None else logits(xa, wa, ba)
        teacher = teacher_logits(logits(xo, wo, bo), augmented, alpha, original_scale=t_o.scale,
                                 original_softcap=t_o.softcap, augmented_scale=t_a.scale,
                                 augmented_softcap=t_a.softcap)
    else:
        teacher = student.detach()
    teacher = edited_teacher_logits(teacher, teacher_source, targets, target_shift)
    return divergence_per_token(student, teacher, direction, jsd_beta)
