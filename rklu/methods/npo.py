"""Negative Preference Optimization (Zhang et al., 2024): DPO with only a rejected answer (the forget
answer), against the original model as reference:
    L = -(2/beta) * mean log sigmoid(-beta * (log pi_theta(y|x) - log pi_ref(y|x))),   beta = 0.1.
It tends to GA as beta -> 0 but saturates once the forget answer is unlikely, which slows the collapse."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import LossContext, sequence_logprob
from .registry import Hyperparameter, MethodSpec


def npo_loss(ctx: LossContext, batch):
    sub = batch["forget"]
    logp = sequence_logprob(ctx.student("forget", batch), sub["labels"], ctx.logprob_backend)
    with torch.no_grad():
        ref = sequence_logprob(ctx.original("forget", sub), sub["labels"], ctx.logprob_backend)
    log_ratio = logp - ref
    beta = ctx.hp("npo_beta")
    loss = -F.logsigmoid(-beta * log_ratio).mean() * 2.0 / beta
    return loss, {"forget_log_ratio": log_ratio.mean().detach()}


METHOD = MethodSpec("npo", npo_loss, teachers={"original": ("forget",)},
                    hyperparameters=(Hyperparameter("npo_beta", 0.1, strict=True, help="NPO beta"),))
