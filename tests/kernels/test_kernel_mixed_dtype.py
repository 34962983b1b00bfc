"""A bf16 student with an fp32 teacher: no backend may round the teacher to bf16 silently.

The torch backend computes every model in fp32, the chunked backend runs each model's GEMM in its own dtype,
and the fused Triton kernel (one tl.dot mode for all its tiles) refuses the mix with an error naming the
dtypes; ``backend="auto"`` never sends such a call to it. The truth is float64 on the same (bf16 student,
fp32 teacher) inputs; "rounded" is the same loss with the teacher cast to bf16 first, what a one-dtype
kernel computes.
"""
import pytest
import torch

from kernel_cases import make_inputs, reference_loss, rel_err, student_params, triton_param
from rklu.kernels import fused_linear_unlearning_kl

TEACHER_KEYS = ("original_hidden", "original_weight", "augmented_hidden", "augmented_weight", "original_bias")


def _mixed_inputs(device):
    """bf16 student, fp32 teachers; logits of std ~16, where bf16 inputs move the loss by ~1e-2."""
    inputs = make_inputs(48, 64, 300, dtype=torch.float32, device=device, bias=True, seed=5, scale=2.0)
    for key in ("student_hidden", "student_weight", "student_bias"):
        inputs[key] = inputs[key].detach().to(torch.bfloat16).requires_grad_()
    return inputs


def _teacher_rounded(inputs):
    return {k: (t.to(torch.bfloat16) if k in TEACHER_KEYS and t is not None else t) for k, t in inputs.items()}


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("backend_device", [pytest.param(("torch", "cpu"), id="torch"), triton_param("chunked")])
def test_fp32_teacher_is_not_rounded(backend_device, direction):
    backend, device = backend_device
    inputs = _mixed_inputs(device)
    truth, leaves = reference_loss(inputs, direction=direction)
    truth_grads = torch.autograd.grad(truth, leaves)
    rounded_truth, _ = reference_loss(_teacher_rounded(inputs), direction=direction)
    loss = fused_linear_unlearning_kl(**inputs, direction=direction, backend=backend)
    grads = torch.autograd.grad(loss, student_params(inputs))
    # The loss is fp32: rounding the teacher moves it by ~1e-2, computing the teacher in fp32 leaves ~1e-6.
    assert abs(loss.item() - truth.item()) < abs(rounded_truth.item() - truth.item()) / 10
    # The bf16 gradients carry the backend's own rounding (the torch backend rounds dX/dW once; the chunked
    # one also rounds the gradient tile to bf16 before its GEMMs, as eager autograd does); the same backend
    # given the teacher in bf16 adds the teacher's rounding on top, and must be further off.
    rounded = _teacher_rounded(inputs)
    rounded_grads = torch.autograd.grad(
        fused_linear_unlearning_kl(**rounded, direction=direction, backend=backend), student_params(rounded))
    assert grads[0].dtype == torch.bfloat16
    for got, with_rounded_teacher, want in zip(grads, rounded_grads, truth_grads):
        assert rel_err(got, want) < min(5e-3, rel_err(with_rounded_teacher, want)), (
            rel_err(got, want), rel_err(with_rounded_teacher, want))


@pytest.mark.parametrize("backend_device", [triton_param("triton")])
def test_fused_triton_refuses_a_wider_teacher(backend_device):
    _, device = backend_device
    inputs = _mixed_inputs(device)
    with pytest.raises(ValueError, match=r"torch\.bfloat16.*original \(torch\.float32\).*augmented \(torch\.float32\)"):
        fused_linear_unlearning_kl(**inputs, backend="triton")
    # Cast by the caller: runs, and equals the reference on the rounded teacher.
    rounded = _teacher_rounded(inputs)
    loss = fused_linear_unlearning_kl(**rounded, backend="triton")
    want, _ = reference_loss(rounded)
    assert abs(loss.item() - want.item()) <= 1e-3 * abs(want.item())


def test_narrower_teacher_is_accepted():
    """An fp32 student with a bf16 teacher: upcasting the teacher is exact, nothing to refuse."""
    from rklu.kernels.common.validation import mixed_precision_teachers

    x32, w32 = torch.zeros(2, 4), torch.zeros(3, 4)
    x16, w16 = x32.bfloat16(), w32.bfloat16()
    assert mixed_precision_teachers(x32, w32, x16, w16) == []
    assert mixed_precision_teachers(x16, w16, x32, w32) == ["original (torch.float32)"]
    assert mixed_precision_teachers(x16, w16, x16, w16, x32, w16) == ["augmented (torch.float32)"]


def test_auto_never_sends_a_wider_teacher_to_the_fused_kernel(monkeypatch):
    """Where auto would pick the fused kernel (CUDA, no chunk fits), a wider teacher goes to torch instead."""
    from rklu.kernels.kl import api as interface

    inputs = _mixed_inputs("cpu")
    want = interface.fused_linear_unlearning_kl(**inputs, backend="torch")
    monkeypatch.setattr(interface, "resolve_backend", lambda backend, device, problem=None: "triton")
    loss = interface.fused_linear_unlearning_kl(**inputs, backend="auto")
    assert torch.equal(loss, want)
