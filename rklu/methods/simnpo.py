"""SimNPO (Fan et al., 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
Unlearning", arXiv 2410.07163): NPO without the reference model, on the length-normalized NLL of the
forget answer. As open-unlearning writes it (src/trainer/unlearn/simnpo.py, configs/trainer/SimNPO.yaml,
commit d3d7cf9):

    L = gamma * -(2/beta) * mean_rows log sigmoid(beta * (NLL(y|x) / |y| - delta))

with NLL summed over the row's answer tokens and |y| their count; defaults beta = 4.5, delta = 0 (the
paper's margin gamma, inside beta here), forget weight gamma = 0.125 (``npo_coeff`` in the authors'
TOFU config) and retain weight alpha = 1 on the retain NLL (``simnpo+rt``). No reference model, so no
teacher; the per-token log-probs come from the fused log-prob op (no [tokens x vocab] logits). A row with
no answer tokens counts as length 1 (open-unlearning would divide by zero)."""
from __future__ import annotations

import torch.nn.functional as F

from .common import LossContext, token_logprobs
from .registry import Hyperparameter, MethodSpec

BETA = Hyperparameter("simnpo_beta", 4.5, strict=True, help="SimNPO beta (inverse temperature)")
DELTA = Hyperparameter("simnpo_delta", 0.0, help="SimNPO reward margin delta, subtracted from the mean NLL")
FORGET_WEIGHT = Hyperparameter("simnpo_forget_weight", 0.125, strict=True,
                               help="SimNPO weight of the forget loss (open-unlearning's gamma)")


def simnpo_loss(ctx: LossContext, batch):
    labels = batch["forget"]["labels"]
    logp, mask = token_logprobs(ctx.student("forget", batch), labels, ctx.logprob_backend)
    mean_nll = -logp.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    beta = ctx.hp("simnpo_beta")
    loss = -F.logsigmoid(beta * (mean_nll - ctx.hp("simnpo_delta"))).mean() * 2.0 / beta
    return ctx.hp("simnpo_forget_weight") * loss, {"forget_mean_nll": mean_nll.mean().detach()}


METHOD = MethodSpec("simnpo", simnpo_loss, hyperparameters=(BETA, DELTA, FORGET_WEIGHT))
