"""JensUn (Singh et al., 2025, "Unlearning That Lasts: Utility-Preserving, Robust, and Almost Irreversible
Forgetting in LLMs", arXiv 2509.02820): the Jensen-Shannon divergence as the objective of both terms,

    forget: JSD(p_student || onehot(refusal token)) on the forget questions answered with a refusal
    retain: JSD(p_student || p_original) on the retain set              (``jensun+jsd``, weight lambda)

with JSD_beta(P || Q) = beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q, the symmetric
JSD at beta = 0.5 (the paper's; ``jensun_beta`` for Liger's generalized form). The refusal answers are the
``idk`` data role (forget questions, refusal answers, as the ``idk`` method reads them); the one-hot
teacher is built by the fused op from the labels (teacher "labels", divergence "jsd"): no [tokens x vocab]
logits. The retain term is the registry's ``jsd`` retain term (rklu/methods/retain.py).

Against the official code (github.com/nmndeep/JensUn-Unlearning, ``src/trainer/utils.py``): the retain term
is its ``jensun_retain_loss``, the symmetric JSD to the frozen original (beta fixed at 0.5 there too). Its
forget term ``jensun_multitok_loss`` differs on purpose. It sets the target to 1 at every refusal-token id
("No", "Idea") at every position of the forget sequence. The prompt and padding are included, and for a
two-token refusal the target sums to 2. This port instead uses a distribution, as a JSD needs: the
one-hot of the refusal answer's next token, on the answer tokens only."""
from __future__ import annotations

from .common import LossContext, unlearning_kl
from .registry import Hyperparameter, MethodSpec

BETA = Hyperparameter("jensun_beta", 0.5, strict=True,
                      help="JensUn: weight of the teacher in the JSD mixture (0.5: the symmetric JSD; < 1)")


def jensun_loss(ctx: LossContext, batch):
    beta = ctx.hp("jensun_beta")
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jensun_beta must be in (0, 1), got {beta}")
    loss = unlearning_kl(ctx, "idk", batch, teacher="labels", divergence="jsd", jsd_beta=float(beta))
    return loss, {"idk_jsd": loss.detach()}


METHOD = MethodSpec("jensun", jensun_loss, data=("idk",), hyperparameters=(BETA,), retain_terms=("jsd",))
