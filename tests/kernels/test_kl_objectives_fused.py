"""The fused Triton KL backend (rklu/kernels/kl/triton_fused/) on every KL objective: teacher source, target
shift, divergence (rklu/kernels/kl/objective.py), against the shared float64 ground truth
(objective_cases.py), through the backend's op function (the arguments the API hands a backend: counted
tokens, per-token targets and shifts, the temperature folded into the logit transforms).

The interpreter's default tiles cover a small vocabulary in one block and one split; these tests patch them to
16-wide tiles and 32-entry splits, so V = 37 / 130 spans several vocab blocks (the last partial) and several
splits, and N several row blocks (the last partial).
"""
from __future__ import annotations

import math

import pytest
import torch

from kernel_cases import rel_err, triton_device_param
from objective_cases import (IGNORE, OBJECTIVE_CASES, SMOKE_CASES, STUDENT_LEAVES, linear_ground_truth,
                             make_objective_inputs)
from rklu.kernels.common import logit_transform as lt
from rklu.kernels.kl.objective import KLObjective

DEVICE = triton_device_param()
ALPHA = 2.0


@pytest.fixture
def fused(monkeypatch):
    """The backend module with small tiles and splits (interpreter only: on CUDA the tuned tiles run)."""
    pytest.importorskip("triton")
    from rklu.kernels.kl import triton_fused
    from rklu.kernels.common.tiles import INTERPRET

    if INTERPRET:
        def small(kernel, dtype_name, softcap=False):
            blocks = dict(BLOCK_N=8, BLOCK_V=16, BLOCK_H=16, num_warps=4)
            return blocks if kernel.startswith("forward") else dict(blocks, BLOCK_HG=16)

        monkeypatch.setattr(triton_fused, "block_sizes", small)
        monkeypatch.setattr(triton_fused, "vocab_split_size", lambda n, v: 32)
    return triton_fused


def _teacher_logits(inputs, objective, temperature, transforms):
    """Each counted row's teacher logits before the target edit, float64 (for the uniform edit's shift)."""
    def logits(model):
        x, w, b = (inputs.get(f"{model}_{k}") for k in ("hidden", "weight", "bias"))
        z = x.detach().double() @ w.detach().double().T + (0 if b is None else b.detach().double())
        return z
    model = "original" if objective["teacher"] == "models" else "student"
    z = logits(model)
    return lt.apply(z, transforms[0 if model == "student" else 1]).double()


def op_call(fused, inputs, objective, augmented, *, grad_filter=True, softcap=None):
    """Per counted token loss [n] of the backend's op function, as the API would call it."""
    objective = dict(objective)
    temperature = objective.pop("temperature", 1.0)
    obj = KLObjective(**objective, temperature=temperature)
    labels = inputs["labels"]
    counted = labels != IGNORE
    teacher = obj.teacher

    def model_transform():
        if softcap is None:
            return lt.LogitTransform(1.0 / temperature)
        return lt.LogitTransform(1.0 / temperature, softcap / temperature)

    transforms = (model_transform(),) * 3
    xs = inputs["student_hidden"][counted]
    ws, bs = inputs["student_weight"], inputs.get("student_bias")
    if teacher == "models":
        xo, wo, bo = inputs["original_hidden"][counted], inputs["original_weight"], inputs.get("original_bias")
        xa = inputs["augmented_hidden"][counted] if augmented else None
        wa = inputs["augmented_weight"] if augmented else None
        ba = inputs.get("augmented_bias") if augmented else None
    else:
        xo, wo, bo = xs.detach(), ws.detach(), None if bs is None else bs.detach()
        xa = wa = ba = None
    targets = labels[counted]
    shift = None
    if obj.target_edit == "subtract":
        shift = torch.full(targets.shape, obj.target_shift, dtype=torch.float32)
    elif obj.target_edit == "exclude":
        shift = torch.full(targets.shape, math.inf, dtype=torch.float32)
    elif obj.target_edit == "uniform":
        t = _teacher_logits({k: (v[counted] if k.endswith("hidden") else v) for k, v in inputs.items()
                             if v is not None and k != "labels"}, objective, temperature, transforms)
        rows = torch.arange(t.shape[0])
        others = t.clone()
        others[rows, targets] = -math.inf
        shift = (t[rows, targets] - (torch.logsumexp(others, -1) - math.log(t.shape[1] - 1))).float()
    needs_targets = obj.teacher == "labels" or shift is not None
    return fused.unlearning_kl(
        xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha=ALPHA, direction=obj.kernel_divergence,
        grad_in_forward=False, chunk_tokens=None, grad_filter=grad_filter, transforms=transforms,
        teacher_source=teacher, jsd_beta=obj.jsd_beta, targets=targets if needs_targets else None,
        target_shift=shift), counted


def _check(fused, inputs, objective, augmented, *, loss_tol, grad_tol, seed=0, softcap=None, **call):
    per_token, counted = op_call(fused, inputs, objective, augmented, softcap=softcap, **call)
    upstream = torch.randn(counted.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    leaves = [inputs[k] for k in STUDENT_LEAVES if inputs.get(k) is not None]
    grads = torch.autograd.grad((per_token * upstream[counted].to(per_token.dtype)).sum(), leaves)
    extra = {} if softcap is None else dict(student_softcap=softcap, original_softcap=softcap,
                                            augmented_softcap=softcap)
    truth, truth_grads = linear_ground_truth(inputs, alpha=ALPHA, reduction="none", upstream=upstream,
                                             **objective, **extra)
    assert torch.isfinite(per_token).all()
    _assert_close(per_token, truth[counted], loss_tol, "loss", floor=1e-6 * per_token.numel() ** 0.5)
    for name, got in zip([k for k in STUDENT_LEAVES if inputs.get(k) is not None], grads):
        assert torch.isfinite(got).all(), name
        _assert_close(got, truth_grads[name], grad_tol, name)
    return per_token, grads


def _assert_close(got, want, tol, name, floor=1e-6):
    """||got - want|| <= tol ||want|| + floor: relative, with an absolute floor for a truth of 0 (the self
    teacher without an edit: the loss is 0 up to fp32 rounding of the forward KL's sums, the gradient 0)."""
    diff = float((got.detach().double().cpu() - want.detach().double().cpu()).norm())
    assert diff <= tol * float(want.detach().double().norm()) + floor, f"{name}: relative error {rel_err(got, want):.2e}"


def _inputs(objective, augmented, n=20, h=24, v=37, masked_fraction=0.25, **kwargs):
    return make_objective_inputs(n, h, v, teacher=objective["teacher"], augmented=augmented, bias=True,
                                 masked_fraction=masked_fraction, **kwargs)


@pytest.mark.parametrize("device", [DEVICE])
@pytest.mark.parametrize("objective,augmented", OBJECTIVE_CASES)
def test_every_objective_fp32(fused, device, objective, augmented, monkeypatch):
    """fp32, V = 37 (3 vocab blocks, 2 splits), filter on, atomic backward (the vocabulary walked through the
    sort permutation): loss and gradients of hidden states, weight and bias within 2e-5 of float64."""
    monkeypatch.setenv("RKLU_FUSED_BACKWARD", "atomic")
    _check(fused, _inputs(objective, augmented), objective, augmented, loss_tol=2e-5, grad_tol=2e-5)


# The smoke cases (every divergence with every teacher source and every edit), alternately with the filter on
# and off (the interpreter is slow; the fp32 test above runs every case with it on).
# Every other smoke case (CI time: each runs twice at V = 130 in the interpreter), the filter alternating; every
# objective case runs at small V in test_every_objective_fp32.
WIDE_CASES = [pytest.param(*p.values, grad_filter, id=f"{p.id}-{'filter' if grad_filter else 'no-filter'}")
              for i, p in enumerate(SMOKE_CASES[::2]) for grad_filter in [i % 2 == 0]]


@pytest.mark.parametrize("device", [DEVICE])
@pytest.mark.parametrize("objective,augmented,grad_filter", WIDE_CASES)
def test_objectives_wide_vocab_deterministic(fused, device, objective, augmented, grad_filter):
    """V = 130 (9 blocks, 5 splits), N = 24, under torch.use_deterministic_algorithms (the store-G backward,
    unsorted): correct, and bitwise the same on a second run."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [_check(fused, _inputs(objective, augmented, n=24, h=16, v=130, seed=3), objective, augmented,
                       loss_tol=2e-5, grad_tol=2e-5, grad_filter=grad_filter) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(previous)
    (loss_a, grads_a), (loss_b, grads_b) = runs
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.equal(a, b)


BF16_IDS = ("forward-models-subtract-T2", "forward-labels-none-T2", "reverse-self-none-T0.5",
            "jsd0.3-models-exclude-T2", "jsd0.5-labels-none-T2", "argmax_ce-models-uniform-T0.5",
            "forward-models-exclude-T2")


@pytest.mark.parametrize("device", [DEVICE])
@pytest.mark.parametrize("objective,augmented", [p for p in OBJECTIVE_CASES if p.id in BF16_IDS])
def test_objectives_bf16(fused, device, objective, augmented):
    """bf16 inputs (the truth from the same bf16 values in float64): logits accumulate in fp32, the gradient
    operand rounds to bf16 like eager autograd's."""
    inputs = _inputs(objective, augmented, dtype=torch.bfloat16)
    _check(fused, inputs, objective, augmented, loss_tol=1e-4, grad_tol=2e-2)


EXTREME_IDS = ("forward-models-exclude-T2", "jsd0.3-labels-none-T2", "jsd0.3-models-subtract-T2",
               "argmax_ce-self-none-T0.5", "forward-self-none-T1", "reverse-models-subtract-T0.5",
               "forward-models-uniform-T1")


@pytest.mark.parametrize("device", [DEVICE])
@pytest.mark.parametrize("objective,augmented", [p for p in OBJECTIVE_CASES if p.id in EXTREME_IDS])
@pytest.mark.parametrize("extreme", [dict(offset=1e4), dict(logit_std=300.0, peaked_fraction=0.5)],
                         ids=["offset1e4", "std300"])
def test_objectives_extreme_logits(fused, device, objective, augmented, extreme):
    """Every model's logits offset by 1e4 (softmax-invariant), or spread to std 300 (near one-hot rows, labels
    at the argmax for half the tokens): finite, and as accurate as fp32 logits allow (one ulp of 1e4 is 1e-3:
    the tolerance is the error of the materialized fp32 logits' exact loss, times 2, plus 1e-5)."""
    inputs = _inputs(objective, augmented, **extreme)
    per_token, counted = op_call(fused, inputs, objective, augmented)
    assert torch.isfinite(per_token).all()
    truth, _ = linear_ground_truth(inputs, alpha=ALPHA, reduction="none", **objective)
    fp32 = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in inputs.items()}
    # The fp32-rounded logits: the truth of rounded logits measures what fp32 itself loses here.
    rounded = _fp32_logit_truth(fp32, objective)
    # Rows near one-hot have losses near 0 (argmax_ce with the self teacher: log(1 + 1e-6)), whose fp32
    # normalizer keeps only absolute digits: the floor of 1e-6 per token.
    allowed = 2 * rel_err(rounded[counted], truth[counted]) + 1e-5
    _assert_close(per_token, truth[counted], allowed, "loss", floor=1e-6 * per_token.numel() ** 0.5)
    leaves = [inputs[k] for k in STUDENT_LEAVES if inputs.get(k) is not None]
    for g in torch.autograd.grad(per_token.sum(), leaves):
        assert torch.isfinite(g).all()


def _fp32_logit_truth(inputs, objective):
    from objective_cases import objective_ground_truth

    def logits(model):
        x, w, b = (inputs.get(f"{model}_{k}") for k in ("hidden", "weight", "bias"))
        if x is None:
            return None
        return x.float() @ w.float().T + (0 if b is None else b.float())

    teacher = objective["teacher"]
    zo = logits("original") if teacher == "models" else None
    za = logits("augmented") if teacher == "models" else None
    loss, _ = objective_ground_truth(logits("student"), zo, za, inputs["labels"], ALPHA, **objective)
    return loss


@pytest.mark.parametrize("device", [DEVICE])
@pytest.mark.parametrize("objective,augmented", [p for p in OBJECTIVE_CASES if p.id in (
    "forward-models-subtract-T2", "jsd0.3-models-exclude-T2", "argmax_ce-models-none-T2")])
def test_objectives_softcap(fused, device, objective, augmented):
    """A logit softcap (Gemma's) on every model, with the temperature folded into it."""
    _check(fused, _inputs(objective, augmented), objective, augmented, loss_tol=2e-5, grad_tol=2e-5,
           softcap=5.0)


@pytest.mark.parametrize("device", [DEVICE])
@pytest.mark.parametrize("backward", ["atomic", "store"])
def test_argmax_ties_take_the_lowest_column(fused, device, backward, monkeypatch):
    """The teacher's maximum shared by several columns, in different vocab blocks and splits, and (atomic
    backward: the sorted vocabulary) visited out of column order: the lowest column is the target."""
    monkeypatch.setenv("RKLU_FUSED_BACKWARD", backward)
    objective = dict(divergence="argmax_ce", jsd_beta=0.5, teacher="models", target_edit="none",
                     target_shift=0.0, temperature=1.0)
    inputs = _inputs(objective, False, n=16, v=130, masked_fraction=0.0)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        # A 4-wide teacher of 0/1 entries: every teacher logit is an exact integer in fp32 (whatever the
        # GEMM's order), and each of the 16 patterns of a weight row recurs ~8 times over the 130 columns, so
        # a row's maximum is shared by columns in several blocks and splits.
        inputs["original_hidden"] = torch.randint(0, 2, (16, 4), generator=gen).float()
        inputs["original_weight"] = torch.randint(0, 2, (130, 4), generator=gen).float()
        inputs["original_bias"] = torch.zeros(130)
    t = inputs["original_hidden"] @ inputs["original_weight"].T + inputs["original_bias"]
    rows_with_ties = int(((t == t.max(-1, keepdim=True).values).sum(-1) > 1).sum())
    assert rows_with_ties >= 12
    _check(fused, inputs, objective, False, loss_tol=2e-5, grad_tol=2e-5)


@pytest.mark.parametrize("device", [DEVICE])
@pytest.mark.parametrize("objective,augmented", [p for p in OBJECTIVE_CASES if p.id in (
    "jsd0.3-labels-none-T2", "forward-labels-none-T2", "forward-self-none-T1", "jsd0.5-models-none-T0.5")])
def test_filter_skips_cold_tiles_and_keeps_the_gradient(fused, device, objective, augmented, monkeypatch):
    """Peaked rows (logits std 40): the filter skips tiles (kept fraction < 1), the loss is unchanged, and the
    filtered gradients differ from the unfiltered ones by at most what the skipped entries can carry: each
    |d loss / d z_s| < eps = 2^-28 (fp32) times the temperature's chain factor 1/T, so
    |dX| <= eps/T sum_v |W[v]|, |dW| <= eps/T sum_n |X[n]|, |db| <= eps/T N (+ a few ulps of the result:
    the store backward, unsorted both ways, so every kept entry is bitwise the same and torch.mm sums them
    in the same order)."""
    monkeypatch.setenv("RKLU_FUSED_BACKWARD", "store")
    results = []
    for grad_filter in (True, False):
        inputs = _inputs(objective, augmented, v=130, logit_std=40.0, seed=7)
        loss, counted = op_call(fused, inputs, objective, augmented, grad_filter=grad_filter)
        leaves = [inputs[k] for k in STUDENT_LEAVES if inputs.get(k) is not None]
        results.append((loss, torch.autograd.grad(loss.sum(), leaves), fused.last_backward_tile_stats()))
    (loss_on, grads_on, stats_on), (loss_off, grads_off, stats_off) = results
    _assert_close(loss_on, loss_off, 1e-6, "loss", floor=1e-6 * loss_on.numel() ** 0.5)
    assert stats_off["fraction"] == 1.0
    assert stats_on["fraction"] < 1.0, stats_on
    eps = fused.filter_eps(torch.float32) / objective["temperature"]
    x = inputs["student_hidden"].detach()[counted].abs()
    w = inputs["student_weight"].detach().abs()
    bounds = (eps * w.sum(0).expand(counted.shape[0], -1) * counted[:, None], eps * x.sum(0).expand(w.shape[0], -1),
              torch.full((w.shape[0],), eps * int(counted.sum())))
    for on, off, bound in zip(grads_on, grads_off, bounds):
        excess = (on - off).abs() - (bound * 1.01 + 2.0 ** -21 * off.abs())
        assert (excess <= 0).all(), float(excess.max())


@pytest.mark.parametrize("device", [DEVICE])
def test_reference_logits_take_the_edit_and_stay_finite(fused, device):
    """The per-row reference of the reverse KL: the models' teacher takes the target edit where the reference
    column is the target (the unedited logit where the shift is +inf); the labels teacher 0; the self teacher
    the student's own, unedited."""
    from rklu.kernels.kl.triton_fused.forward import reference_logits

    g = torch.Generator().manual_seed(0)
    xs, ws = torch.randn(4, 8, generator=g), torch.randn(10, 8, generator=g)
    xo, wo = torch.randn(4, 8, generator=g), torch.randn(10, 8, generator=g)
    col = torch.tensor([2])
    targets = torch.tensor([2, 5, 2, 2])
    shift = torch.tensor([1.5, 1.5, math.inf, -2.0])
    ref = reference_logits(xs, ws, None, xo, wo, None, None, None, None, 0.0, col, teacher_source="models",
                           targets=targets, target_shift=shift)
    z, zo = xs @ ws[2], xo @ wo[2]
    assert torch.equal(ref[:, 0], z)
    assert torch.allclose(ref[:, 1], torch.stack([zo[0] - 1.5, zo[1], zo[2], zo[3] + 2.0]))
    own = reference_logits(xs, ws, None, xs, ws, None, None, None, None, 0.0, col, teacher_source="self",
                           targets=targets, target_shift=shift)
    assert torch.equal(own[:, 1], own[:, 0])
    labels = reference_logits(xs, ws, None, xs, ws, None, None, None, None, 0.0, col, teacher_source="labels",
                              targets=targets)
    assert torch.equal(labels[:, 1], torch.zeros(4))
