"""IDK: finetune on the forget questions answered with a refusal ("I don't know" variants)."""
from __future__ import annotations

from .common import LossContext, mean_nll
from .registry import MethodSpec


def idk_loss(ctx: LossContext, batch):
    nll = mean_nll(ctx.student("idk", batch), batch["idk"]["labels"], ctx.logprob_backend)
    return nll, {"idk_nll": nll.detach()}


METHOD = MethodSpec("idk", idk_loss, data=("idk",), retain_terms=())
