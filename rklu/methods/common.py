"""Shared pieces of the unlearning losses: the loss context (student, teachers, hyperparameters),
next-token shifting, NLL terms and the fused KL term."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..kernels import fused_linear_token_logprob, fused_linear_unlearning_kl
from ..models.heads import HeadOutput, Teacher, student_forward

IGNORE_INDEX = -100


@dataclass
class LossContext:
    """What a method's loss may use. Teachers are None when the method does not need them."""
    model: torch.nn.Module | None = None
    original: Teacher | None = None
    augmented: Teacher | None = None
    alpha: float = 8.0           # unlearning strength in l_t = l_o - alpha * relu(l_aug - l_o)
    retain_weight: float = 1.0   # lambda in L = L_forget + lambda * L_retain
    npo_beta: float = 0.1
    dpo_beta: float = 0.1
    kl_backend: str = "auto"       # backend of the fused KL
    logprob_backend: str = "auto"  # backend of the fused label log-prob (training resolves both once per run)
    cache: dict = field(default_factory=dict)  # per-step memo so a role's student pass runs once

    def student(self, role: str, batch) -> HeadOutput:
        key = ("student", role)
        if key not in self.cache:
            self.cache[key] = student_forward(self.model, batch[role])
        return self.cache[key]


def shift(out: HeadOutput, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position t predicts token t+1: hidden[:, :-1] pairs with labels[:, 1:]."""
    return out.hidden[:, :-1], labels[:, 1:]


def token_logprobs(out: HeadOutput, labels: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of each target token [B, T-1] (0 where masked), mask [B, T-1]), through the fused linear
    log-prob: hidden states + lm_head in, float32 logits computed tile by tile, no [tokens x vocab] tensor."""
    hidden, targets = shift(out, labels)
    logp = fused_linear_token_logprob(hidden, out.weight, targets, bias=out.bias, ignore_index=IGNORE_INDEX,
                                      backend=backend)
    return logp, targets != IGNORE_INDEX


def mean_nll(out: HeadOutput, labels: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Mean negative log-likelihood over the batch's target tokens (HF's causal-LM loss)."""
    logp, mask = token_logprobs(out, labels, backend)
    return -logp.sum() / mask.sum().clamp(min=1)


def sequence_logprob(out: HeadOutput, labels: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Summed log-probability of each row's target tokens [B] (NPO and DPO compare these)."""
    logp, _ = token_logprobs(out, labels, backend)
    return logp.sum(dim=1)


def unlearning_kl(ctx: LossContext, role: str, batch, direction: str, with_augmented: bool,
                  alpha: float | None = None) -> torch.Tensor:
    """KL between the student and the (modified) teacher on ``batch[role]``, through the fused kernel:
    hidden states + lm_head weights in, no [tokens x vocab] logits built."""
    sub = batch[role]
    student = ctx.student(role, batch)
    original = ctx.original(role, sub)
    augmented = ctx.augmented(role, sub) if with_augmented else None
    hidden, labels = shift(student, sub["labels"])
    return fused_linear_unlearning_kl(
        hidden, student.weight, original.hidden[:, :-1], original.weight,
        None if augmented is None else augmented.hidden[:, :-1], None if augmented is None else augmented.weight,
        alpha=ctx.alpha if alpha is None else alpha, direction=direction, labels=labels, reduction="mean",
        backend=ctx.kl_backend, student_bias=student.bias, original_bias=original.bias,
        augmented_bias=None if augmented is None else augmented.bias)
