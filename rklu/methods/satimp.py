"""SatImp (Yang et al., 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning",
arXiv 2505.11953): gradient ascent with each forget token's NLL weighted by saturation p^beta1 times
importance (1 - p)^beta2 (p its detached probability), so tokens already forgotten and tokens the model
is certain of both weigh little. As open-unlearning writes it (compute_satimp_loss in
src/trainer/utils.py, src/trainer/unlearn/satimp.py, configs/trainer/SatImp.yaml, commit d3d7cf9):

    L = gamma * -mean_tokens( p^beta1 * (1 - p)^beta2 * NLL(y_t) )     (p detached; mean over the batch's answer tokens)

defaults from the config: beta1 = 5, beta2 = 1, forget weight gamma = 0.1, retain weight alpha = 1 on
the retain NLL (``satimp+rt``). open-unlearning builds a reference model for SatImp but never reads it:
no teacher here. Per-token log-probs from the fused log-prob op (no [tokens x vocab] logits)."""
from __future__ import annotations

from .common import LossContext, token_logprobs
from .registry import Hyperparameter, MethodSpec

BETA1 = Hyperparameter("satimp_beta1", 5.0, help="SatImp saturation exponent beta1 (weight p^beta1)")
BETA2 = Hyperparameter("satimp_beta2", 1.0, help="SatImp importance exponent beta2 (weight (1-p)^beta2)")
FORGET_WEIGHT = Hyperparameter("satimp_forget_weight", 0.1, strict=True,
                               help="SatImp weight of the forget loss (open-unlearning's gamma)")


def satimp_loss(ctx: LossContext, batch):
    logp, mask = token_logprobs(ctx.student("forget", batch), batch["forget"]["labels"], ctx.logprob_backend)
    p = logp.detach().exp()
    weight = p ** ctx.hp("satimp_beta1") * (1.0 - p) ** ctx.hp("satimp_beta2")
    loss = (weight * logp).sum() / mask.sum().clamp(min=1)  # -(w * NLL) = w * logp; masked tokens have logp 0
    nll = -logp.sum() / mask.sum().clamp(min=1)
    return ctx.hp("satimp_forget_weight") * loss, {"forget_nll": nll.detach()}


METHOD = MethodSpec("satimp", satimp_loss, hyperparameters=(BETA1, BETA2, FORGET_WEIGHT))
