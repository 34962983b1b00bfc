"""Plain NLL on answer tokens: the finetune/augment objective (and the "+RT" retain term)."""
from __future__ import annotations

from .common import LossContext, mean_nll


def finetune_loss(ctx: LossContext, batch, role: str = "train"):
    loss = mean_nll(ctx.student(role, batch), batch[role]["labels"], ctx.logprob_backend)
    return loss, {"nll": loss.detach()}
