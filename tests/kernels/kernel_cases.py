"""Shared builders for the kernel tests: random student/teacher inputs and the float64 ground truth."""
from __future__ import annotations

import os

import pytest
import torch

from rklu.kernels import fused_linear_unlearning_kl, unlearning_kl_reference


def triton_devices() -> list:
    """Where the Triton backend can run here: CUDA, or CPU under TRITON_INTERPRET=1."""
    devices = []
    if os.environ.get("TRITON_INTERPRET") == "1":
        devices.append("cpu")
    elif torch.cuda.is_available():
        devices.append("cuda")
    return devices


def triton_device_param(backend: str = "triton"):
    """The device a Triton-based backend runs on here, as a pytest param (skipped where there is none)."""
    devices = triton_devices()
    if devices:
        marks = [pytest.mark.gpu] if devices[0] == "cuda" else []
        return pytest.param(devices[0], id=f"{backend}-{devices[0]}", marks=marks)
    return pytest.param("cpu", id=backend, marks=pytest.mark.skip(
        reason=f"{backend} backend needs CUDA or TRITON_INTERPRET=1 (set by the README test command)"))


def triton_param(backend: str = "triton"):
    """``(backend, device)`` for the backend_device-parametrized tests."""
    device = triton_device_param(backend)
    return pytest.param((backend, device.values[0]), id=device.id, marks=device.marks)


def make_inputs(n, h, v, *, dtype=torch.float32, device="cpu", augmented=True, bias=False, scale=1.0,
                masked_fraction=0.0, seed=0, lead=None):
    gen = torch.Generator().manual_seed(seed)
    shape = (n,) if lead is None else tuple(lead)

    def rand(*size, std=1.0):
        return (torch.randn(*size, generator=gen) * (scale * std)).to(device=device, dtype=dtype)

    # Weights scaled so logits have std ~4, as in trained LMs; `scale` stretches them for stress tests.
    w_std = 4.0 / h ** 0.5
    inputs = dict(
        student_hidden=rand(*shape, h).requires_grad_(), student_weight=rand(v, h, std=w_std).requires_grad_(),
        original_hidden=rand(*shape, h), original_weight=rand(v, h, std=w_std),
        augmented_hidden=rand(*shape, h) if augmented else None,
        augmented_weight=rand(v, h, std=w_std) if augmented else None,
    )
    if bias:
        inputs["student_bias"] = rand(v).requires_grad_()
        inputs["original_bias"] = rand(v)
    labels = torch.randint(0, v, shape, generator=gen)
    if masked_fraction:
        labels[torch.rand(shape, generator=gen) < masked_fraction] = -100
    inputs["labels"] = labels.to(device)
    return inputs


def student_params(inputs):
    return [inputs[k] for k in ("student_hidden", "student_weight", "student_bias") if k in inputs]


def reference_loss(inputs, *, dtype=torch.float64, **kwargs):
    """Loss and student gradients from materialized logits in ``dtype`` (autograd through the reference)."""
    def cast(t):
        return None if t is None else t.detach().to(dtype)

    xs = cast(inputs["student_hidden"]).requires_grad_()
    ws = cast(inputs["student_weight"]).requires_grad_()
    leaves = [xs, ws]
    student = xs @ ws.T
    if "student_bias" in inputs:
        bs = cast(inputs["student_bias"]).requires_grad_()
        leaves.append(bs)
        student = student + bs
    original = cast(inputs["original_hidden"]) @ cast(inputs["original_weight"]).T
    if "original_bias" in inputs:
        original = original + cast(inputs["original_bias"])
    augmented = None
    if inputs["augmented_hidden"] is not None:
        augmented = cast(inputs["augmented_hidden"]) @ cast(inputs["augmented_weight"]).T
    loss = unlearning_kl_reference(student, original, augmented, labels=inputs["labels"], **kwargs)
    return loss, leaves


# The per-model logit transforms (rklu/kernels/logit_transform.py): the checks below apply them to the truth and
# to eager's materialized logits as well as to the kernel under test.
TRANSFORM_KEYS = tuple(f"{m}_{k}" for m in ("student", "original", "augmented") for k in ("scale", "softcap"))


def transform_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k in TRANSFORM_KEYS}


def fused_loss(inputs, backend, **kwargs):
    return fused_linear_unlearning_kl(**inputs, backend=backend, **kwargs)


def rel_err(actual, expected):
    """Norm-wise relative error ||actual - expected|| / ||expected||."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).norm() / expected.norm().clamp(min=1e-30))


def assert_no_less_accurate_than_eager(got, want, eager):
    """The bf16 rule on one gradient: mean |ours - truth| <= mean |eager bf16 - truth| (+ 1e-4 of the truth's
    mean magnitude)."""
    ours = (got.double() - want).abs().mean().item()
    theirs = (eager.double() - want).abs().mean().item()
    assert ours <= theirs + 1e-4 * want.abs().mean().item(), f"mean abs error {ours:.3e} vs eager bf16 {theirs:.3e}"


def check_bf16_at_least_as_accurate_as_eager(backend, device, direction, **loss_kwargs):
    n, h, v = 33, 64, 2051
    inputs = make_inputs(n, h, v, dtype=torch.bfloat16, device=device, masked_fraction=0.2, seed=3)
    loss = fused_loss(inputs, backend, direction=direction, **loss_kwargs)
    grads = torch.autograd.grad(loss, student_params(inputs))
    truth, leaves = reference_loss(inputs, direction=direction, dtype=torch.float64, **transform_kwargs(loss_kwargs))
    truth_grads = torch.autograd.grad(truth, leaves)
    # Eager bf16: logits materialized in bf16 (what `F.linear` gives), then the same reference math.
    eager, eager_leaves = reference_loss(inputs, direction=direction, dtype=torch.bfloat16,
                                         **transform_kwargs(loss_kwargs))
    eager_grads = torch.autograd.grad(eager, eager_leaves)
    assert rel_err(loss, truth) <= 2e-2
    assert abs(loss.double() - truth).item() <= abs(eager.double() - truth).item() + 1e-3
    for got, want, baseline in zip(grads, truth_grads, eager_grads):
        assert got.dtype == torch.bfloat16
        assert rel_err(got, want) <= 2e-2
        assert_no_less_accurate_than_eager(got, want, baseline)


def check_extreme_logits_stay_finite_and_exact(backend, device, direction, **loss_kwargs):
    """Logits of magnitude ~1e4 (and a teacher pushed to ~-3e5 by alpha=32) must not overflow."""
    inputs = make_inputs(9, 16, 333, device=device, scale=50.0, seed=7)  # logits std ~ 4 * 2500 = 1e4
    loss = fused_loss(inputs, backend, direction=direction, alpha=32.0, **loss_kwargs)
    grads = torch.autograd.grad(loss, student_params(inputs))
    transforms = transform_kwargs(loss_kwargs)
    expected, leaves = reference_loss(inputs, direction=direction, alpha=32.0, **transforms)
    fp32, fp32_leaves = reference_loss(inputs, direction=direction, alpha=32.0, dtype=torch.float32, **transforms)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    # At this scale fp32 logits themselves carry ~1e-3 absolute rounding, so the yardstick is the fp32
    # materialized reference: the fused backends must be about as close to float64 as it is.
    assert rel_err(loss, expected) <= 2 * rel_err(fp32, expected) + 1e-6
    for got, want, plain in zip(grads, torch.autograd.grad(expected, leaves), torch.autograd.grad(fp32, fp32_leaves)):
        assert rel_err(got, want) <= 2 * rel_err(plain, want) + 1e-6
