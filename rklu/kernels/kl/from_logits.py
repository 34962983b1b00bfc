"""The unlearning KL for callers who already hold [..., V] logits: chunked over tokens, so the only
float32 working set is one chunk (no float32 copies of the full tensors); the gradient is written
straight into a tensor of the student logits' dtype."""
from __future__ import annotations

import torch

from ..common import logit_transform as lt
from ..common.masking import reduce_counted, select_counted, zero_loss
from ..common.torch_chunks import torch_chunk_tokens
from ..common.validation import check_logit_inputs
from . import objective_inputs as oi
from .chunk_math import ChunkObjective, chunk_loss_and_grad
from .loss_options import LossOptions


class _FromLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, original, augmented, alpha, direction, chunk, transforms, objective):
        n, _ = student.shape
        dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
        per_token = torch.empty(n, dtype=dtype, device=student.device)
        grad = torch.empty_like(student) if ctx.needs_input_grad[0] else None
        with torch.no_grad():
            for start in range(0, n, chunk):
                end = min(n, start + chunk)
                zs, factor = lt.apply_(student[start:end].to(dtype, copy=True), transforms[0], grad is not None)
                zo = None if original is None else lt.apply_(original[start:end].to(dtype, copy=True), transforms[1])[0]
                za = None if augmented is None else lt.apply_(augmented[start:end].to(dtype, copy=True), transforms[2])[0]
                loss, g = chunk_loss_and_grad(zs, zo, za, alpha, direction, grad is not None,
                                              **objective.chunk_kwargs(start, end))
                per_token[start:end] = loss
                if grad is not None:
                    grad[start:end] = lt.chain(g, factor)
        ctx.save_for_backward(grad)
        return per_token

    @staticmethod
    def backward(ctx, grad_per_token):
        (grad,) = ctx.saved_tensors
        return grad * grad_per_token[:, None].to(grad.dtype), None, None, None, None, None, None, None


def unlearning_kl_from_logits(
    student_logits: torch.Tensor,
    original_logits: torch.Tensor | None = None,
    augmented_logits: torch.Tensor | None = None,
    *,
    chunk_tokens: int | None = None,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    **options,
) -> torch.Tensor:
    """Same loss as :func:`unlearning_kl_reference`, memory-lean: teachers are treated as constants. The
    ``<model>_scale`` / ``<model>_softcap`` transforms apply to the given logits (``common/logit_transform.py``).
    The objective arguments are those of ``fused_linear_unlearning_kl`` (``original_logits`` None for the "self"
    and "labels" teachers); the "uniform" edit is computed exactly from each chunk's teacher logits."""
    loss = LossOptions.of("unlearning_kl_from_logits", options)
    objective, transforms = loss.resolve(reduction, augmented=augmented_logits is not None, labels=labels is not None)
    oi.check_teacher_inputs(objective, dict(original_logits=original_logits))
    check_logit_inputs(student_logits, original_logits, augmented_logits, labels)
    vocab = student_logits.shape[-1]
    lead = student_logits.shape[:-1]
    counted, (student, original, augmented, y) = select_counted(
        labels, ignore_index, student_logits.reshape(-1, vocab),
        None if original_logits is None else original_logits.detach().reshape(-1, vocab),
        None if augmented_logits is None else augmented_logits.detach().reshape(-1, vocab),
        None if labels is None else labels.reshape(-1, 1))
    targets = oi.checked_targets(y.reshape(-1), vocab) if objective.has_target_edit else None
    if student.shape[0] == 0:
        return zero_loss(lead, reduction, student_logits)
    dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    shift = oi.fixed_target_shift(objective, student.shape[0], dtype, student.device)
    per_token = _FromLogits.apply(student, original, augmented, float(loss.alpha), objective.kernel_divergence,
                                  chunk_tokens or torch_chunk_tokens(vocab), transforms,
                                  ChunkObjective(objective.teacher, float(objective.jsd_beta), targets, shift,
                                                 uniform_target=objective.target_edit == "uniform"))
    return reduce_counted(per_token, counted, lead, reduction)
