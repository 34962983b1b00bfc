"""RMU, representation misdirection for unlearning (Li et al., 2024, "The WMDP Benchmark: Measuring and
Reducing Malicious Use With Unlearning", arXiv 2403.03218): at one middle decoder layer, push the
student's activations on the forget tokens toward a fixed random direction scaled by c, and keep its
activations on the retain tokens equal to the frozen original's:

    forget = mean_rows( sum_t mask_t * mean_d (h_student[t] - c u)^2 / sum_t mask_t )
    retain = the same with h_original[t] in place of c u (no gradient through the original)
    loss = forget + lambda * retain

as open-unlearning writes it (src/trainer/unlearn/rmu.py, configs/trainer/RMU.yaml, commit d3d7cf9,
after github.com/centerforaisafety/wmdp rmu/unlearn.py): u = rand(H) (uniform in [0, 1)) / its norm,
drawn once (here from a seeded generator, ``rmu_seed``); mask = answer tokens (labels != -100);
defaults from the config: steering coefficient c = 2 (the class default is 20; "tune carefully"), retain
weight alpha = 1 (``rmu_retain_weight``), forget weight gamma = 1, the layer ``model.layers.7``
(``rmu_layer``: the output of that decoder block, read by a forward hook). Which parameters train: the
config trains every parameter (``.*``, as the G-effect code does); the WMDP code trains only layers 5-7's
MLP down-projections, which this registry cannot express (the trainer optimizes every trainable weight),
so rmu trains them all, like open-unlearning's default.

No vocabulary and no lm_head: the forward stops after the chosen layer (rklu/models/activations.py).
The original teacher is loaded but never cached (its layer activations, not final hidden states, are read),
so the method declares it with no data roles. open-unlearning divides the [B] row sums by [B, 1] token
counts, which broadcasts to a [B, B] matrix (mean(row sums) * mean(1 / counts)); we take the per-row mean
its code intends (the two agree when every row has as many answer tokens). A row with no answer tokens
counts as one token (open-unlearning divides by zero there). The MSE is computed in float32."""
from __future__ import annotations

import torch

from ..models.activations import layer_output
from ..models.heads import AdapterTeacher, ModelTeacher, adapter_state
from .common import IGNORE_INDEX, LossContext
from .registry import Hyperparameter, MethodSpec

STEERING = Hyperparameter("rmu_steering_coeff", 2.0, strict=True, help="RMU steering coefficient c (|c u| = c)")
LAYER = Hyperparameter("rmu_layer", 7.0, help="RMU: 0-based index of the decoder layer whose output is steered")
RETAIN_WEIGHT = Hyperparameter("rmu_retain_weight", 1.0, help="RMU weight of the retain activation loss (alpha)")
SEED = Hyperparameter("rmu_seed", 0.0, help="RMU: seed of the random direction u (a whole number)")


def control_vector(dim: int, coeff: float, seed) -> torch.Tensor:
    """c * u, u = rand(dim) / ||rand(dim)|| from a generator seeded with ``seed`` (float32, on the CPU)."""
    if float(seed) != int(seed):
        raise ValueError(f"rmu_seed must be a whole number, got {seed}")
    u = torch.rand(dim, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)
    return u / u.norm() * coeff


def activation_loss(activations: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """open-unlearning's compute_activation_loss: per-token mean squared error over the hidden dimension,
    summed over a row's answer tokens, divided by their count, averaged over rows."""
    mask = (labels != IGNORE_INDEX).to(torch.float32)
    per_token = (activations.float() - target.float()).pow(2).mean(dim=-1)
    return ((per_token * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)).mean()


@torch.no_grad()
def original_layer_output(teacher, layer, sub) -> torch.Tensor:
    """The frozen original's output of decoder layer ``layer`` on ``sub`` (a separate model, or the
    student's base with LoRA adapters off)."""
    if isinstance(teacher, ModelTeacher):
        return layer_output(teacher.model, layer, sub["input_ids"], sub.get("attention_mask"))
    if isinstance(teacher, AdapterTeacher):
        was_training = teacher.model.training
        teacher.model.eval()
        try:
            with adapter_state(teacher.model, teacher.adapter_name):
                return layer_output(teacher.model, layer, sub["input_ids"], sub.get("attention_mask"))
        finally:
            teacher.model.train(was_training)
    raise ValueError(f"rmu reads the original model's layer activations; {type(teacher).__name__} cannot give them")


def _layer(ctx: LossContext) -> int:
    layer = ctx.hp("rmu_layer")
    if float(layer) != int(layer):
        raise ValueError(f"rmu_layer must be a whole number, got {layer}")
    return int(layer)


def rmu_loss(ctx: LossContext, batch):
    layer = _layer(ctx)
    forget, retain = batch["forget"], batch["retain"]
    h_forget = layer_output(ctx.model, layer, forget["input_ids"], forget.get("attention_mask"))
    steer = control_vector(h_forget.shape[-1], ctx.hp("rmu_steering_coeff"), ctx.hp("rmu_seed")).to(h_forget.device)
    forget_loss = activation_loss(h_forget, steer.expand_as(h_forget), forget["labels"])
    h_retain = layer_output(ctx.model, layer, retain["input_ids"], retain.get("attention_mask"))
    h_original = original_layer_output(ctx.original, layer, retain).to(h_retain.device)
    retain_loss = activation_loss(h_retain, h_original, retain["labels"])
    loss = forget_loss + ctx.hp("rmu_retain_weight") * retain_loss
    return loss, {"forget_activation_mse": forget_loss.detach(), "retain_activation_mse": retain_loss.detach()}


METHOD = MethodSpec("rmu", rmu_loss, teachers={"original": ()}, data=("forget", "retain"),
                    hyperparameters=(STEERING, LAYER, RETAIN_WEIGHT, SEED), retain_terms=())
