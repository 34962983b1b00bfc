"""The per-chunk math shared by the torch backends: teacher, both log-softmaxes, KL and d(KL)/d(student logits).

All inputs are float32 (or float64) logits of one chunk of tokens [n, V]; nothing here sees more than a chunk.
"""
from __future__ import annotations

import torch


def chunk_loss_and_grad(
    student: torch.Tensor,
    original: torch.Tensor,
    augmented: torch.Tensor | None,
    alpha: float,
    direction: str,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token KL [n] and, when asked, its gradient w.r.t. the student logits [n, V].

    reverse: d KL(p_s||p_t) / dz = p_s * (log p_s - log p_t - KL)
    forward: d KL(p_t||p_s) / dz = p_s - p_t
    May work in place on the ``original``/``augmented`` buffers, which the caller no longer needs.
    """
    teacher = original
    if augmented is not None:
        # l_t = l_o - alpha * relu(l_aug - l_o), in place on the caller's scratch buffers
        teacher = augmented.sub_(original).clamp_(min=0).mul_(-alpha).add_(original)
    # log_softmax subtracts the max before the log-sum: x - logsumexp(x) would round the lse at the logits'
    # magnitude (ulp ~1e-3 at 1e4) and carry that into every log-probability.
    log_p_teacher = torch.log_softmax(teacher, dim=-1)
    log_p_student = torch.log_softmax(student, dim=-1)
    p_student = log_p_student.exp()
    if direction == "reverse":
        log_ratio = log_p_student - log_p_teacher
        per_token = (p_student * log_ratio).sum(-1)
        if not need_grad:
            return per_token, None
        return per_token, log_ratio.sub_(per_token[:, None]).mul_(p_student)
    p_teacher = log_p_teacher.exp()
    per_token = (p_teacher * (log_p_teacher - log_p_student)).sum(-1)
    if not need_grad:
        return per_token, None
    return per_token, p_student.sub_(p_teacher)
