"""fused_linear_token_logprob: every backend against the float64 reference, same accuracy rules as the KL
kernel (fp32 <= 1e-5 relative for Triton, torch paths within 2x the fp32 materialized reference's own error;
bf16 <= 2e-2 and never less accurate than eager bf16), odd vocab sizes, masks, extreme logits, bias, autocast,
deterministic mode, the reference's gradcheck and clear errors for bad input."""
import math

import pytest
import torch

from kernel_cases import assert_no_less_accurate_than_eager, rel_err, triton_param
from rklu.kernels import fused_linear_token_logprob, token_logprob_reference

TORCH = pytest.param(("torch", "cpu"), id="torch")
REFERENCE = pytest.param(("reference", "cpu"), id="reference")
TRITON = triton_param()
# Small interpreter tiles: many vocab tiles (online log-sum-exp), several splits (some empty: the combine must
# drop them), several row blocks, all from shapes the interpreter runs in seconds.
SMALL_TILES = "16,128,16"


def make(n, h, v, *, dtype=torch.float32, bias=False, scale=1.0, masked=0.0, seed=0, lead=None, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    shape = (n,) if lead is None else tuple(lead)
    w_std = 4.0 / h ** 0.5  # logits with std ~4, as in trained LMs; `scale` stretches them
    x = (torch.randn(*shape, h, generator=gen) * scale).to(device=device, dtype=dtype).requires_grad_()
    w = (torch.randn(v, h, generator=gen) * w_std * scale).to(device=device, dtype=dtype).requires_grad_()
    b = (torch.randn(v, generator=gen) * scale).to(device=device, dtype=dtype).requires_grad_() if bias else None
    labels = torch.randint(0, v, shape, generator=gen)
    if masked:
        labels[torch.rand(shape, generator=gen) < masked] = -100
    upstream = torch.randn(shape, generator=gen).to(device)  # a different weight per token, like NPO/DPO
    return x, w, b, labels.to(device), upstream


def params(x, w, b):
    return [x, w] + ([b] if b is not None else [])


def reference(x, w, b, labels, dtype=torch.float64):
    """Values and gradients from materialized logits in ``dtype`` (autograd through the reference)."""
    leaves = [p.detach().to(dtype).requires_grad_() for p in params(x, w, b)]
    logits = leaves[0] @ leaves[1].T
    if b is not None:
        logits = logits + leaves[2]
    return token_logprob_reference(logits, labels), leaves


def check(backend, device, shape, *, bias=False, masked=0.3, seed=0, lead=None):
    n, h, v = shape
    x, w, b, labels, up = make(n, h, v, bias=bias, masked=masked, seed=seed, lead=lead, device=device)
    got = fused_linear_token_logprob(x, w, labels, bias=b, backend=backend)
    grads = torch.autograd.grad((got * up).sum(), params(x, w, b))
    truth, leaves = reference(x, w, b, labels)
    truth_grads = torch.autograd.grad((truth * up.double()).sum(), leaves)
    fp32, fp32_leaves = reference(x, w, b, labels, dtype=torch.float32)
    fp32_grads = torch.autograd.grad((fp32 * up).sum(), fp32_leaves)

    def tol(fp32_result, want):
        return 1e-5 if backend == "triton" else max(1e-5, 2 * rel_err(fp32_result, want))
    assert got.shape == labels.shape and got.dtype == torch.float32
    assert torch.all(got[labels == -100] == 0)
    assert rel_err(got, truth) <= tol(fp32, truth), f"logp rel err {rel_err(got, truth):.2e}"
    for name, g, want, plain in zip(("hidden", "weight", "bias"), grads, truth_grads, fp32_grads):
        assert g.dtype == torch.float32
        assert rel_err(g, want) <= tol(plain, want), f"d{name} rel err {rel_err(g, want):.2e}"


# (N, H, V): a single token, odd vocab sizes (not a multiple of any block), many tokens, the Llama-2 vocab.
SHAPES = [(1, 32, 1000), (7, 48, 32003), (300, 40, 1000), (7, 16, 32000)]


@pytest.mark.parametrize("backend_device", [REFERENCE, TORCH, TRITON])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}-H{}-V{}".format(*s))
def test_fp32_values_and_grads(backend_device, shape):
    backend, device = backend_device
    check(backend, device, shape, bias=shape[0] == 7, masked=0.3 if shape[0] > 1 else 0.0)


@pytest.mark.parametrize("backend_device", [TORCH, TRITON])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_many_tiles_and_splits(backend_device, bias, monkeypatch):
    """Odd V over 24 vocab tiles and 4 splits (the last ones empty for the smaller V), odd H over 3 H-tiles."""
    monkeypatch.setenv("RKLU_INTERPRET_BLOCKS", SMALL_TILES)
    backend, device = backend_device
    check(backend, device, (37, 40, 3001), bias=bias, masked=0.25, seed=1)
    check(backend, device, (20, 16, 300), bias=bias, masked=0.0, seed=2)  # 3 tiles: split 3 is empty


@pytest.mark.parametrize("backend_device", [TORCH, TRITON])
def test_leading_batch_dims(backend_device):
    backend, device = backend_device
    check(backend, device, (0, 16, 300), lead=(3, 5), masked=0.4, seed=5)


@pytest.mark.parametrize("backend_device", [TORCH, TRITON])
def test_bf16_at_least_as_accurate_as_eager(backend_device):
    backend, device = backend_device
    x, w, b, labels, up = make(33, 64, 2051, dtype=torch.bfloat16, bias=True, masked=0.2, seed=3, device=device)
    got = fused_linear_token_logprob(x, w, labels, bias=b, backend=backend)
    grads = torch.autograd.grad((got * up.to(got.dtype)).sum(), params(x, w, b))
    truth, leaves = reference(x, w, b, labels)
    truth_grads = torch.autograd.grad((truth * up.double()).sum(), leaves)
    # Eager bf16: the logits come out of F.linear in bf16 (then float32 log-softmax, as HF's loss does).
    eager, eager_leaves = reference(x, w, b, labels, dtype=torch.bfloat16)
    eager_grads = torch.autograd.grad((eager * up).sum(), eager_leaves)
    assert got.dtype == torch.float32
    assert rel_err(got, truth) <= 2e-2
    assert (got.double() - truth).abs().mean() <= (eager.double() - truth).abs().mean() + 1e-4
    for g, want, baseline in zip(grads, truth_grads, eager_grads):
        assert g.dtype == torch.bfloat16 and rel_err(g, want) <= 2e-2
        assert_no_less_accurate_than_eager(g, want, baseline)


@pytest.mark.parametrize("backend_device", [TORCH, TRITON])
def test_fp16_inputs(backend_device):
    backend, device = backend_device
    x, w, b, labels, up = make(19, 32, 777, dtype=torch.float16, seed=6, device=device)
    got = fused_linear_token_logprob(x, w, labels, backend=backend)
    grads = torch.autograd.grad((got * up.to(got.dtype)).sum(), params(x, w, b))
    truth, leaves = reference(x, w, b, labels)
    assert rel_err(got, truth) <= 2e-2
    for g, want in zip(grads, torch.autograd.grad((truth * up.double()).sum(), leaves)):
        assert g.dtype == torch.float16 and rel_err(g, want) <= 2e-2


@pytest.mark.parametrize("backend_device", [TORCH, TRITON])
def test_extreme_logits_stay_finite_and_exact(backend_device):
    """Logits of magnitude ~1e4: no overflow, and as close to float64 as the fp32 materialized reference."""
    backend, device = backend_device
    x, w, b, labels, up = make(9, 16, 333, scale=50.0, bias=True, seed=7, device=device)
    got = fused_linear_token_logprob(x, w, labels, bias=b, backend=backend)
    grads = torch.autograd.grad((got * up).sum(), params(x, w, b))
    truth, leaves = reference(x, w, b, labels)
    fp32, fp32_leaves = reference(x, w, b, labels, dtype=torch.float32)
    assert got.abs().max() > 1e3  # the labels are far from the argmax: log-probs of order -1e4
    assert torch.isfinite(got).all() and all(torch.isfinite(g).all() for g in grads)
    assert rel_err(got, truth) <= 2 * rel_err(fp32, truth) + 1e-6
    for g, want, plain in zip(grads, torch.autograd.grad((truth * up.double()).sum(), leaves),
                              torch.autograd.grad((fp32 * up).sum(), fp32_leaves)):
        assert rel_err(g, want) <= 2 * rel_err(plain, want) + 1e-6


@pytest.mark.parametrize("backend_device", [TRITON])
def test_gradient_filtering(backend_device, monkeypatch):
    """Backward tiles whose gradient is <= GRAD_FILTER_EPS skip their GEMMs. At the default 0 only tiles whose
    softmax underflowed to exactly 0 are skipped (logits ~1e4 over 3 vocab tiles: most tiles), so the result
    stays exact; an infinite threshold skips every tile, which shows the branch is live."""
    import rklu.kernels.logprob.triton_fused as tlp

    backend, device = backend_device
    monkeypatch.setenv("RKLU_INTERPRET_BLOCKS", SMALL_TILES)
    x, w, b, labels, up = make(9, 16, 333, scale=50.0, bias=True, seed=7, device=device)
    got = fused_linear_token_logprob(x, w, labels, bias=b, backend=backend)
    grads = torch.autograd.grad((got * up).sum(), params(x, w, b))
    truth, leaves = reference(x, w, b, labels)
    fp32, fp32_leaves = reference(x, w, b, labels, dtype=torch.float32)
    for g, want, plain in zip(grads, torch.autograd.grad((truth * up.double()).sum(), leaves),
                              torch.autograd.grad((fp32 * up).sum(), fp32_leaves)):
        assert rel_err(g, want) <= 2 * rel_err(plain, want) + 1e-6
    monkeypatch.setattr(tlp, "GRAD_FILTER_EPS", float("inf"))
    got = fused_linear_token_logprob(x, w, labels, bias=b, backend=backend)
    assert all(torch.count_nonzero(g) == 0 for g in torch.autograd.grad((got * up).sum(), params(x, w, b)))


@pytest.mark.parametrize("backend_device", [REFERENCE, TORCH, TRITON])
def test_all_tokens_ignored_gives_zeros_and_zero_grads(backend_device):
    backend, device = backend_device
    x, w, b, labels, _ = make(6, 16, 100, bias=True, device=device)
    labels = torch.full_like(labels, -100)
    got = fused_linear_token_logprob(x, w, labels, bias=b, backend=backend)
    got.sum().backward()
    assert got.shape == (6,) and torch.count_nonzero(got) == 0
    for p in params(x, w, b):
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0


@pytest.mark.parametrize("backend_device", [TORCH, TRITON])
def test_autocast_keeps_logits_in_fp32(backend_device):
    backend, device = backend_device
    x, w, b, labels, up = make(12, 32, 500, seed=4, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        got = fused_linear_token_logprob(x, w, labels, backend=backend)
    grads = torch.autograd.grad((got * up).sum(), params(x, w, b))
    truth, leaves = reference(x, w, b, labels)
    assert got.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    tol = 1e-5 if backend == "torch" else 2e-2  # Triton's GEMM operands follow autocast (bf16), like lm_head
    assert rel_err(got, truth) <= tol
    for g, want in zip(grads, torch.autograd.grad((truth * up.double()).sum(), leaves)):
        assert rel_err(g, want) <= tol


@pytest.mark.parametrize("backend_device", [TORCH, TRITON])
def test_deterministic_mode_is_bitwise_reproducible_and_exact(backend_device, monkeypatch):
    backend, device = backend_device
    monkeypatch.setenv("RKLU_INTERPRET_BLOCKS", SMALL_TILES)
    if backend == "triton":  # several gradient chunks, the last one partial
        import rklu.kernels.logprob.triton_fused as tlp
        monkeypatch.setattr(tlp, "CHUNK_ELEMENTS", 64 * 700)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            x, w, b, labels, up = make(150, 24, 700, masked=0.2, bias=True, seed=9, device=device)
            got = fused_linear_token_logprob(x, w, labels, bias=b, backend=backend)
            runs.append([got.detach()] + list(torch.autograd.grad((got * up).sum(), params(x, w, b))))
    finally:
        torch.use_deterministic_algorithms(previous)
    for first, second in zip(*runs):
        assert torch.equal(first, second)
    truth, leaves = reference(x, w, b, labels)
    truth_grads = torch.autograd.grad((truth * up.double()).sum(), leaves)
    for got, want in zip(runs[0], [truth, *truth_grads]):
        assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("backend_device", [TORCH, TRITON])
def test_gradient_accumulates_into_existing_grads(backend_device):
    backend, device = backend_device
    x, w, b, labels, up = make(10, 16, 200, seed=1, device=device)
    x2, _, _, labels2, up2 = make(10, 16, 200, seed=2, device=device)
    (fused_linear_token_logprob(x, w, labels, backend=backend) * up).sum().backward()
    (fused_linear_token_logprob(x2, w, labels2, backend=backend) * up2).sum().backward()
    t1, l1 = reference(x, w, None, labels)
    t2, l2 = reference(x2, w, None, labels2)
    expected = torch.autograd.grad((t1 * up.double()).sum(), l1)[1] + torch.autograd.grad((t2 * up2.double()).sum(), l2)[1]
    assert rel_err(w.grad, expected) <= 1e-5


def test_torch_backend_gradcheck_float64():
    """The chunked autograd Function (chunks of 2 tokens, recomputed backward) is exact in float64."""
    x, w, b, labels, _ = make(4, 3, 7, dtype=torch.float64, bias=True, masked=0.2, seed=11)

    def f(x, w, b):
        return fused_linear_token_logprob(x, w, labels, bias=b, backend="torch", chunk_tokens=2)
    assert torch.autograd.gradcheck(f, (x, w, b))


# ---------------------------------------------------------------------------------------- the reference

def test_reference_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    got = token_logprob_reference(logits, torch.tensor([1, -100]))
    assert got[0].item() == pytest.approx(math.log(0.75), rel=1e-6) and got[1].item() == 0.0


@pytest.mark.parametrize("with_bias", [False, True])
def test_reference_gradcheck_float64(with_bias):
    torch.manual_seed(1)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, requires_grad=True) if with_bias else None
    labels = torch.tensor([1, -100, 3, 8])
    inputs = (x, w, b) if with_bias else (x, w)
    assert torch.autograd.gradcheck(lambda *p: fused_linear_token_logprob(
        p[0], p[1], labels, bias=p[2] if with_bias else None, backend="reference"), inputs)
    z = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: token_logprob_reference(z, labels), (z,))


def test_closed_form_gradient_is_onehot_minus_softmax():
    torch.manual_seed(2)
    z = torch.randn(6, 13, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 13, (6,))
    (grad,) = torch.autograd.grad(token_logprob_reference(z, labels).sum(), z)
    expected = torch.nn.functional.one_hot(labels, 13).double() - torch.softmax(z.detach(), -1)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_equals_cross_entropy():
    torch.manual_seed(3)
    x, w = torch.randn(2, 7, 8), torch.randn(50, 8)
    labels = torch.randint(0, 50, (2, 7))
    labels[0, :2] = -100
    got = fused_linear_token_logprob(x, w, labels, backend="torch")
    ce = torch.nn.functional.cross_entropy((x @ w.T).transpose(1, 2), labels, reduction="none")
    torch.testing.assert_close(got, -ce, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ bad input

def call(**overrides):
    x, w, b, labels, _ = make(4, 8, 50)
    kwargs = dict(hidden=x, weight=w, labels=labels)
    kwargs.update(overrides)
    return fused_linear_token_logprob(**kwargs)


@pytest.mark.parametrize("overrides, message", [
    (dict(labels=torch.tensor([0, 1, 50, 2])), r"labels out of range: found 50.*\[0, 50\)"),
    (dict(labels=torch.tensor([0, -1, 3, 2])), "labels out of range: found -1"),
    (dict(labels=torch.zeros(3, dtype=torch.long)), "labels shape"),
    (dict(labels=torch.zeros(4)), "labels must be an integer tensor"),
    (dict(weight=torch.randn(50, 9)), "hidden size mismatch"),
    (dict(weight=torch.randn(50)), "weight must be 2-D"),
    (dict(bias=torch.randn(49)), r"bias must have shape \(50,\)"),
    (dict(hidden=torch.ones(4, 8, dtype=torch.long)), "floating-point"),
    (dict(weight=torch.randn(50, 8, device="meta")), "put all tensors on one device"),
    (dict(hidden=torch.full((4, 8), float("nan"))), "hidden contains NaN"),
    (dict(backend="cuda-magic"), "unknown backend"),
    (dict(hidden=torch.randn(4, 8, dtype=torch.float64), weight=torch.randn(50, 8, dtype=torch.float64),
          backend="triton"), "float64"),
])
def test_bad_input_names_the_problem(overrides, message):
    with pytest.raises(ValueError, match=message):
        call(**overrides)


def test_triton_without_cuda_or_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs a CUDA device or TRITON_INTERPRET=1"):
        call(backend="triton")


def test_compile_specs_describe_every_kernel_argument():
    """compile_specs() feeds the sm_80/sm_90 spill checker: each spec names every argument of its kernel, the
    constexprs are all given (by the spec or by every config), and every CUDA config set is non-empty."""
    triton_logprob = pytest.importorskip("rklu.kernels.logprob.triton_fused")
    specs = triton_logprob.compile_specs()
    assert {s.kernel for s in specs} == {"token_logprob_forward_split", "token_logprob_backward",
                                         "token_logprob_gradient_chunk", "token_logprob_combine"}
    for spec in specs:
        assert list(spec.signature) == list(spec.fn.arg_names), spec.kernel
        constexprs = [n for n, t in spec.signature.items() if t == "constexpr"]
        assert spec.configs
        for config in spec.configs:
            assert set(constexprs) == set(spec.constexprs) | set(config.kwargs), (spec.kernel, config)
        assert set(spec.divisible) <= set(spec.signature)
