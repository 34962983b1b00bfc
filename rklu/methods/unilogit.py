"""Unilogit (Vasilev et al., Findings of ACL 2025, "Unilogit: Robust Machine Unlearning for LLMs Using
Uniform-Target Self-Distillation", arXiv 2505.06027; code github.com/eBay/unilogit-acl-2025): self-
distillation toward the model's own current distribution with the forget token's logit lowered so that
its teacher probability is uniform,

    t = l_student (detached), t_y set so that softmax(t)_y = 1/V,   loss = KL(p_student || softmax(t))

Which model and which KL, from the sources: the abstract says the targets come from "the current model's
outputs" (not the starting model's, which is UNDIAL's choice), and the official repository's Figure 1
caption: "Soft labels are derived from the current model (θ) outputs. Reverse KL divergence is the
distillation objective." Reverse KL in the distillation sense (MiniLLM) is KL(student || teacher), the
kernel's "reverse" (the official training code itself was not reachable here). The edit has no
hyperparameter (the paper's point); the API turns "uniform" into a per-token shift of the target logit.
Fused (teacher "self", target_edit "uniform", divergence "reverse"): no [tokens x vocab] logits.
``+rt``/``+kl``: the paper combines the forget loss with a retain loss on the retain set."""
from __future__ import annotations

from .common import LossContext, unlearning_kl
from .registry import MethodSpec


def unilogit_loss(ctx: LossContext, batch):
    loss = unlearning_kl(ctx, "forget", batch, teacher="self", divergence="reverse", target_edit="uniform")
    return loss, {"forget_kl": loss.detach()}


METHOD = MethodSpec("unilogit", unilogit_loss)
