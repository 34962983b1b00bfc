"""Who's Harry Potter (Eldan & Russinovich, 2023, "Who's Harry Potter? Approximate Unlearning in LLMs",
arXiv 2310.02238), its logit part: fine-tune on the "generic predictions" of a teacher built from the
original (baseline) model and a model reinforced on the forget data (our augmented model),

    v_generic = v_baseline - alpha * ReLU(v_reinforced - v_baseline)          (paper, Section 3.1)

taking as label of each forget token the teacher's argmax ("generic labels"), so the loss is the
cross-entropy -log p_student(argmax_i v_generic,i) per answer token, mean over the batch. The teacher is
RKLU's; the fused KL op computes it tile by tile with divergence "argmax_ce" (no [tokens x vocab] logits).

Not replicated: the paper's second ingredient, "anchored terms" (a GPT-4-made dictionary that rewrites
idiosyncratic expressions of the forget text into generic ones before the teacher reads it), is a data
step specific to the Harry Potter books, and the paper's own ablation shows each ingredient alone helps.
The paper gives no single alpha; we share RKLU's (``alpha``, default 8). The paper fine-tunes on the
generic labels alone (no retain term), so no ``+rt``/``+kl`` variant."""
from __future__ import annotations

from .common import LossContext, unlearning_kl
from .registry import ALPHA, MethodSpec


def whp_loss(ctx: LossContext, batch):
    loss = unlearning_kl(ctx, "forget", batch, with_augmented=True, divergence="argmax_ce")
    return loss, {"forget_generic_ce": loss.detach()}


METHOD = MethodSpec("whp", whp_loss, teachers={"original": ("forget",), "augmented": ("forget",)},
                    hyperparameters=(ALPHA,), retain_terms=())
