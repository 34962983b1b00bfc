"""Every checked Hugging Face family: the library's RKLU, FKLU, NPO and NLL losses and their gradients
(hidden states + head description through the fused ops) equal the same formulas on the model's own
``.logits`` in fp32 (1e-5 relative), with the lm_head scaled so the logits are large. Families whose forward
the kernels cannot follow get a clear error from the start-up check instead (see test_head_check.py).

The reference formulas: RKLU/FKLU = ``rklu.kernels.unlearning_kl_reference`` on materialized logits (teacher
``l_o - alpha * relu(l_aug - l_o)``, Wang et al. 2025 eq. 1-2); NPO = Zhang et al. 2024,
``-(2/beta) mean log sigmoid(-beta (log pi - log pi_ref))``; NLL = Hugging Face's causal-LM cross-entropy.
"""
import pytest
import torch
import torch.nn.functional as F

from family_cases import FAMILIES, batch, build

from rklu.kernels import unlearning_kl_reference
from rklu.methods import FINETUNE, LossContext, get_method
from rklu.models.head_check import check_head_path
from rklu.models.heads import ModelTeacher, final_hidden_states, head_transform

RTOL = 1e-5
ALPHA, BETA = 2.0, 0.1


def _transformed(family) -> bool:
    return FAMILIES[family][3] != (1.0, None)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = tuple(build(family, seed) for seed in (0, 1, 2))  # student, original, augmented
        return cache[family]
    return get


def _reference_loss(method, student, original, augmented, sub):
    kwargs = {"input_ids": sub["input_ids"], "attention_mask": sub["attention_mask"]}
    labels = sub["labels"][:, 1:]
    logits = student(**kwargs).logits[:, :-1]
    if method == "nll":
        return F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100)
    with torch.no_grad():
        original_logits = original(**kwargs).logits[:, :-1]
        augmented_logits = augmented(**kwargs).logits[:, :-1]
    if method in ("rklu", "fklu"):
        return unlearning_kl_reference(logits, original_logits, augmented_logits, alpha=ALPHA,
                                       direction="reverse" if method == "rklu" else "forward", labels=labels)

    def seq_logprob(lg):
        logp = torch.log_softmax(lg.float(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        return (logp * (labels != -100)).sum(1)
    log_ratio = seq_logprob(logits) - seq_logprob(original_logits)
    return -F.logsigmoid(-BETA * log_ratio).mean() * 2.0 / BETA


def _library_loss(method, student, original, augmented, sub, backend):
    ctx = LossContext(model=student, original=ModelTeacher(original), augmented=ModelTeacher(augmented),
                      alpha=ALPHA, npo_beta=BETA, kl_backend=backend, logprob_backend=backend)
    if method == "nll":
        return FINETUNE.loss(ctx, {"train": sub})[0]
    return get_method(method).loss(ctx, {"forget": sub})[0]


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend", ["torch", "reference"])  # the CPU backends; tests/kernels compare the rest
@pytest.mark.parametrize("method", ["rklu", "fklu", "npo", "nll"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_losses_and_gradients_equal_the_models_own_logits(models, family, method, backend):
    student, original, augmented = models(family)
    sub = batch()
    for model in (student, original, augmented):
        check_head_path(model, family)  # the start-up check passes
    ours = _library_loss(method, student, original, augmented, sub, backend)
    ours_grads = _grads(student, ours)
    ref = _reference_loss(method, student, original, augmented, sub)
    ref_grads = _grads(student, ref)
    assert torch.isfinite(ref) and abs(float(ref.detach())) > 1e-3, "degenerate case: the loss cannot tell models apart"
    assert abs(float(ours.detach()) - float(ref.detach())) <= RTOL * abs(float(ref.detach())), \
        f"{family} {method}: {float(ours.detach())} vs {float(ref.detach())}"
    assert ours_grads.keys() == ref_grads.keys()
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    assert scale > 0
    for name, g in ref_grads.items():
        err = float((ours_grads[name] - g).abs().max())
        assert err <= RTOL * scale, f"{family} {method}: grad {name} off by {err:.3g} (max |grad| {scale:.3g})"


@pytest.mark.parametrize("family", [f for f in FAMILIES if _transformed(f)])
def test_the_transform_matters_in_these_cases(models, family):
    """The cases can fail: ignoring the family's transform changes the RKLU loss by > 10 %."""
    student, original, augmented = models(family)
    sub = batch()
    kwargs = {"input_ids": sub["input_ids"], "attention_mask": sub["attention_mask"]}
    labels = sub["labels"][:, 1:]
    with torch.no_grad():
        true = [m(**kwargs).logits[:, :-1] for m in (student, original, augmented)]
        plain = [m.get_output_embeddings()(final_hidden_states(m, **kwargs))[:, :-1] for m in (student, original, augmented)]
        loss_true = unlearning_kl_reference(*true, alpha=ALPHA, labels=labels)
        loss_plain = unlearning_kl_reference(*plain, alpha=ALPHA, labels=labels)
    assert abs(float(loss_plain) - float(loss_true)) > 0.1 * abs(float(loss_true))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_head_description_reads_the_config(models, family):
    expected_scale, expected_softcap = FAMILIES[family][3]
    transform = head_transform(models(family)[0])
    assert transform.scale == pytest.approx(expected_scale) and transform.softcap == expected_softcap
