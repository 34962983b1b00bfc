"""RKLU (the paper's method): reverse KL(p_student || p_teacher) on the forget data, where the unlearning
teacher's logits are l_o - alpha * relu(l_aug - l_o) (eq. 1-2). Fused kernel, no logits materialized."""
from __future__ import annotations

from .common import LossContext, unlearning_kl
from .registry import ALPHA, MethodSpec


def rklu_loss(ctx: LossContext, batch):
    loss = unlearning_kl(ctx, "forget", batch, direction="reverse", with_augmented=True)
    return loss, {"forget_kl": loss.detach()}


METHOD = MethodSpec("rklu", rklu_loss, teachers={"original": ("forget",), "augmented": ("forget",)},
                    hyperparameters=(ALPHA,))
