"""open-unlearning's token- and length-weighted methods (SimNPO, WGA, SatImp, GradDiff) against float64
references that follow open-unlearning's code on full logits (src/trainer/utils.py: compute_batch_nll,
compute_wga_loss, compute_satimp_loss; src/trainer/unlearn/simnpo.py, grad_diff.py): the loss and every
parameter's gradient, at default and non-default hyperparameters (so the values the loss reads are
checked too)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from method_cases import tiny_paired_batch
from rklu.methods import LossContext, get_method
from rklu.models.tiny import build_tiny_llama


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    tok, _, _, batch = tiny_paired_batch(4, max_length=128)
    model = build_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    # fit the forget answers (the original model memorizes them), so SimNPO's sigmoid is not
    # saturated and the token weights are not all ~0 (at initialization p ~ 1/V for every token)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(40):
        opt.zero_grad()
        _hf_loss(model, batch["forget"]).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, batch


def _token_ce(model, sub):
    """open-unlearning's per-token CE: [B, T-1] (0 where the label is -100) and the shifted labels."""
    logits = model(input_ids=sub["input_ids"], attention_mask=sub["attention_mask"]).logits
    labels = sub["labels"][..., 1:].contiguous()
    ce = nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(logits[..., :-1, :].transpose(-1, -2), labels)
    return ce, labels


def _hf_loss(model, sub):  # model(**inputs).loss (HF computes it in float32, even for a float64 model)
    return model(input_ids=sub["input_ids"], attention_mask=sub["attention_mask"], labels=sub["labels"]).loss


def _mean_ce(model, sub):
    """model(**inputs).loss, kept in the model's dtype: the mean CE over the batch's answer tokens."""
    ce, labels = _token_ce(model, sub)
    return ce.sum() / (labels != -100).sum()


def simnpo_reference(model, batch, hp):
    ce, labels = _token_ce(model, batch["forget"])
    forget_loss = ce.sum(-1) / (labels != -100).sum(-1) - hp.get("simnpo_delta", 0.0)
    beta = hp.get("simnpo_beta", 4.5)
    return hp.get("simnpo_forget_weight", 0.125) * (-F.logsigmoid(beta * forget_loss).mean() * 2 / beta)


def wga_reference(model, batch, hp):
    ce, labels = _token_ce(model, batch["forget"])
    lm_loss, labels = ce.reshape(-1), labels.reshape(-1)
    weight_ce = ((-lm_loss).exp().detach()) ** hp.get("wga_beta", 1.0)
    return -(weight_ce * lm_loss)[labels != -100].mean()


def satimp_reference(model, batch, hp):
    ce, labels = _token_ce(model, batch["forget"])
    lm_loss, labels = ce.reshape(-1), labels.reshape(-1)
    weight_sat = ((-lm_loss).exp().detach()) ** hp.get("satimp_beta1", 5.0)
    weight_imp = (1 - (-lm_loss).exp().detach()) ** hp.get("satimp_beta2", 1.0)
    forget_loss = -((weight_sat * weight_imp) * lm_loss)[labels != -100].mean()
    return hp.get("satimp_forget_weight", 0.1) * forget_loss


def gradiff_reference(model, batch, hp):
    return -_mean_ce(model, batch["forget"]) + hp.get("retain_weight", 1.0) * _mean_ce(model, batch["retain"])


def with_retain_nll(reference):
    def combined(model, batch, hp):
        return reference(model, batch, hp) + hp.get("retain_weight", 1.0) * _mean_ce(model, batch["retain"])
    return combined


CASES = [
    ("simnpo", simnpo_reference, {}),
    ("simnpo", simnpo_reference, {"simnpo_beta": 2.0, "simnpo_delta": 0.5, "simnpo_forget_weight": 1.0}),
    ("simnpo+rt", with_retain_nll(simnpo_reference), {"retain_weight": 0.5}),
    ("wga", wga_reference, {}),
    ("wga", wga_reference, {"wga_beta": 0.3}),
    ("wga+rt", with_retain_nll(wga_reference), {}),
    ("satimp", satimp_reference, {}),
    ("satimp", satimp_reference, {"satimp_beta1": 1.5, "satimp_beta2": 2.0, "satimp_forget_weight": 1.0}),
    ("satimp+rt", with_retain_nll(satimp_reference), {}),
    ("gradiff", gradiff_reference, {}),
    ("gradiff", gradiff_reference, {"retain_weight": 2.0}),
]


@pytest.mark.parametrize("name, reference, hp", CASES)
def test_loss_and_gradients_match_float64_reference(name, reference, hp, setup):
    model, batch = setup
    student = copy.deepcopy(model)
    ctx = LossContext(model=student, hyperparameters=hp, kl_backend="torch", logprob_backend="torch")
    loss, metrics = get_method(name).loss(ctx, batch)
    loss.backward()

    ref_model = copy.deepcopy(model).double()
    ref = reference(ref_model, batch, hp)
    ref.backward()
    assert ref.abs().item() > 1e-5  # not trivially zero (SatImp at its defaults is small: p^5 (1-p) weights)
    torch.testing.assert_close(loss.detach().double(), ref.detach(), atol=1e-6, rtol=1e-5)
    for (pname, p), (_, p_ref) in zip(student.named_parameters(), ref_model.named_parameters()):
        scale = p_ref.grad.abs().max().item()
        assert p.grad is not None, pname
        torch.testing.assert_close(p.grad.double(), p_ref.grad, atol=1e-5 * max(scale, 1e-3), rtol=1e-4,
                                   msg=lambda m: f"{name} {hp} grad {pname}: {m}")


def test_weights_are_detached_and_vanish_on_masked_tokens(setup):
    """A token the model is sure of gets SatImp weight ~0 ((1 - p)^beta2); a fully masked row adds nothing."""
    model, batch = setup
    sub = {k: v.clone() for k, v in batch["forget"].items()}
    sub["labels"][0] = -100  # row 0 has no answer tokens
    masked = {**batch, "forget": sub}
    for name in ("simnpo", "wga", "satimp"):
        loss, _ = get_method(name).loss(LossContext(model=copy.deepcopy(model), kl_backend="torch", logprob_backend="torch"), masked)
        assert torch.isfinite(loss), name


def test_gradiff_is_ga_plus_rt():
    method = get_method("gradiff")
    assert method.name == "ga+rt" and method.retain_term == "rt" and method.forget_loss is get_method("ga").forget_loss


def test_fixture_spreads_token_probabilities(setup):
    model, batch = setup
    ce, labels = _token_ce(model, batch["forget"])
    p = (-ce[labels != -100]).exp()
    assert (p > 0.9).any() and (p < 0.8).any() and ce.sum(-1).max() / (labels != -100).sum(-1).max() < 3
