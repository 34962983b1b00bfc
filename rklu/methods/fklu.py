"""FKLU (the paper's ablation): the same unlearning teacher as RKLU, forward KL(p_teacher || p_student)."""
from __future__ import annotations

from .common import LossContext, unlearning_kl
from .registry import ALPHA, MethodSpec


def fklu_loss(ctx: LossContext, batch):
    loss = unlearning_kl(ctx, "forget", batch, direction="forward", with_augmented=True)
    return loss, {"forget_kl": loss.detach()}


METHOD = MethodSpec("fklu", fklu_loss, teachers={"original": ("forget",), "augmented": ("forget",)},
                    hyperparameters=(ALPHA,), retain_terms=("kl",))
