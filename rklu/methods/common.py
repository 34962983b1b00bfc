"""Shared pieces of the unlearning losses: the loss context (student, teachers, hyperparameters),
next-token shifting, NLL terms and the fused KL term."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from ..kernels import fused_linear_token_logprob, fused_linear_unlearning_kl
from ..models.heads import HeadOutput, Teacher, student_forward

IGNORE_INDEX = -100


@dataclass(init=False)
class LossContext:
    """What a method's loss may use. Teachers are None when the method does not need them.

    ``hyperparameters``: the methods' settings by name (the run passes every registered one); a loss reads
    them with ``ctx.hp("npo_beta")``, a name not given falls back to its registered default. Keywords that
    are not fields are hyperparameters too: ``LossContext(alpha=4.0)``."""
    model: torch.nn.Module | None
    original: Teacher | None
    augmented: Teacher | None
    hyperparameters: dict
    kl_backend: str              # backend of the fused KL
    logprob_backend: str         # backend of the fused label log-prob (training resolves both once per run)
    cache: dict                  # per-step memo so a role's student pass runs once

    def __init__(self, model=None, original=None, augmented=None, hyperparameters: Mapping | None = None,
                 kl_backend: str = "auto", logprob_backend: str = "auto", cache: dict | None = None,
                 **more_hyperparameters):
        self.model, self.original, self.augmented, self.kl_backend = model, original, augmented, kl_backend
        self.logprob_backend = logprob_backend
        self.hyperparameters = {**(hyperparameters or {}), **more_hyperparameters}
        self.cache = {} if cache is None else cache

    def hp(self, name: str) -> float:
        """The value of hyperparameter ``name``: the one given, else its registered default."""
        if name in self.hyperparameters:
            return self.hyperparameters[name]
        from .registry import hyperparameters  # the registry imports this module

        for hp in hyperparameters():
            if hp.name == name:
                return hp.default
        raise KeyError(f"no hyperparameter {name!r} was given and no registered method declares one")

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
    log-prob: hidden states + lm_head (with the model's logit scale/softcap) in, float32 logits computed tile
    by tile, no [tokens x vocab] tensor."""
    hidden, targets = shift(out, labels)
    logp = fused_linear_token_logprob(hidden, out.weight, targets, bias=out.bias, ignore_index=IGNORE_INDEX,
                                      backend=backend, **out.kernel_kwargs())
    return logp, targets != IGNORE_INDEX


def mean_nll(out: HeadOutput, labels: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Mean negative log-likelihood over the batch's target tokens (HF's causal-LM loss)."""
    logp, mask = token_logprobs(out, labels, backend)
    return -logp.sum() / mask.sum().clamp(min=1)


def sequence_logprob(out: HeadOutput, labels: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Summed log-probability of each row's target tokens [B] (NPO and DPO compare these)."""
    logp, _ = token_logprobs(out, labels, backend)
    return logp.sum(dim=1)


def unlearning_kl(ctx: LossContext, role: str, batch, direction: str = "reverse", with_augmented: bool = False,
                  alpha: float | None = None, *, teacher: str = "models", labels: torch.Tensor | None = None,
                  **objective) -> torch.Tensor:
    """Divergence between the student and its teacher on ``batch[role]``, through the fused kernel: hidden
    states + lm_head weights in, no [tokens x vocab] logits built.

    ``teacher``: ``"models"`` (the original, edited by the augmented model when ``with_augmented``),
    ``"self"`` (the student's own detached logits) or ``"labels"`` (one-hot on the label); ``objective``:
    the KL op's ``divergence``, ``jsd_beta``, ``target_edit``, ``target_shift``, ``temperature``
    (``rklu.kernels.kl.objective``), passed only when given, so the plain RKLU/FKLU call is unchanged.
    ``labels`` (unshifted, like ``batch[role]["labels"]``) replaces the role's labels, e.g. with more tokens
    masked."""
    sub = batch[role]
    student = ctx.student(role, batch)
    hidden, shifted = shift(student, sub["labels"] if labels is None else labels)
    if teacher == "models":
        original = ctx.original(role, sub)
        augmented = ctx.augmented(role, sub) if with_augmented else None
        models = dict(original_hidden=original.hidden[:, :-1], original_weight=original.weight,
                      original_bias=original.bias, **original.kernel_kwargs("original_"))
        if augmented is not None:
            models.update(augmented_hidden=augmented.hidden[:, :-1], augmented_weight=augmented.weight,
                          augmented_bias=augmented.bias, **augmented.kernel_kwargs("augmented_"))
    else:  # no teacher model: the kernel builds the teacher from the student's own logits or the labels
        if with_augmented:
            raise ValueError(f"teacher={teacher!r} takes no augmented model")
        models = dict(original_hidden=None, original_weight=None, teacher=teacher)
    return fused_linear_unlearning_kl(
        hidden, student.weight, alpha=ctx.hp("alpha") if alpha is None else alpha, direction=direction,
        labels=shifted, reduction="mean", backend=ctx.kl_backend, student_bias=student.bias,
        **student.kernel_kwargs("student_"), **models, **objective)
