"""Gradient ascent: maximize the NLL of the forget answers."""
from __future__ import annotations

from .common import LossContext, mean_nll


def ga_loss(ctx: LossContext, batch):
    nll = mean_nll(ctx.student("forget", batch), batch["forget"]["labels"], ctx.kl_backend)
    return -nll, {"forget_nll": nll.detach()}
