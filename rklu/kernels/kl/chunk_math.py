"""The per-chunk math shared by the torch backends: teacher, both log-softmaxes, the divergence and
d(divergence)/d(student logits).

All inputs are float32 (or float64) logits of one chunk of tokens [n, V]; nothing here sees more than a chunk.
The objective's semantics are those of ``objective.py`` (teacher source, target edit, divergence):

    reverse:   KL(p_s || p_t)                d/dz = p_s (log p_s - log p_t - KL)                     (RKLU)
    forward:   KL(p_t || p_s)                d/dz = p_s - p_t                        (FKLU, UNDIAL, CE-U)
    jsd:       beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s
               d/dz = p_s (g - sum p_s g), g = (1 - beta) (log p_s - log m)
               (Liger-Kernel's generalized JSD and its ``jsd_beta`` convention; JensUn, Singh et al. 2025,
               arXiv 2509.02820)
    argmax_ce: -log p_s(a), a = argmax t (lowest index on ties)   d/dz = p_s - onehot(a)
               (WHP's generic labels, Eldan & Russinovich 2023, arXiv 2310.02238)

A teacher entry at -inf (one-hot "labels" teacher, the "exclude" edit) has p_t = 0 and contributes 0: the
``p_t log p_t`` terms are masked where p_t = 0, never evaluated as 0 * inf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkObjective:
    """What the teacher is beyond the models' logits, for the chunked torch paths (torch_chunked.py and
    from_logits.py): ``chunk_kwargs`` gives ``chunk_loss_and_grad``'s keyword arguments for one chunk of rows."""
    teacher_source: str = "models"
    jsd_beta: float = 0.5
    targets: torch.Tensor | None = None
    target_shift: torch.Tensor | None = None
    uniform_target: bool = False

    @property
    def uses_original(self) -> bool:
        return self.teacher_source == "models"

    def chunk_kwargs(self, start: int, end: int) -> dict:
        def rows(t):
            return None if t is None else t[start:end]
        return dict(teacher_source=self.teacher_source, jsd_beta=self.jsd_beta, targets=rows(self.targets),
                    target_shift=rows(self.target_shift), uniform_target=self.uniform_target)


def chunk_loss_and_grad(
    student: torch.Tensor,
    original: torch.Tensor | None,
    augmented: torch.Tensor | None,
    alpha: float,
    direction: str,
    need_grad: bool,
    *,
    teacher_source: str = "models",
    jsd_beta: float = 0.5,
    targets: torch.Tensor | None = None,
    target_shift: torch.Tensor | None = None,
    uniform_target: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token loss [n] and, when asked, its gradient w.r.t. the student logits [n, V].

    ``direction``: the divergence ("reverse", "forward", "jsd", "argmax_ce"). ``teacher_source``: "models"
    (``original``, edited by ``augmented``), "self" (the student's logits, ``original`` ignored) or "labels"
    (one-hot on ``targets``). ``target_shift`` [n]: subtracted from the teacher logit at ``targets`` after the
    source; ``uniform_target``: instead, the shift that makes p_t(target) = 1/V, computed from this chunk's
    teacher (Unilogit). May work in place on the ``original``/``augmented`` buffers, which the caller no longer
    needs; ``student`` is left untouched.
    """
    teacher = teacher_chunk(student, original, augmented, alpha, teacher_source, targets)
    if uniform_target:
        target_shift = uniform_shift(teacher, targets)
    if target_shift is not None:
        if teacher is student:
            teacher = student.clone()
        edit_target(teacher, targets, target_shift)
    has_zeros = teacher_source == "labels" or target_shift is not None
    return divergence_loss_and_grad(student, teacher, direction, need_grad, jsd_beta=jsd_beta, has_zeros=has_zeros)


def teacher_chunk(student, original, augmented, alpha, teacher_source="models", targets=None):
    """The teacher's logits before any target edit (may alias ``student`` for the self teacher, or be
    ``augmented``'s buffer, edited in place)."""
    if teacher_source == "self":
        return student
    if teacher_source == "labels":
        teacher = torch.full_like(student, -math.inf)
        return teacher.scatter_(1, targets[:, None], 0.0)
    if augmented is None:
        return original
    # l_t = l_o - alpha * relu(l_aug - l_o), in place on the caller's scratch buffers
    return augmented.sub_(original).clamp_(min=0).mul_(-alpha).add_(original)


def edit_target(teacher: torch.Tensor, targets: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """t[n, targets[n]] -= shift[n], in place (shift +inf: the entry becomes -inf)."""
    column = targets[:, None]
    edited = teacher.gather(1, column) - shift.to(teacher.dtype)[:, None]
    return teacher.scatter_(1, column, edited)


def uniform_shift(teacher: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The shift s with softmax(t - s onehot(y))[y] = 1/V (Unilogit, Vasilev et al. 2025, arXiv 2505.06027):
    t_y - s = logsumexp_{i != y} t_i - log(V - 1), from the teacher logits [..., V] (exact, finite)."""
    column = targets[..., None]
    target_logit = teacher.gather(-1, column).squeeze(-1)
    others = teacher.scatter(-1, column, -math.inf).logsumexp(-1)
    return target_logit - others + math.log(teacher.shape[-1] - 1)


def divergence_loss_and_grad(student, teacher, direction, need_grad, *, jsd_beta=0.5, has_zeros=False):
    """Per-token divergence [n] between softmax(student) and softmax(teacher) and its gradient w.r.t. the
    student logits. ``has_zeros``: the teacher may hold -inf logits (masked p_t log p_t terms). May overwrite
    ``teacher``."""
    # log_softmax subtracts the max before the log-sum: x - logsumexp(x) would round the lse at the logits'
    # magnitude (ulp ~1e-3 at 1e4) and carry that into every log-probability.
    log_p_student = torch.log_softmax(student, dim=-1)
    p_student = log_p_student.exp()
    if direction == "argmax_ce":
        # torch.argmax returns the first maximal index: ties go to the lowest token id.
        target = teacher.argmax(-1, keepdim=True)
        per_token = -log_p_student.gather(1, target).squeeze(1)
        if not need_grad:
            return per_token, None
        return per_token, p_student.scatter_add_(1, target, torch.full_like(per_token[:, None], -1.0))
    log_p_teacher = torch.log_softmax(teacher, dim=-1)
    if direction == "reverse":
        log_ratio = log_p_student - log_p_teacher
        per_token = (p_student * log_ratio).sum(-1)
        if not need_grad:
            return per_token, None
        return per_token, log_ratio.sub_(per_token[:, None]).mul_(p_student)
    p_teacher = log_p_teacher.exp()
    if direction == "forward":
        terms = (log_p_teacher - log_p_student).mul_(p_teacher)
        if has_zeros:
            terms.masked_fill_(p_teacher == 0, 0.0)
        per_token = terms.sum(-1)
        if not need_grad:
            return per_token, None
        return per_token, p_student.sub_(p_teacher)
    if direction == "jsd":
        return _jsd(log_p_student, p_student, log_p_teacher, p_teacher, jsd_beta, need_grad, has_zeros)
    raise ValueError(f"unknown divergence {direction!r}")


def _jsd(log_p_student, p_student, log_p_teacher, p_teacher, beta, need_grad, has_zeros):
    """beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s, 0 < beta < 1."""
    # log m = logaddexp(log beta + log p_t, log(1 - beta) + log p_s): finite wherever p_s > 0, even when the
    # teacher's entry is -inf or both probabilities underflow.
    log_m = torch.logaddexp(log_p_teacher + math.log(beta), log_p_student + math.log1p(-beta))
    teacher_terms = (log_p_teacher - log_m).mul_(p_teacher)
    if has_zeros:
        teacher_terms.masked_fill_(p_teacher == 0, 0.0)
    student_log_ratio = log_p_student.sub_(log_m)  # log p_s - log m; log_p_student is no longer needed
    student_kl = (p_student * student_log_ratio).sum(-1)
    per_token = beta * teacher_terms.sum(-1) + (1 - beta) * student_kl
    if not need_grad:
        return per_token, None
    # d/dz = (1 - beta) p_s (log(p_s / m) - KL(p_s || m))
    grad = student_log_ratio.sub_(student_kl[:, None]).mul_(p_student).mul_(1 - beta)
    return per_token, grad
