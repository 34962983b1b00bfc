"""The KL objectives (rklu/kernels/kl/objective.py) on every backend: values and gradients against the float64
ground truth of objective_cases.py (explicit formulas, independent of the reference), the edits' own effect on
the teacher, and the refusals of invalid objectives.

Tolerances are norm-wise, relative to the truth plus a unit scale: the NLL's own loss / gradient on the same
inputs (an O(1) loss). Without that floor a self-teacher loss of exactly 0 (or a tiny JSD) would turn fp32's
~1e-7 rounding of the logits into an unbounded relative error.

Backends under test: ``BACKENDS`` (the linear API's op backends); a Triton backend is added by appending its
name (its tests then run under TRITON_INTERPRET=1 on CPU).
"""
from __future__ import annotations

import math

import pytest
import torch

from objective_cases import (
    OBJECTIVE_CASES, SMOKE_CASES, STUDENT_LEAVES, api_inputs, linear_ground_truth, make_objective_inputs,
    objective_ground_truth, teacher_probabilities,
)
from rklu.kernels import (
    FusedLinearUnlearningKL, fused_linear_unlearning_kl, unlearning_kl_from_logits,
    unlearning_kl_reference,
)
from rklu.kernels.common import backends
from rklu.kernels.common import logit_transform as lt
from rklu.kernels.kl import objective_inputs as oi
from rklu.kernels.kl.chunk_math import uniform_shift as logit_uniform_shift
from rklu.kernels.kl.reference import edited_teacher_logits
from rklu.kernels.kl import uniform_shift
from rklu.kernels.kl.uniform_shift import shift_from_log_q

BACKENDS = ["reference", "torch"]
ALPHA = 8.0


# ------------------------------------------------------------------------------------------------ helpers

def assert_close(got, want, unit, rtol, what):
    """||got - want|| <= rtol * (||want|| + ||unit||), norm-wise over the whole tensor."""
    err = float((got.detach().double().cpu() - want).norm())
    bound = rtol * (float(want.norm()) + float(unit.norm()))
    assert err <= bound, f"{what}: error {err:.3e} > {bound:.3e} (||want|| = {float(want.norm()):.3e})"


def unit_scale(inputs, reduction="mean", upstream=None):
    """The NLL's loss and gradients on ``inputs``: the O(1) scale of the tolerances' floor."""
    return linear_ground_truth(inputs, alpha=ALPHA, reduction=reduction, upstream=upstream, divergence="forward",
                               teacher="labels")


def check_linear(backend, objective, augmented, *, dtype=torch.float32, rtol=1e-5, reduction="mean", v=37,
                 n=13, lead=None, **input_kwargs):
    inputs = make_objective_inputs(n, 16, v, teacher=objective["teacher"], augmented=augmented, dtype=dtype,
                                   bias=True, seed=v + n, lead=lead, **input_kwargs)
    upstream = None
    if reduction == "none":
        upstream = torch.rand(inputs["labels"].shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    loss = fused_linear_unlearning_kl(**api_inputs(inputs, objective["teacher"]), alpha=ALPHA, backend=backend,
                                      reduction=reduction, **objective)
    leaves = [inputs[k] for k in STUDENT_LEAVES]
    weighted = loss if upstream is None else (loss * upstream.to(loss.dtype)).sum()
    grads = torch.autograd.grad(weighted, leaves)
    want, want_grads = linear_ground_truth(inputs, alpha=ALPHA, reduction=reduction, upstream=upstream, **objective)
    unit, unit_grads = unit_scale(inputs, reduction, upstream)
    assert torch.isfinite(loss).all() and all(torch.isfinite(g).all() for g in grads)
    assert loss.shape == want.shape
    assert_close(loss, want, unit, rtol, "loss")
    for name, g in zip(STUDENT_LEAVES, grads):
        assert g.dtype == inputs[name].dtype
        assert_close(g, want_grads[name], unit_grads[name], rtol, f"d loss / d {name}")
    return inputs, loss, grads


# ------------------------------------------------------------------- values and gradients vs the truth

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective, augmented", OBJECTIVE_CASES)
def test_linear_fp32_matches_ground_truth(backend, objective, augmented):
    check_linear(backend, objective, augmented)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("reference", "torch")])
@pytest.mark.parametrize("objective, augmented", OBJECTIVE_CASES)
def test_linear_fp64_matches_ground_truth_exactly(backend, objective, augmented):
    check_linear(backend, objective, augmented, dtype=torch.float64, rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("objective, augmented", SMOKE_CASES)
def test_linear_reductions_odd_vocab(backend, reduction, objective, augmented):
    check_linear(backend, objective, augmented, reduction=reduction, v=130, lead=(2, 7))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective, augmented", SMOKE_CASES)
def test_linear_bf16_loose(backend, objective, augmented):
    check_linear(backend, objective, augmented, dtype=torch.bfloat16, rtol=3e-2, v=130)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective, augmented", SMOKE_CASES)
def test_linear_near_one_hot_and_peaked_labels(backend, objective, augmented):
    """Logits of spread 40 (near one-hot), half the labels at the teacher's argmax (Unilogit's q -> 1)."""
    check_linear(backend, objective, augmented, logit_std=40.0, peaked_fraction=0.5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective, augmented", SMOKE_CASES)
def test_linear_extreme_logits_stay_finite_and_as_exact_as_fp32(backend, objective, augmented):
    """A 1e4 offset on every logit and a spread of 1e4: fp32 logits themselves carry ~1e-3 of rounding, so the
    yardstick is the fp32 reference backend's distance to the float64 truth."""
    kwargs = dict(teacher=objective["teacher"], augmented=augmented, bias=True, offset=1e4, logit_std=1e4, seed=3)
    inputs = make_objective_inputs(9, 16, 37, **kwargs)
    loss = fused_linear_unlearning_kl(**api_inputs(inputs, objective["teacher"]), alpha=32.0, backend=backend,
                                      **objective)
    grads = torch.autograd.grad(loss, [inputs[k] for k in STUDENT_LEAVES])
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    want, want_grads = linear_ground_truth(inputs, alpha=32.0, **objective)
    plain_inputs = make_objective_inputs(9, 16, 37, **kwargs)
    plain = fused_linear_unlearning_kl(**api_inputs(plain_inputs, objective["teacher"]), alpha=32.0,
                                       backend="reference", **objective)
    plain_grads = torch.autograd.grad(plain, [plain_inputs[k] for k in STUDENT_LEAVES])
    unit, unit_grads = unit_scale(inputs)

    def err(a, b):
        return float((a.detach().double() - b).norm())
    assert err(loss, want) <= 2 * err(plain, want) + 1e-5 * (float(want.abs()) + float(unit.abs()))
    for name, g, p in zip(STUDENT_LEAVES, grads, plain_grads):
        bound = 2 * err(p, want_grads[name]) + 1e-5 * (float(want_grads[name].norm()) + float(unit_grads[name].norm()))
        assert err(g, want_grads[name]) <= bound, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective, augmented", SMOKE_CASES)
def test_linear_transforms_with_temperature(backend, objective, augmented):
    """Softcaps and scales on every model: the temperature folds into them exactly."""
    transforms = dict(student_scale=1.3, student_softcap=9.0, original_scale=0.8, original_softcap=7.0,
                      augmented_scale=1.1, augmented_softcap=None)
    inputs = make_objective_inputs(11, 16, 37, teacher=objective["teacher"], augmented=augmented, seed=9, bias=True)
    loss = fused_linear_unlearning_kl(**api_inputs(inputs, objective["teacher"]), alpha=ALPHA, backend=backend,
                                      **objective, **transforms)
    grads = torch.autograd.grad(loss, [inputs[k] for k in STUDENT_LEAVES])
    want, want_grads = linear_ground_truth(inputs, alpha=ALPHA, **objective, **transforms)
    unit, unit_grads = unit_scale(inputs)
    assert_close(loss, want, unit, 1e-5, "loss")
    for name, g in zip(STUDENT_LEAVES, grads):
        assert_close(g, want_grads[name], unit_grads[name], 1e-5, name)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("objective, augmented", OBJECTIVE_CASES)
def test_from_logits_fp32_matches_ground_truth(objective, augmented, reduction):
    check_from_logits(objective, augmented, reduction, torch.float32, 1e-5)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("objective, augmented", OBJECTIVE_CASES)
def test_from_logits_fp64_and_bf16_match_ground_truth(objective, augmented, dtype, rtol):
    check_from_logits(objective, augmented, "mean", dtype, rtol)


def check_from_logits(objective, augmented, reduction, dtype, rtol):
    gen = torch.Generator().manual_seed(11)
    v = 37 if reduction != "sum" else 130

    def logits():
        return (torch.randn(3, 5, v, generator=gen, dtype=torch.float64) * 4).to(dtype)
    zs = logits().requires_grad_()
    zo = logits() if objective["teacher"] == "models" else None
    za = logits() if augmented else None
    labels = torch.randint(0, v, (3, 5), generator=gen)
    labels[0, 1] = labels[2, 4] = -100
    loss = unlearning_kl_from_logits(zs, zo, za, alpha=ALPHA, labels=labels, reduction=reduction, chunk_tokens=4,
                                     **objective)
    upstream = torch.rand(3, 5, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(loss if reduction != "none" else (loss * upstream.to(loss.dtype)).sum(), zs)
    per_token, per_token_grad = objective_ground_truth(zs, zo, za, labels, ALPHA, **objective)
    unit_loss, unit_grad = objective_ground_truth(zs, None, None, labels, ALPHA, divergence="forward",
                                                  teacher="labels")
    counted = (labels != -100).sum()
    weights = {"mean": torch.full((3, 5), 1.0 / float(counted), dtype=torch.float64),
               "sum": torch.ones(3, 5, dtype=torch.float64), "none": upstream}[reduction]

    def reduce(t):
        return t if reduction == "none" else (t.sum() / counted if reduction == "mean" else t.sum())
    assert grad.dtype == dtype and torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert_close(loss, reduce(per_token), reduce(unit_loss), rtol, "loss")
    assert_close(grad, per_token_grad * weights[..., None], unit_grad * weights[..., None], rtol, "grad")


# --------------------------------------------------------------------------------- the reference itself

@pytest.mark.parametrize("objective, augmented", SMOKE_CASES)
def test_reference_matches_ground_truth_and_gradchecks_in_float64(objective, augmented):
    gen = torch.Generator().manual_seed(4)
    zs = torch.randn(5, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    zo = torch.randn(5, 11, generator=gen, dtype=torch.float64) if objective["teacher"] == "models" else None
    za = torch.randn(5, 11, generator=gen, dtype=torch.float64) if augmented else None
    labels = torch.tensor([3, -100, 0, 10, 7])

    def f(z):
        return unlearning_kl_reference(z, zo, za, alpha=ALPHA, labels=labels, reduction="none", **objective)
    want, want_grad = objective_ground_truth(zs, zo, za, labels, ALPHA, **objective)
    loss = f(zs)
    (grad,) = torch.autograd.grad(loss.sum(), zs)
    assert torch.allclose(loss, want, rtol=1e-12, atol=1e-14)
    assert torch.allclose(grad, want_grad, rtol=1e-10, atol=1e-12)
    if objective["teacher"] != "self":  # a self teacher follows the student: its loss is not a function of z alone
        assert torch.autograd.gradcheck(lambda z: f(z).sum(), (zs,))


@pytest.mark.parametrize("divergence, beta", [("reverse", 0.5), ("forward", 0.5), ("jsd", 0.3), ("jsd", 0.5),
                                              ("jsd", 0.0), ("jsd", 1.0), ("argmax_ce", 0.5)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_reference_every_divergence(divergence, beta, reduction):
    gen = torch.Generator().manual_seed(6)
    zs = torch.randn(4, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    zo, za = torch.randn(2, 4, 9, generator=gen, dtype=torch.float64).unbind(0)
    labels = torch.tensor([1, -100, 3, 8])
    assert torch.autograd.gradcheck(lambda z: unlearning_kl_reference(
        z, zo, za, labels=labels, reduction=reduction, divergence=divergence, jsd_beta=beta, temperature=1.7), (zs,))


@pytest.mark.parametrize("divergence", ["forward", "jsd"])
def test_gradcheck_reference_with_zero_teacher_probabilities(divergence):
    """-inf teacher logits (labels teacher, exclude edit): finite values and gradients, no NaN."""
    gen = torch.Generator().manual_seed(8)
    zs = torch.randn(4, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, -100, 3, 8])
    for kwargs in (dict(teacher="labels"), dict(teacher="self", target_edit="exclude")):
        assert torch.autograd.gradcheck(lambda z: unlearning_kl_reference(
            z, labels=labels, divergence=divergence, **kwargs), (zs,))


# --------------------------------------------------------------------------------- the edits themselves

def test_uniform_edit_gives_one_over_v_on_every_teacher():
    gen = torch.Generator().manual_seed(2)
    v = 37
    zo = torch.randn(6, v, generator=gen, dtype=torch.float64) * 6
    labels = torch.tensor([0, 5, 36, -100, 9, 12])
    labels_counted = labels[labels != -100]
    zo[1, 5] = 80.0  # a teacher all but one-hot on its label
    expected = torch.full((5,), 1.0 / v, dtype=torch.float64)
    # the ground truth's
    p_truth = teacher_probabilities(zo, zo, None, labels, ALPHA, target_edit="uniform")
    assert torch.allclose(p_truth[labels != -100, labels_counted], expected, rtol=1e-12)
    # the reference's and chunk math's (exact, from the teacher logits)
    counted = zo[labels != -100]
    edited = edited_teacher_logits(counted, "models", labels_counted, logit_uniform_shift(counted, labels_counted))
    assert torch.allclose(torch.softmax(edited, -1)[torch.arange(5), labels_counted], expected, rtol=1e-12)
    # the linear API's (uniform_shift.py), on fp32 logits: token n's hidden state is e_n, its logits w @ e_n
    w = counted.float().T.contiguous()
    shift = uniform_shift.uniform_target_shift(torch.eye(5), w, None, labels_counted, lt.IDENTITY, kl_backend="torch")
    edited = edited_teacher_logits(counted, "models", labels_counted, shift.double())
    p_y = torch.softmax(edited, -1)[torch.arange(5), labels_counted]
    assert torch.allclose(p_y, expected, rtol=1e-4)


def test_uniform_shift_stays_finite_when_the_teacher_is_one_hot_on_the_label():
    log_q = torch.tensor([0.0, -1e-30, -1e-3, -5.0])
    shift = shift_from_log_q(log_q, 1000)
    assert torch.isfinite(shift).all()
    assert shift[2] == pytest.approx(math.log(999) + (-1e-3) - math.log(-math.expm1(-1e-3)), rel=1e-5)
    # q -> 1 through the whole API: the loss stays finite
    inputs = make_objective_inputs(7, 16, 37, logit_std=1e4, peaked_fraction=1.0, masked_fraction=0.0, seed=1)
    for backend in BACKENDS:
        loss = fused_linear_unlearning_kl(**inputs, backend=backend, divergence="forward", target_edit="uniform")
        assert torch.isfinite(loss)


def test_exclude_edit_zeroes_the_target_probability():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(4, 13, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 12, 5, -100])
    p = teacher_probabilities(z, z, None, labels, ALPHA, target_edit="exclude")
    assert (p[torch.arange(3), labels[:3]] == 0).all()
    edited = edited_teacher_logits(z[:3], "models", labels[:3], torch.full((3,), math.inf, dtype=torch.float64))
    assert (torch.softmax(edited, -1)[torch.arange(3), labels[:3]] == 0).all()
    # argmax_ce with the excluded label never targets it, even where it was the argmax
    z[0, 0] = 50.0
    loss = unlearning_kl_reference(z, z.clone(), labels=labels, divergence="argmax_ce", target_edit="exclude",
                                   reduction="none")
    second = z[0, 1:].argmax() + 1
    assert loss[0].item() == pytest.approx(-torch.log_softmax(z[0], -1)[second].item(), rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_argmax_ties_go_to_the_lowest_index(backend):
    v, h = 19, 8
    inputs = make_objective_inputs(5, h, v, masked_fraction=0.0, bias=True, seed=2)
    with torch.no_grad():
        inputs["original_weight"][11] = inputs["original_weight"][4]  # rows 4 and 11: identical logits
        inputs["original_bias"][11] = inputs["original_bias"][4] = 1e3  # ... and the largest
    loss = fused_linear_unlearning_kl(**inputs, backend=backend, divergence="argmax_ce", reduction="none")
    student = (inputs["student_hidden"] @ inputs["student_weight"].T + inputs["student_bias"]).detach()
    assert torch.allclose(loss, -torch.log_softmax(student, -1)[:, 4], rtol=1e-5)
    z = torch.tensor([[0.0, 3.0, 1.0, 3.0]])
    for fn in (unlearning_kl_reference, unlearning_kl_from_logits):
        got = fn(torch.zeros(1, 4), z, divergence="argmax_ce", reduction="none")
        assert got.item() == pytest.approx(math.log(4.0))
        s = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
        got = fn(s, z, divergence="argmax_ce", reduction="none")
        assert got.item() == pytest.approx(-torch.log_softmax(s, -1)[0, 1].item())


# ------------------------------------------------------------------------------ defaults and plumbing

@pytest.mark.parametrize("backend", BACKENDS)
def test_default_objective_is_bitwise_the_old_call(backend):
    inputs = make_objective_inputs(9, 16, 37, augmented=True, bias=True, seed=4)
    for direction in ("reverse", "forward"):
        old = fused_linear_unlearning_kl(**inputs, backend=backend, direction=direction, reduction="none")
        new = fused_linear_unlearning_kl(**inputs, backend=backend, direction=direction, reduction="none",
                                         divergence=direction, jsd_beta=0.5, teacher="models", target_edit="none",
                                         target_shift=0.0, temperature=1.0)
        jsd_end = fused_linear_unlearning_kl(**inputs, backend=backend, reduction="none", divergence="jsd",
                                             jsd_beta=0.0 if direction == "forward" else 1.0)
        assert torch.equal(old, new) and torch.equal(old, jsd_end)


def test_default_objective_passes_no_new_kwargs_to_the_backend(monkeypatch):
    """Backends not yet extended keep working for the default objective; a new one gets every kwarg."""
    seen = []
    fn = backends.function("kl", "torch")

    def spy(*args, **kwargs):
        seen.append(set(kwargs))
        return fn(*args, **kwargs)
    monkeypatch.setattr(backends, "function", lambda op, name: spy)
    inputs = make_objective_inputs(5, 8, 11, seed=1)
    fused_linear_unlearning_kl(**inputs, backend="torch")
    fused_linear_unlearning_kl(**inputs, backend="torch", divergence="jsd")
    new = {"teacher_source", "jsd_beta", "targets", "target_shift"}
    assert not (seen[0] & new) and new <= seen[1]


def test_self_teacher_reads_no_original_model_in_the_torch_backend():
    """xo, wo, bo may be anything for the self / labels teachers: the torch op reuses the student's logits."""
    from rklu.kernels.kl.torch_chunked import unlearning_kl

    gen = torch.Generator().manual_seed(0)
    xs, ws = torch.randn(6, 8, generator=gen), torch.randn(11, 8, generator=gen)
    junk_x, junk_w = torch.full((6, 8), math.nan), torch.full((11, 8), math.nan)
    targets = torch.tensor([0, 3, 10, 4, 4, 1])
    common = dict(alpha=ALPHA, direction="forward", grad_in_forward=True, chunk_tokens=4, grad_filter=None,
                  transforms=(lt.IDENTITY,) * 3, targets=targets)
    for source, shift in (("self", torch.full((6,), math.inf)), ("labels", None)):
        loss = unlearning_kl(xs, ws, None, junk_x, junk_w, None, None, None, None, teacher_source=source,
                             target_shift=shift, **common)
        want = unlearning_kl(xs, ws, None, xs, ws, None, None, None, None, teacher_source=source,
                             target_shift=shift, **common)
        assert torch.isfinite(loss).all() and torch.equal(loss, want)
        assert (loss > 0).all()


def test_module_form_takes_the_objective():
    inputs = make_objective_inputs(7, 16, 37, teacher="self", seed=2)
    module = FusedLinearUnlearningKL(divergence="forward", teacher="self", target_edit="exclude", backend="torch",
                                     temperature=2.0)
    got = module(inputs["student_hidden"], inputs["student_weight"], labels=inputs["labels"])
    want = fused_linear_unlearning_kl(inputs["student_hidden"], inputs["student_weight"], labels=inputs["labels"],
                                      divergence="forward", teacher="self", target_edit="exclude", backend="torch",
                                      temperature=2.0)
    assert torch.equal(got, want)
    assert "teacher='self'" in repr(module) and "temperature=2.0" in repr(module)
    assert "teacher" not in repr(FusedLinearUnlearningKL())
    with pytest.raises(ValueError, match="reverse KL is infinite"):
        FusedLinearUnlearningKL(teacher="labels")


def test_temperature_folds_exactly_into_the_transforms():
    z = torch.linspace(-50, 50, 101, dtype=torch.float64)
    for transform in (lt.LogitTransform(1.3, 9.0), lt.LogitTransform(0.7, None), lt.IDENTITY):
        folded = lt.with_temperature(transform, 2.5)
        assert torch.allclose(lt.apply(z, folded), lt.apply(z, transform) / 2.5, rtol=1e-14, atol=1e-14)
    assert lt.with_temperature(lt.IDENTITY, 1.0) is lt.IDENTITY


# ------------------------------------------------------------------------------------------------ errors

INVALID = [
    (dict(target_edit="exclude"), False, "reverse KL is infinite"),
    (dict(teacher="labels", divergence="reverse"), False, "reverse KL is infinite"),
    (dict(teacher="labels", divergence="jsd", jsd_beta=1.0), False, "reverse KL is infinite"),
    (dict(teacher="self", target_edit="exclude", divergence="jsd", jsd_beta=1.0), False, "reverse KL is infinite"),
    (dict(teacher="labels", divergence="argmax_ce"), False, "plain NLL"),
    (dict(teacher="labels", divergence="forward", target_edit="subtract", target_shift=1.0), False, "no target edit"),
    (dict(teacher="self", divergence="forward"), True, "takes no augmented model"),
    (dict(divergence="forward", target_edit="uniform"), True, "takes no augmented model"),
    (dict(divergence="kl"), False, "unknown divergence"),
    (dict(teacher="oracle"), False, "unknown teacher source"),
    (dict(target_edit="flip"), False, "unknown target edit"),
    (dict(divergence="jsd", jsd_beta=1.5), False, "jsd_beta must be in"),
    (dict(temperature=0.0), False, "temperature must be"),
    (dict(temperature=math.inf), False, "temperature must be"),
    (dict(target_edit="subtract", target_shift=-1.0), False, "target_shift must be"),
    (dict(target_edit="subtract", target_shift=math.nan), False, "target_shift must be"),
    (dict(divergence="jsd", direction="forward"), False, "contradicts direction"),
]


def _linear_call(objective, augmented, labels=True, **overrides):
    """``labels``: True (random ones), False (None) or a tensor."""
    inputs = make_objective_inputs(5, 8, 11, augmented=augmented, seed=1)
    if isinstance(labels, torch.Tensor):
        inputs["labels"] = labels
    elif not labels:
        inputs["labels"] = None
    if objective.get("teacher", "models") != "models":
        inputs = {k: v for k, v in inputs.items() if not k.startswith("original_")}
    inputs.update(overrides)
    return lambda: fused_linear_unlearning_kl(**inputs, backend="torch", **objective)


def _logits_calls(objective, augmented, labels=True, **overrides):
    gen = torch.Generator().manual_seed(0)
    zs = torch.randn(5, 11, generator=gen)
    zo = torch.randn(5, 11, generator=gen) if objective.get("teacher", "models") == "models" else None
    if not isinstance(labels, torch.Tensor):
        labels = torch.tensor([1, 2, -100, 4, 10]) if labels else None
    args = dict(student_logits=zs, original_logits=zo, augmented_logits=torch.randn(5, 11, generator=gen)
                if augmented else None, labels=labels)
    args.update(overrides)
    return [lambda fn=fn: fn(**args, **objective) for fn in (unlearning_kl_reference, unlearning_kl_from_logits)]


@pytest.mark.parametrize("objective, augmented, message", INVALID)
def test_invalid_objectives_name_the_problem(objective, augmented, message):
    for call in [_linear_call(objective, augmented), *_logits_calls(objective, augmented)]:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("objective", [dict(target_edit="subtract", divergence="forward", target_shift=10.0),
                                       dict(teacher="labels", divergence="forward"),
                                       dict(target_edit="uniform")])
def test_target_edits_need_labels(objective):
    for call in [_linear_call(objective, False, labels=False), *_logits_calls(objective, False, labels=False)]:
        with pytest.raises(ValueError, match="need labels"):
            call()


@pytest.mark.parametrize("bad", [11, 400, -5])
@pytest.mark.parametrize("objective", [dict(target_edit="uniform"), dict(teacher="labels", divergence="jsd"),
                                       dict(target_edit="exclude", divergence="forward")])
def test_label_out_of_range_names_the_value(objective, bad):
    labels = torch.tensor([1, 2, -100, bad, 10])
    calls = [_linear_call(objective, False, **{"labels": labels}), *_logits_calls(objective, False, labels=labels)]
    for call in calls:
        with pytest.raises(ValueError, match=f"labels out of range: found {bad}"):
            call()
    # without a target edit the labels only mask: the same labels are fine
    fused_linear_unlearning_kl(**make_objective_inputs(5, 8, 11, seed=1) | dict(labels=labels), backend="torch")


def test_teacher_inputs_must_match_the_teacher_source():
    inputs = make_objective_inputs(5, 8, 11, seed=1, bias=True)
    with pytest.raises(ValueError, match="pass original_hidden, original_weight as None"):
        fused_linear_unlearning_kl(**inputs, backend="torch", teacher="self")
    without_bias_teacher = {k: v for k, v in inputs.items() if k not in ("original_hidden", "original_weight")}
    with pytest.raises(ValueError, match="pass original_bias as None"):
        fused_linear_unlearning_kl(**without_bias_teacher, backend="torch", teacher="self")
    with pytest.raises(ValueError, match="teacher='models' needs original_hidden"):
        fused_linear_unlearning_kl(inputs["student_hidden"], inputs["student_weight"], backend="torch")
    z = torch.randn(3, 11)
    for fn in (unlearning_kl_reference, unlearning_kl_from_logits):
        with pytest.raises(ValueError, match="pass original_logits as None"):
            fn(z, z, teacher="self")
        with pytest.raises(ValueError, match="teacher='models' needs original_logits"):
            fn(z)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_shift_is_exact_for_a_teacher_near_one_hot_on_the_label(backend):
    """q -> 1 (memorized forget tokens): fp32 log q cannot resolve 1 - q, so those tokens are recomputed from
    the logits; the shift then matches the float64 one and the edited teacher has p(y) = 1/V."""
    v = 37
    inputs = make_objective_inputs(16, 16, v, logit_std=40.0, peaked_fraction=0.7, masked_fraction=0.0, seed=2,
                                   bias=True)
    x, w, b, y = (inputs[k].detach() for k in ("original_hidden", "original_weight", "original_bias", "labels"))
    transform = lt.LogitTransform(0.5, None)
    got = uniform_shift.uniform_target_shift(x, w, b, y, transform, kl_backend=backend)
    teacher = torch.nn.functional.linear(x.double(), w.double(), b.double()) * 0.5
    want = logit_uniform_shift(teacher, y)
    assert (teacher.log_softmax(-1)[torch.arange(16), y] > uniform_shift.NEAR_ONE_LOG_Q).sum() >= 5
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-4)
    p_y = torch.softmax(edited_teacher_logits(teacher, "models", y, got.double()), -1)[torch.arange(16), y]
    assert torch.allclose(p_y, torch.full_like(p_y, 1.0 / v), rtol=1e-3)
