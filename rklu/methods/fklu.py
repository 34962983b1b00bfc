"""FKLU (the paper's ablation): the same unlearning teacher as RKLU, forward KL(p_teacher || p_student)."""
from __future__ import annotations

from .common import LossContext, unlearning_kl


def fklu_loss(ctx: LossContext, batch):
    loss = unlearning_kl(ctx, "forget", batch, direction="forward", with_augmented=True)
    return loss, {"forget_kl": loss.detach()}
