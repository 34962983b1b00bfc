"""backend="chunked" on every KL objective (rklu/kernels/kl/objective.py: teacher source, target edit,
divergence, temperature) against objective_cases' float64 ground truth.

The op function (``triton_chunked.unlearning_kl``) is called the way the contract says the API calls it:
counted rows only, a "self" / "labels" teacher given the student's tensors, the temperature folded into every
model's logit transform, jsd at beta 0 / 1 as the forward / reverse KL, and each target edit as ``targets``
plus a per-token ``target_shift`` (+inf for "exclude", t_y - (logsumexp_{i != y} t - log(V - 1)) for
"uniform"). Small row tiles (BLOCK_V = 16 over V = 37: three blocks, the last partial) so that the running
maxima, the teacher's -inf blocks and the argmax's ties cross block boundaries.

Runs through the Triton interpreter on CPU (TRITON_INTERPRET=1), on CUDA when present. fp32: <= 1e-5 relative
(norm-wise) for loss and gradients (hidden, weight, bias), except a self teacher with an edit (p_t and p_s differ
by O(p(y)), so the divergence and its gradient cancel to that order, as in a materialized fp32 evaluation): 3e-5,
and the uniform edit at logits offset by 1e4 (the edited logit is a new fp32 number there): 1e-4; a zero truth
(self teacher, no edit) comes out zero up to 1e-6. bf16 inputs: 2e-2 against the truth of the same bf16 values.
"""
import math

import pytest
import torch

from kernel_cases import triton_device_param
from objective_cases import (
    CASES, IGNORE, OBJECTIVE_CASES, SMOKE_CASES, STUDENT_LEAVES, api_inputs, linear_ground_truth,
    make_objective_inputs, objective_ground_truth,
)
from rklu.kernels import fused_linear_unlearning_kl
from rklu.kernels.common.logit_transform import LogitTransform
from rklu.kernels.kl import chunk_row_kernel
from rklu.kernels.kl.objective import KLObjective
from rklu.kernels.kl.triton_chunked import unlearning_kl

DEVICE = [triton_device_param("chunked")]
SMALL_TILES = dict(BLOCK_N=4, BLOCK_V=16, num_warps=4)


@pytest.fixture
def small_tiles(monkeypatch):
    """Several vocabulary blocks per row and several row programs per chunk (no effect with autotuning)."""
    monkeypatch.setattr(chunk_row_kernel, "block_sizes", lambda: dict(SMALL_TILES))


def _teacher_logits(inputs, objective, counted, transform):
    """The teacher's logits before the edit, over the counted rows, in float64 (the uniform shift's input):
    the original's, or the student's after its transform (scale, softcap)."""
    def logits(model):
        x, w = inputs[f"{model}_hidden"].detach().double()[counted], inputs[f"{model}_weight"].detach().double()
        b = inputs.get(f"{model}_bias")
        return x @ w.T + (0.0 if b is None else b.detach().double())
    if objective["teacher"] == "models":
        t = logits("original")
    else:
        scale, softcap = transform if transform is not None else (1.0, None)
        t = logits("student") * scale
        if softcap is not None:
            t = softcap * torch.tanh(t / softcap)
    return t / objective["temperature"]


def op_call(inputs, objective, *, grad_in_forward=True, chunk_tokens=5, transform=None):
    """The chunked op on the counted rows of ``inputs`` as kl/api.py passes them: per-token loss [counted]."""
    labels = inputs["labels"]
    counted = labels != IGNORE
    kernel = KLObjective(**objective)
    temperature = objective["temperature"]
    scale, softcap = transform if transform is not None else (1.0, None)
    student_t = LogitTransform(scale / temperature, None if softcap is None else softcap / temperature)
    xs, ws, bs = inputs["student_hidden"][counted], inputs["student_weight"], inputs.get("student_bias")
    if objective["teacher"] == "models":
        xo, wo, bo = inputs["original_hidden"].detach()[counted], inputs["original_weight"], inputs.get("original_bias")
        teacher_t = LogitTransform(1.0 / temperature)
    else:
        xo, wo, bo = xs.detach(), ws.detach(), None if bs is None else bs.detach()
        teacher_t = student_t
    xa = wa = ba = None
    if "augmented_hidden" in inputs:
        xa, wa, ba = inputs["augmented_hidden"].detach()[counted], inputs["augmented_weight"], inputs.get("augmented_bias")
    y = labels[counted]
    edit = objective["target_edit"]
    shift = None
    if edit == "subtract":
        shift = torch.full(y.shape, objective["target_shift"], dtype=torch.float32)
    elif edit == "exclude":
        shift = torch.full(y.shape, math.inf, dtype=torch.float32)
    elif edit == "uniform":
        t = _teacher_logits(inputs, objective, counted, transform)
        rows = torch.arange(t.shape[0])
        others = t.clone()
        others[rows, y] = -math.inf
        shift = (t[rows, y] - (torch.logsumexp(others, -1) - math.log(t.shape[1] - 1))).float()
    targets = y if (objective["teacher"] == "labels" or shift is not None) else None
    device = xs.device
    return unlearning_kl(
        xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha=8.0, direction=kernel.kernel_divergence,
        grad_in_forward=grad_in_forward, chunk_tokens=chunk_tokens, grad_filter=None,
        transforms=(student_t, teacher_t, LogitTransform(1.0 / temperature)), teacher_source=objective["teacher"],
        jsd_beta=objective["jsd_beta"], targets=None if targets is None else targets.to(device),
        target_shift=None if shift is None else shift.to(device))


def _close(got, want, rtol):
    """(ok, relative error): norm-wise within ``rtol``; a zero truth (a self teacher without an edit: the
    divergence of a distribution from itself) must come out zero up to fp32 rounding."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    err, norm = float((got - want).norm()), float(want.norm())
    if norm <= 1e-12:
        return err <= 1e-6, err
    return err <= rtol * norm, err / norm


def check_case(objective, augmented, device, *, dtype=torch.float32, grad_in_forward=True, n=12, h=16, v=37,
               rtol=1e-5, seed=0, transform=None, **make):
    inputs = make_objective_inputs(n, h, v, teacher=objective["teacher"], augmented=augmented, dtype=dtype,
                                   device=device, bias=True, seed=seed, **make)
    counted = (inputs["labels"] != IGNORE).cpu()
    upstream = (torch.ones(n, dtype=torch.float64) if grad_in_forward
                else torch.randn(n, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64))
    out = op_call(inputs, objective, grad_in_forward=grad_in_forward, transform=transform)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    leaves = [inputs[k] for k in STUDENT_LEAVES]
    grads = torch.autograd.grad((out * upstream[counted].to(device=out.device, dtype=out.dtype)).sum(), leaves)
    transforms = {} if transform is None else dict(student_scale=transform[0], student_softcap=transform[1])
    truth, truth_grads = linear_ground_truth(inputs, reduction="none", upstream=upstream, **objective, **transforms)
    if dtype == torch.float32 and objective["teacher"] == "self" and objective["target_edit"] != "none":
        # p_t and p_s differ by an edit of order p(y): the divergence and p_s - p_t (or g - E_ps[g]) cancel
        # to that order, as they do in a materialized fp32 evaluation (measured: 2x its error at most).
        rtol = max(rtol, 3e-5)
    loss_rtol = rtol
    ok, err = _close(out, truth[counted], loss_rtol)
    assert ok, f"loss rel err {err:.2e}"
    for name, got in zip(STUDENT_LEAVES, grads):
        assert torch.isfinite(got).all(), name
        ok, err = _close(got, truth_grads[name], rtol)
        assert ok, f"d{name} rel err {err:.2e}"


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("objective,augmented", OBJECTIVE_CASES)
def test_fp32_every_objective(device, objective, augmented, small_tiles):
    check_case(objective, augmented, device)


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("objective,augmented", SMOKE_CASES)
def test_fp32_reduction_none_recomputes_with_token_weights(device, objective, augmented, small_tiles):
    check_case(objective, augmented, device, grad_in_forward=False, seed=3)


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("objective,augmented", SMOKE_CASES)
def test_bf16_inputs(device, objective, augmented, small_tiles):
    check_case(objective, augmented, device, dtype=torch.bfloat16, rtol=2e-2, seed=5)


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("case", ["forward-self-exclude-T1", "jsd0.3-self-uniform-T0.5", "argmax_ce-self-subtract-T1",
                                  "reverse-self-subtract-T1"])
def test_self_teacher_is_the_transformed_student(device, case, small_tiles):
    """A self teacher is the student's logits after its transform (scale and softcap), reused from its tile."""
    objective, augmented = CASES[case]
    check_case(objective, augmented, device, transform=(1.5, 3.0), seed=9)


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("objective,augmented", [p for p in SMOKE_CASES if "T1" in p.id][:8])
def test_one_block_per_row(device, objective, augmented):
    """The interpreter's default tiles: the whole vocabulary (V = 130) in one block, 32 rows per program."""
    check_case(objective, augmented, device, n=20, v=130, seed=2)


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("objective,augmented", [p for p in SMOKE_CASES if p.id.endswith("T1")][:6])
def test_extreme_logits(device, objective, augmented, small_tiles):
    """Logits of spread 1e3 on an offset of 1e4 (near one-hot distributions): finite and exact. The uniform
    edit writes t_y - shift, a new fp32 number at |t| ~ 1e4 (ulp 1e-3): p_t(y) is 1/V to ~1e-3 relative."""
    rtol = 1e-4 if objective["target_edit"] == "uniform" else 1e-5
    check_case(objective, augmented, device, logit_std=1e3, offset=1e4, seed=4, peaked_fraction=0.3, rtol=rtol)


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("objective,augmented", SMOKE_CASES)
def test_public_api(device, reduction, objective, augmented, small_tiles):
    """Through ``fused_linear_unlearning_kl(backend="chunked")``: [2, 7] tokens, a quarter of them masked
    (-100), the API's own uniform shift and temperature folding, both gradient paths."""
    inputs = make_objective_inputs(14, 16, 37, teacher=objective["teacher"], augmented=augmented, device=device,
                                   bias=True, seed=6, lead=(2, 7))
    upstream = None
    if reduction == "none":
        upstream = torch.rand((2, 7), generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    loss = fused_linear_unlearning_kl(**api_inputs(inputs, objective["teacher"]), alpha=8.0, backend="chunked",
                                      reduction=reduction, chunk_tokens=4, **objective)
    weighted = loss if upstream is None else (loss * upstream.to(device=loss.device, dtype=loss.dtype)).sum()
    grads = torch.autograd.grad(weighted, [inputs[k] for k in STUDENT_LEAVES])
    want, want_grads = linear_ground_truth(inputs, alpha=8.0, reduction=reduction, upstream=upstream, **objective)
    rtol = 3e-5 if objective["teacher"] == "self" and objective["target_edit"] != "none" else 1e-5
    assert loss.shape == want.shape
    ok, err = _close(loss, want, rtol)
    assert ok, f"loss rel err {err:.2e}"
    for name, got in zip(STUDENT_LEAVES, grads):
        ok, err = _close(got, want_grads[name], rtol)
        assert ok, f"d{name} rel err {err:.2e}"


def _bias_teacher_inputs(n, h, v, teacher_bias, device):
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(n, h, generator=gen).to(device).requires_grad_()
    ws = torch.randn(v, h, generator=gen).to(device).requires_grad_()
    return xs, ws, torch.zeros(n, h, device=device), torch.zeros(v, h, device=device), teacher_bias.to(device)


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("maxima,expected", [((5, 20, 21), 5), ((20, 21), 20), ((36, 3), 3)],
                         ids=["tie-across-blocks", "tie-in-a-block", "tie-last-column"])
def test_argmax_ties_take_the_lowest_index(device, maxima, expected, small_tiles):
    n, h, v = 6, 8, 37
    teacher_bias = torch.linspace(-1, 1, v)
    teacher_bias[list(maxima)] = 3.0
    xs, ws, xo, wo, bo = _bias_teacher_inputs(n, h, v, teacher_bias, device)
    out = unlearning_kl(xs, ws, None, xo, wo, bo, None, None, None, alpha=8.0, direction="argmax_ce",
                        grad_in_forward=True, chunk_tokens=4, grad_filter=None)
    want = -torch.log_softmax((xs @ ws.T).double(), -1)[:, expected]
    assert _close(out, want, 1e-6)[0]


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("divergence", ["forward", "jsd", "argmax_ce"])
@pytest.mark.parametrize("teacher", ["models", "self", "labels"])
def test_target_alone_in_the_last_block(device, divergence, teacher, small_tiles):
    """V = 33 with 16-column blocks: the last block holds one column, the target. A one-hot teacher has -inf
    everywhere before it; an excluded target makes that block all -inf. Both stay finite and exact."""
    if teacher == "labels" and divergence == "argmax_ce":
        pytest.skip("the API refuses a one-hot teacher's argmax CE (the plain NLL)")
    n, h, v = 9, 8, 33
    gen = torch.Generator().manual_seed(2)
    xs = torch.randn(n, h, generator=gen).to(device).requires_grad_()
    ws = (torch.randn(v, h, generator=gen) * 0.7).to(device).requires_grad_()
    xo, wo = torch.randn(n, h, generator=gen).to(device), torch.randn(v, h, generator=gen).to(device)
    y = torch.full((n,), v - 1, dtype=torch.int64)
    y[::3] = 0
    shift = None if teacher == "labels" else torch.full((n,), math.inf)
    if teacher != "models":
        xo, wo = xs.detach(), ws.detach()
    out = unlearning_kl(xs, ws, None, xo, wo, None, None, None, None, alpha=8.0, direction=divergence,
                        grad_in_forward=True, chunk_tokens=4, grad_filter=None, teacher_source=teacher, jsd_beta=0.3,
                        targets=y.to(device), target_shift=None if shift is None else shift.to(device))
    grads = torch.autograd.grad(out.sum(), (xs, ws))
    zs = (xs @ ws.T).detach()
    zo = (xo @ wo.T) if teacher == "models" else None
    labels = y.to(device)
    edit = "none" if teacher == "labels" else "exclude"
    loss, g = objective_ground_truth(zs, zo, None, labels, 8.0, divergence=divergence, jsd_beta=0.3, teacher=teacher,
                                     target_edit=edit)
    assert torch.isfinite(out).all() and all(torch.isfinite(x).all() for x in grads)
    assert _close(out, loss, 3e-5)[0], _close(out, loss, 3e-5)[1]
    want_dx = g @ ws.detach().double().cpu()
    assert _close(grads[0], want_dx, 1e-5)[0], _close(grads[0], want_dx, 1e-5)[1]


def test_missing_targets_is_a_clear_error():
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="need targets"):
        unlearning_kl(x, w, None, x, w, None, None, None, None, alpha=1.0, direction="forward", grad_in_forward=True,
                      chunk_tokens=None, grad_filter=None, teacher_source="labels")
    with pytest.raises(ValueError, match="unknown direction"):
        unlearning_kl(x, w, None, x, w, None, None, None, None, alpha=1.0, direction="kl", grad_in_forward=True,
                      chunk_tokens=None, grad_filter=None)
    with pytest.raises(ValueError, match="shape"):
        unlearning_kl(x, w, None, x, w, None, None, None, None, alpha=1.0, direction="forward", grad_in_forward=True,
                      chunk_tokens=None, grad_filter=None, targets=torch.zeros(2, dtype=torch.int64),
                      target_shift=torch.zeros(2))


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("case", ["forward-self-subtract-T2", "reverse-self-subtract-T1"])
def test_a_self_teacher_plans_one_logit_buffer(device, case, small_tiles):
    """A self teacher holds the student's logit buffer alone, and its plan counts just that: a budget of one
    128-token fp32 buffer plus a 256-row G gives 128/256 (counting a teacher buffer would leave G 128 rows), and
    the loss and gradients over its 300 tokens (logit chunks 128/128/44, G blocks 256/44) match the truth."""
    from rklu.kernels.kl.chunk_policy import working_set_bytes
    from rklu.kernels.kl.triton_chunked import last_chunk_plan

    objective, _ = CASES[case]
    n, v = 300, 37
    inputs = make_objective_inputs(n, 16, v, teacher="self", device=device, bias=True, seed=11, masked_fraction=0.0)
    budget = working_set_bytes(128, 256, v, 4, False, teacher_gemm=False)
    loss = fused_linear_unlearning_kl(**api_inputs(inputs, "self"), alpha=8.0, backend="chunked",
                                      max_chunk_bytes=budget, **objective)
    plan = last_chunk_plan()
    assert (plan.logit_tokens, plan.grad_tokens, plan.fits) == (128, 256, True)
    assert plan.working_set_bytes == budget
    grads = torch.autograd.grad(loss, [inputs[k] for k in STUDENT_LEAVES])
    want, want_grads = linear_ground_truth(inputs, alpha=8.0, **objective)
    ok, err = _close(loss, want, 3e-5)
    assert ok, f"loss rel err {err:.2e}"
    for name, got in zip(STUDENT_LEAVES, grads):
        ok, err = _close(got, want_grads[name], 3e-5)
        assert ok, f"d{name} rel err {err:.2e}"
