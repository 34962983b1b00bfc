"""WGA, weighted gradient ascent (Wang et al., 2025, "Rethinking LLM Unlearning Objectives: A Gradient
Perspective and Go Beyond", the G-effect paper, arXiv 2502.19301): gradient ascent with each forget
token's NLL weighted by its detached probability to the power beta, so tokens the model already finds
unlikely stop pushing. As open-unlearning writes it (compute_wga_loss in src/trainer/utils.py,
src/trainer/unlearn/wga.py, configs/trainer/WGA.yaml, commit d3d7cf9):

    L = -mean_tokens( p(y_t)^beta (detached) * NLL(y_t) )       (mean over every answer token of the batch)

defaults beta = 1, forget weight gamma = 1 and retain weight alpha = 1 on the retain NLL (``wga+rt``).
open-unlearning builds a reference model for WGA but never reads it: no teacher here. Per-token
log-probs from the fused log-prob op (no [tokens x vocab] logits)."""
from __future__ import annotations

from .common import LossContext, token_logprobs
from .registry import Hyperparameter, MethodSpec

BETA = Hyperparameter("wga_beta", 1.0, help="WGA exponent of the detached token probability weight")


def wga_loss(ctx: LossContext, batch):
    logp, mask = token_logprobs(ctx.student("forget", batch), batch["forget"]["labels"], ctx.logprob_backend)
    weight = logp.detach().exp() ** ctx.hp("wga_beta")
    # -(w * NLL) = w * logp; masked tokens have logp 0
    loss = (weight * logp).sum() / mask.sum().clamp(min=1)
    return loss, {"forget_nll": (-logp.sum() / mask.sum().clamp(min=1)).detach()}


METHOD = MethodSpec("wga", wga_loss, hyperparameters=(BETA,))
