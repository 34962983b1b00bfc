"""Retain terms (paper eq. 3), weighted by lambda: RT = NLL on retain answers; KL = forward KL from the
original model to the student on retain data (the original's distribution is kept; fused kernel, no
augmented teacher, so the teacher is the original itself); JSD = the symmetric Jensen-Shannon divergence
(beta 0.5) between the student and the original on retain data, JensUn's retain loss (arXiv 2509.02820),
same fused kernel."""
from __future__ import annotations

from .common import LossContext, mean_nll, unlearning_kl
from .registry import RetainTerm, register_retain_term


def rt_term(ctx: LossContext, batch):
    loss = mean_nll(ctx.student("retain", batch), batch["retain"]["labels"], ctx.logprob_backend)
    return loss, {"retain_nll": loss.detach()}


def kl_term(ctx: LossContext, batch):
    loss = unlearning_kl(ctx, "retain", batch, direction="forward", with_augmented=False)
    return loss, {"retain_kl": loss.detach()}


def jsd_term(ctx: LossContext, batch):
    loss = unlearning_kl(ctx, "retain", batch, divergence="jsd", jsd_beta=0.5)
    return loss, {"retain_jsd": loss.detach()}


RT = register_retain_term(RetainTerm("rt", rt_term))
KL = register_retain_term(RetainTerm("kl", kl_term, teachers={"original": ("retain",)}))
JSD = register_retain_term(RetainTerm("jsd", jsd_term, teachers={"original": ("retain",)}))
