"""UNDIAL (Dong et al., NAACL 2025, "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning
in Large Language Models", arXiv 2402.10052): distil the student toward the frozen original model whose
logit of the forget token is lowered by beta,

    t = l_original - beta * onehot(y),   loss = mean over answer tokens of CE(softmax(t), p_student)

as open-unlearning writes it (compute_undial_loss in src/trainer/utils.py, src/trainer/unlearn/undial.py,
configs/trainer/UNDIAL.yaml, commit d3d7cf9; community/methods/UNDIAL): beta = 10 in the config (the
class default 1.0 is overridden there; the README sweeps 3 / 10 / 30), forget weight gamma = 1, retain
weight alpha = 0 (the paper uses no retain set), the reference model a frozen copy of the model at the
start (our original teacher).

Soft cross-entropy = forward KL(p_t || p_student) + H(p_t): the same gradient. The fused op computes the
forward KL (divergence "forward", target_edit "subtract", target_shift beta), so the reported value is
smaller than open-unlearning's by the teacher's mean entropy; training is identical on counted tokens.
open-unlearning scatters label -100 as an index (it wraps to vocab entry V-100) and averages over every
position, prompt and padding included; we count the answer tokens only (tests/methods/
test_distillation_methods.py shows the two agree there). ``+rt``/``+kl``: open-unlearning's UNDIAL is a
GradDiff with a retain term whose weight its scripts sweep (alpha 1, 2, 5)."""
from __future__ import annotations

from .common import LossContext, unlearning_kl
from .registry import Hyperparameter, MethodSpec

BETA = Hyperparameter("undial_beta", 10.0, help="UNDIAL beta: how much the forget token's teacher logit is lowered")


def undial_loss(ctx: LossContext, batch):
    loss = unlearning_kl(ctx, "forget", batch, divergence="forward", target_edit="subtract",
                         target_shift=float(ctx.hp("undial_beta")))
    return loss, {"forget_kl": loss.detach()}


METHOD = MethodSpec("undial", undial_loss, teachers={"original": ("forget",)}, hyperparameters=(BETA,))
