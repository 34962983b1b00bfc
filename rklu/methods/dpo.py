"""DPO (Rafailov et al., 2024) with the refusal as the preferred answer and the forget answer as the
rejected one, the original model as reference, beta = 0.1:
    L = -mean log sigmoid(beta * [(log pi(y_idk) - log ref(y_idk)) - (log pi(y_f) - log ref(y_f))])."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import LossContext, sequence_logprob
from .registry import Hyperparameter, MethodSpec


def dpo_loss(ctx: LossContext, batch):
    win, lose = batch["idk"], batch["forget"]
    win_logp = sequence_logprob(ctx.student("idk", batch), win["labels"], ctx.logprob_backend)
    lose_logp = sequence_logprob(ctx.student("forget", batch), lose["labels"], ctx.logprob_backend)
    with torch.no_grad():
        win_ref = sequence_logprob(ctx.original("idk", win), win["labels"], ctx.logprob_backend)
        lose_ref = sequence_logprob(ctx.original("forget", lose), lose["labels"], ctx.logprob_backend)
    margin = (win_logp - win_ref) - (lose_logp - lose_ref)
    loss = -F.logsigmoid(ctx.hp("dpo_beta") * margin).mean()
    return loss, {"dpo_margin": margin.mean().detach()}


METHOD = MethodSpec("dpo", dpo_loss, teachers={"original": ("forget", "idk")}, data=("forget", "idk"),
                    hyperparameters=(Hyperparameter("dpo_beta", 0.1, strict=True, help="DPO beta"),))
