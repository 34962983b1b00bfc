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


def triton_param():
    devices = triton_devices()
    if devices:
        marks = [pytest.mark.gpu] if devices[0] == "cuda" else []
        return pytest.param(("triton", devices[0]), id=f"triton-{devices[0]}", marks=marks)
    return pytest.param(("triton", "cpu"), id="triton", marks=pytest.mark.skip(
        reason="Triton backend needs CUDA or TRITON_INTERPRET=1 (set by the README test command)"))


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


def fused_loss(inputs, backend, **kwargs):
    return fused_linear_unlearning_kl(**inputs, backend=backend, **kwargs)


def rel_err(actual, expected):
    """Norm-wise relative error ||actual - expected|| / ||expected||."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).norm() / expected.norm().clamp(min=1e-30))
