"""Edge cases every backend must get right: masks, extreme logits, alpha=0, autocast, accumulation,
deterministic mode, the module and the from-logits variant."""
import pytest
import torch

from kernel_cases import (
    check_extreme_logits_stay_finite_and_exact, fused_loss, make_inputs, reference_loss, rel_err, student_params,
    triton_param,
)
from rklu.kernels import FusedLinearUnlearningKL, unlearning_kl_from_logits, unlearning_kl_reference

BACKENDS = [pytest.param(("torch", "cpu"), id="torch"), triton_param()]


@pytest.mark.parametrize("backend_device", BACKENDS + [triton_param("chunked")])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_tokens_ignored_gives_zero_loss_and_zero_grads(backend_device, reduction):
    backend, device = backend_device
    inputs = make_inputs(6, 16, 100, device=device, bias=True)
    inputs["labels"] = torch.full((6,), -100, device=device)
    loss = fused_loss(inputs, backend, reduction=reduction)
    loss.sum().backward()
    assert torch.count_nonzero(loss) == 0 and torch.isfinite(loss).all()
    for p in student_params(inputs):
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_extreme_logits_stay_finite_and_exact(backend_device, direction):
    backend, device = backend_device
    check_extreme_logits_stay_finite_and_exact(backend, device, direction)


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_alpha_zero_equals_distillation_to_the_original(backend_device):
    backend, device = backend_device
    inputs = make_inputs(11, 16, 257, device=device)
    with_aug = fused_loss(inputs, backend, alpha=0.0)
    without = fused_loss({**inputs, "augmented_hidden": None, "augmented_weight": None}, backend)
    torch.testing.assert_close(with_aug, without, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_teacher_equal_to_student_gives_zero_loss_and_grad(backend_device, direction):
    backend, device = backend_device
    inputs = make_inputs(8, 16, 301, device=device, augmented=False)
    inputs["original_hidden"] = inputs["student_hidden"].detach().clone()
    inputs["original_weight"] = inputs["student_weight"].detach().clone()
    loss = fused_loss(inputs, backend, direction=direction)
    grads = torch.autograd.grad(loss, student_params(inputs))
    assert abs(loss.item()) <= 1e-6
    assert all(g.abs().max().item() <= 1e-6 for g in grads)


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_gradient_accumulation_and_no_grad_teachers(backend_device):
    backend, device = backend_device
    a = make_inputs(5, 16, 200, device=device, seed=1)
    b = make_inputs(5, 16, 200, device=device, seed=2)
    weight = a["student_weight"]
    with torch.no_grad():  # teachers computed without autograd, as in a training loop
        teacher_a = {k: a[k].clone() for k in ("original_hidden", "augmented_hidden")}
    fused_loss({**a, **teacher_a}, backend).backward()
    fused_loss({**b, "student_weight": weight}, backend).backward()
    ref_a, leaves_a = reference_loss(a)
    ref_b, leaves_b = reference_loss({**b, "student_weight": weight})
    expected = torch.autograd.grad(ref_a, leaves_a)[1] + torch.autograd.grad(ref_b, leaves_b)[1]
    assert rel_err(weight.grad, expected) <= 1e-5


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_autocast_keeps_logits_in_fp32(backend_device):
    backend, device = backend_device
    inputs = make_inputs(12, 32, 500, device=device, seed=4)
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = fused_loss(inputs, backend)
    grads = torch.autograd.grad(loss, student_params(inputs))
    expected, leaves = reference_loss(inputs)
    assert loss.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    # The torch backend ignores autocast (fp32 GEMMs); Triton uses bf16 GEMM operands like lm_head would.
    tol = 1e-5 if backend == "torch" else 2e-2
    assert rel_err(loss, expected) <= tol
    for got, want in zip(grads, torch.autograd.grad(expected, leaves)):
        assert rel_err(got, want) <= tol


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_deterministic_mode_is_bitwise_reproducible(backend_device):
    backend, device = backend_device
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            inputs = make_inputs(40, 24, 700, device=device, masked_fraction=0.2, bias=True, seed=9)
            loss = fused_loss(inputs, backend)
            runs.append([loss.detach()] + list(torch.autograd.grad(loss, student_params(inputs))))
    finally:
        torch.use_deterministic_algorithms(previous)
    for first, second in zip(*runs):
        assert torch.equal(first, second)


def test_module_wrapper_matches_function():
    inputs = make_inputs(10, 16, 128, seed=3)
    module = FusedLinearUnlearningKL(alpha=4.0, direction="forward", backend="torch")
    labels = inputs.pop("labels")
    assert "alpha=4.0" in repr(module)
    torch.testing.assert_close(module(**inputs, labels=labels),
                               fused_loss({**inputs, "labels": labels}, "torch", alpha=4.0, direction="forward"))


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_from_logits_matches_reference(direction, dtype):
    torch.manual_seed(0)
    student = (torch.randn(2, 9, 1001) * 3).to(dtype).requires_grad_()
    original, augmented = (torch.randn(2, 2, 9, 1001) * 3).to(dtype).unbind(0)
    labels = torch.randint(0, 5, (2, 9))
    labels[0, :3] = -100
    loss = unlearning_kl_from_logits(student, original, augmented, direction=direction, labels=labels, chunk_tokens=4)
    (grad,) = torch.autograd.grad(loss, student)
    s64 = student.detach().double().requires_grad_()
    expected = unlearning_kl_reference(s64, original.double(), augmented.double(), direction=direction, labels=labels)
    (expected_grad,) = torch.autograd.grad(expected, s64)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert grad.dtype == dtype
    assert rel_err(loss, expected) <= tol and rel_err(grad, expected_grad) <= tol
