"""backend="chunked" (rklu/kernels/triton_chunked.py: fp32-output GEMMs per token chunk, one Triton kernel for loss
and logit gradient, GEMMs for dX/dW) against the float64 reference, on the matrix the other backends pass.

Runs through the Triton interpreter on CPU (TRITON_INTERPRET=1), on CUDA when present. Small chunks force
several chunks per call. fp32 tolerance: the torch-GEMM paths' rule (<= 1e-5 or 2x the fp32 materialized
reference's own error, whichever is larger); bf16: <= 2e-2 and never less accurate than eager bf16.
"""
import pytest
import torch

from kernel_cases import (
    check_bf16_at_least_as_accurate_as_eager, check_extreme_logits_stay_finite_and_exact, fused_loss, make_inputs,
    reference_loss, rel_err, student_params, triton_device_param,
)
from rklu.kernels import resolve_backend


DEVICE = [triton_device_param("chunked")]
SHAPES = [(1, 32, 1000), (7, 48, 32003), (300, 40, 1000), (7, 16, 32000)]


def _check(device, shape, direction, augmented, masked, reduction="mean", bias=False, seed=0, chunk=64):
    n, h, v = shape
    inputs = make_inputs(n, h, v, device=device, augmented=augmented, bias=bias, masked_fraction=masked, seed=seed)
    weights = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    loss = fused_loss(inputs, "chunked", direction=direction, reduction=reduction, chunk_tokens=chunk)
    expected, leaves = reference_loss(inputs, direction=direction, reduction=reduction)
    fp32, fp32_leaves = reference_loss(inputs, direction=direction, reduction=reduction, dtype=torch.float32)

    def scalar(x):
        return (x * weights.to(x.dtype)).sum() if reduction == "none" else x
    grads = torch.autograd.grad(scalar(loss), student_params(inputs))
    expected_grads = torch.autograd.grad(scalar(expected), leaves)
    fp32_grads = torch.autograd.grad(scalar(fp32), fp32_leaves)
    assert loss.dtype == torch.float32
    assert rel_err(loss, expected) <= max(1e-5, 2 * rel_err(fp32, expected))
    for name, got, want, plain in zip(("hidden", "weight", "bias"), grads, expected_grads, fp32_grads):
        assert got.dtype == torch.float32
        assert rel_err(got, want) <= max(1e-5, 2 * rel_err(plain, want)), f"d{name} {rel_err(got, want):.2e}"


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}-H{}-V{}".format(*s))
@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("augmented", [True, False], ids=["aug", "no-aug"])
def test_fp32_values_and_grads(device, shape, direction, augmented):
    _check(device, shape, direction, augmented, masked=0.3 if shape[0] > 1 else 0.0)


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_reductions_and_bias(device, reduction, direction):
    _check(device, (29, 24, 517), direction, True, masked=0.25, reduction=reduction, bias=True, chunk=8)


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_bf16_at_least_as_accurate_as_eager(device, direction):
    check_bf16_at_least_as_accurate_as_eager("chunked", device, direction, chunk_tokens=16)


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_extreme_logits_stay_finite_and_exact(device, direction):
    check_extreme_logits_stay_finite_and_exact("chunked", device, direction, chunk_tokens=4)


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("offset", [1e2, 1e3, 1e4])
@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_common_teacher_offset_costs_no_accuracy(device, offset, direction):
    """A constant added to every teacher logit (softmax-invariant) must not cost accuracy: the statistics
    are accumulated relative to the running maxima, never as E[z_s - z_t] - (m_s - m_t)."""
    base = make_inputs(24, 32, 1000, device=device, bias=True, seed=11)
    base["augmented_bias"] = torch.zeros_like(base["original_bias"])
    # Original and augmented shifted together: l_aug - l_o, hence the teacher's softmax, is unchanged.
    inputs = {**base, "original_bias": base["original_bias"] + offset, "augmented_bias": base["augmented_bias"] + offset}
    loss = fused_loss(inputs, "chunked", direction=direction)
    torch_loss = fused_loss(inputs, "torch", direction=direction)
    truth, _ = reference_loss(base, direction=direction)
    # Yardstick: the torch backend (log_softmax on materialized fp32 chunks), whose error is the inputs'
    # own rounding at the offset's magnitude (ulp(1e4) = 1e-3 per logit): ~2e-4 at 1e4, ~1e-6 at 1e2.
    # Subtracting (m_s - m_t) from E[z_s - z_t] would add an offset-sized cancellation on top.
    assert abs(loss.item() - truth.item()) <= 2 * abs(torch_loss.item() - truth.item()) + 2e-6


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("hidden_sizes", [(24, 48), (48, 24)], ids=["teacher-larger", "teacher-smaller"])
@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_separate_hidden_sizes_per_model(device, hidden_sizes, direction):
    """Distilling from a larger or smaller model: each hidden state matches its own lm_head."""
    hs, ht = hidden_sizes
    n, v = 40, 300
    gen = torch.Generator().manual_seed(12)

    def rand(*size, std=1.0):
        return (torch.randn(*size, generator=gen) * std).to(device)
    inputs = dict(student_hidden=rand(n, hs).requires_grad_(), student_weight=rand(v, hs, std=4 / hs ** 0.5).requires_grad_(),
                  original_hidden=rand(n, ht), original_weight=rand(v, ht, std=4 / ht ** 0.5),
                  augmented_hidden=rand(n, ht), augmented_weight=rand(v, ht, std=4 / ht ** 0.5),
                  labels=torch.zeros(n, dtype=torch.long, device=device))
    loss = fused_loss(inputs, "chunked", direction=direction, chunk_tokens=16)
    grads = torch.autograd.grad(loss, student_params(inputs))
    expected, leaves = reference_loss(inputs, direction=direction)
    assert rel_err(loss, expected) <= 1e-5
    for got, want in zip(grads, torch.autograd.grad(expected, leaves)):
        assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("device", DEVICE)
def test_leading_batch_dims_and_fp16(device):
    inputs = make_inputs(0, 16, 300, lead=(3, 5), device=device, masked_fraction=0.4, seed=5)
    per_token = fused_loss(inputs, "chunked", reduction="none")
    assert per_token.shape == (3, 5) and torch.all(per_token[inputs["labels"] == -100] == 0)
    expected, _ = reference_loss(inputs, reduction="none")
    assert rel_err(per_token, expected) <= 1e-5
    half = make_inputs(19, 32, 777, dtype=torch.float16, device=device, seed=6)
    loss = fused_loss(half, "chunked")
    truth, leaves = reference_loss(half)
    assert rel_err(loss, truth) <= 2e-2
    for got, want in zip(torch.autograd.grad(loss, student_params(half)), torch.autograd.grad(truth, leaves)):
        assert got.dtype == torch.float16 and rel_err(got, want) <= 2e-2


@pytest.mark.parametrize("device", DEVICE)
def test_forward_only_and_no_grad(device):
    """No gradient wanted: no gradient buffers, same loss."""
    inputs = make_inputs(20, 16, 400, device=device, seed=8)
    with torch.no_grad():
        loss = fused_loss(inputs, "chunked", chunk_tokens=8)
    expected, _ = reference_loss(inputs)
    assert loss.grad_fn is None and rel_err(loss, expected) <= 1e-5


@pytest.mark.parametrize("device", DEVICE)
def test_last_chunk_tokens_reports_the_chunk_used(device):
    """Reports (benchmarks) read the chunk a call ran with: the one asked for, else the default plan's."""
    from rklu.kernels.kl.triton_chunked import default_chunk_tokens, last_chunk_plan, last_chunk_tokens

    inputs = make_inputs(40, 16, 3000, device=device, seed=9)
    fused_loss(inputs, "chunked", chunk_tokens=8)
    assert last_chunk_tokens() == 8 and last_chunk_plan().grad_tokens == 8
    fused_loss(inputs, "chunked")
    assert last_chunk_tokens() == default_chunk_tokens(40, 16, 3000, 4, torch.device(device)) == 40


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradient_blocks_of_several_logit_chunks(device, direction, reduction):
    """A budget that gives a G block of several logit chunks (and a last, partial one) computes the same
    loss and gradients as the reference: rows land in their block, dW accumulates per block."""
    from rklu.kernels.kl.chunk_policy import working_set_bytes
    from rklu.kernels.kl.triton_chunked import last_chunk_plan

    n, v = 300, 160
    inputs = make_inputs(n, 16, v, device=device, bias=True, seed=4)
    # Room for a 128-token logit chunk and a 256-token G block: chunks 128/128/44, G blocks 256/44.
    budget = working_set_bytes(128, 256, v, 4)
    loss = fused_loss(inputs, "chunked", direction=direction, reduction=reduction, max_chunk_bytes=budget)
    plan = last_chunk_plan()
    assert (plan.logit_tokens, plan.grad_tokens, plan.fits) == (128, 256, True)
    expected, leaves = reference_loss(inputs, direction=direction, reduction=reduction)
    weights = torch.linspace(0.5, 1.5, n, dtype=torch.float64)
    total = (loss * weights.to(loss)).sum() if reduction == "none" else loss
    want = (expected * weights).sum() if reduction == "none" else expected
    assert rel_err(total, want) <= 1e-5
    got = torch.autograd.grad(total, student_params(inputs))
    truth = torch.autograd.grad(want, leaves)
    for g, t in zip(got, truth):
        assert rel_err(g, t) <= 1e-5


def test_auto_on_cpu_stays_torch():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"


def test_auto_policy_on_cuda_uses_the_fused_kernel_only_when_no_128_token_chunk_fits():
    """The CUDA policy (pure Python): chunked whenever 128-token chunks fit in a quarter of the free memory;
    the O(N) fused kernel only when they do not."""
    from rklu.kernels.kl.chunk_policy import choose_cuda_backend, working_set_bytes

    big = dict(n=8192, h=4096, v=32000, dtype="bf16", augmented=True, reverse=True)
    assert choose_cuda_backend(free_bytes=80 << 30, **big) == "chunked"
    floor = working_set_bytes(128, 128, 32000, 2)
    assert choose_cuda_backend(free_bytes=4 * floor, **big) == "chunked"
    assert choose_cuda_backend(free_bytes=4 * floor - 4, **big) == "triton"
    # Fewer than 128 tokens: all of them is the floor.
    assert choose_cuda_backend(free_bytes=4 * working_set_bytes(64, 64, 32000, 2), **dict(big, n=64)) == "chunked"


@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_scale_cast_kernel_matches_torch(device, dtype):
    """The backward's one-pass grad * upstream -> parameter dtype, against torch's multiply and rounding. The
    interpreter converts fp32 -> bf16 by truncation (CUDA rounds to nearest): there 1 bf16 ulp is allowed."""
    from rklu.kernels.kl.triton_chunked import SCALE_CAST_CONFIG, _scale_cast_kernel, _scaled

    grad = torch.randn(1000, 37, generator=torch.Generator().manual_seed(3)).to(device)
    scale = torch.tensor(0.37, device=device)
    out = torch.empty(grad.shape, dtype=dtype, device=device)
    _scale_cast_kernel[(-(-grad.numel() // 1024),)](grad, scale.reshape(1), out, grad.numel(), BLOCK=1024,
                                                     num_warps=SCALE_CAST_CONFIG["num_warps"])
    want = torch.mul(grad, scale, out=torch.empty(grad.shape, dtype=dtype, device=device))
    if device == "cpu" and dtype == torch.bfloat16:
        ulp = torch.finfo(dtype).eps * want.float().abs().clamp_min(torch.finfo(dtype).tiny)
        assert ((out.float() - want.float()).abs() <= ulp).all()
    else:
        assert torch.equal(out, want)
    assert torch.equal(_scaled(grad, scale, dtype), want)  # the backward's wrapper, whichever path it takes
