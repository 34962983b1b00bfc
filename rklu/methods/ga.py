"""Gradient ascent: maximize the NLL of the forget answers."""
from __future__ import annotations

from .common import LossContext, mean_nll
from .registry import MethodSpec


def ga_loss(ctx: LossContext, batch):
    nll = mean_nll(ctx.student("forget", batch), batch["forget"]["labels"], ctx.logprob_backend)
    return -nll, {"forget_nll": nll.detach()}


METHOD = MethodSpec("ga", ga_loss)
