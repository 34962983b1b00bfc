"""CE-U, cross-entropy unlearning (Yang et al., 2025, "CE-U: Cross Entropy Unlearning", arXiv 2503.01224):
distil the model toward its own detached distribution with the forget token removed,

    t = l_student (detached), t_y = -inf,   loss = mean over answer tokens of CE(softmax(t), p_student)

as open-unlearning writes it (cross_entropy_unlearning_loss and compute_batch_ceu in
src/trainer/unlearn/ceu.py, configs/trainer/CEU.yaml, commit d3d7cf9), including its
``ignore_first_n_answer_tokens`` = 1 (the paper's footnote in its training settings): the first n answer
tokens of each row are not counted (``ceu_ignore_first_n``). No reference model and no retain term there.

Soft cross-entropy = forward KL(p_t || p_student) + H(p_t), the same gradient; the fused op computes the
forward KL (teacher "self", target_edit "exclude"), so the reported value is lower by the mean entropy of
the edited self-teacher. No [tokens x vocab] logits."""
from __future__ import annotations

import torch

from .common import IGNORE_INDEX, LossContext, unlearning_kl
from .registry import Hyperparameter, MethodSpec

IGNORE_FIRST = Hyperparameter("ceu_ignore_first_n", 1.0,
                              help="CE-U: answer tokens at the start of each row that are not counted (an integer)")


def without_first_answer_tokens(labels: torch.Tensor, n) -> torch.Tensor:
    """``labels`` with the first ``n`` counted tokens of each row set to the ignore index (open-unlearning's
    compute_batch_ceu, on the unshifted labels)."""
    if float(n) != int(n):
        raise ValueError(f"ceu_ignore_first_n must be a whole number, got {n}")
    counted = labels != IGNORE_INDEX
    first = (counted.cumsum(dim=-1) <= int(n)) & counted
    return labels.masked_fill(first, IGNORE_INDEX)


def ceu_loss(ctx: LossContext, batch):
    labels = without_first_answer_tokens(batch["forget"]["labels"], ctx.hp("ceu_ignore_first_n"))
    loss = unlearning_kl(ctx, "forget", batch, teacher="self", labels=labels, divergence="forward",
                         target_edit="exclude")
    return loss, {"forget_kl": loss.detach()}


METHOD = MethodSpec("ce-u", ceu_loss, hyperparameters=(IGNORE_FIRST,), retain_terms=())
