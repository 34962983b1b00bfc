"""Both fused kernels at real large vocabularies, V = 128256 (Llama-3) and 151936 (Qwen2), through the public
API on a few tokens: float32 results within 1e-5 (relative) of float64 for the loss / log-probs and the
gradients, with labels at the first and last vocabulary id (the last, partial vocab tile).

The Triton interpreter's cost grows with the number of (token block x vocab tile x hidden tile) programs, not
with the tile size, so these tests run with 4096-wide vocab tiles: 32-38 tiles instead of 500-600.
"""
import pytest
import torch

from kernel_cases import fused_loss, make_inputs, reference_loss, rel_err, student_params, triton_param
from rklu.kernels import fused_linear_token_logprob, token_logprob_reference

VOCABS = [pytest.param(128256, id="llama3-V128256"), pytest.param(151936, id="qwen2-V151936")]
TRITON = triton_param()
LARGE_TILES = dict(BLOCK_N=16, BLOCK_V=4096, BLOCK_H=32)


@pytest.fixture
def large_tiles(monkeypatch):
    monkeypatch.setenv("RKLU_INTERPRET_BLOCKS", "{BLOCK_N},{BLOCK_V},{BLOCK_H}".format(**LARGE_TILES))
    import rklu.kernels.kl.triton_fused as triton_fused

    # The KL kernel's interpreter tiles (its block_sizes(kernel, dtype); on GPU the autotuned configs are used).
    def large(kernel, dtype_name, softcap=False):
        blocks = dict(LARGE_TILES, num_warps=4)
        return blocks if kernel.startswith("forward") else dict(blocks, BLOCK_HG=LARGE_TILES["BLOCK_H"])

    monkeypatch.setattr(triton_fused, "block_sizes", large)


def _edge_labels(labels, v):
    labels = labels.clone()
    labels.view(-1)[0], labels.view(-1)[-1] = 0, v - 1
    return labels


@pytest.mark.parametrize("backend_device", [TRITON])
@pytest.mark.parametrize("vocab", VOCABS)
def test_unlearning_kl_large_vocab(backend_device, vocab, large_tiles):
    backend, device = backend_device
    n, h = 4, 16
    inputs = make_inputs(n, h, vocab, device=device, masked_fraction=0.2, seed=vocab % 97)
    inputs["labels"] = _edge_labels(inputs["labels"], vocab)
    loss = fused_loss(inputs, backend, direction="reverse")
    grads = torch.autograd.grad(loss, student_params(inputs))
    truth, leaves = reference_loss(inputs, direction="reverse")
    truth_grads = torch.autograd.grad(truth, leaves)
    assert rel_err(loss, truth) <= 1e-5, f"loss rel err {rel_err(loss, truth):.2e}"
    for name, got, want in zip(("hidden", "weight"), grads, truth_grads):
        assert rel_err(got, want) <= 1e-5, f"d{name} rel err {rel_err(got, want):.2e}"


@pytest.mark.parametrize("backend_device", [TRITON, pytest.param(("torch", "cpu"), id="torch")])
@pytest.mark.parametrize("vocab", VOCABS)
def test_token_logprob_large_vocab(backend_device, vocab, large_tiles):
    backend, device = backend_device
    n, h = (5, 16) if vocab == 128256 else (3, 32)
    gen = torch.Generator().manual_seed(vocab % 89)
    x = torch.randn(n, h, generator=gen).to(device).requires_grad_()
    w = (torch.randn(vocab, h, generator=gen) * 4.0 / h ** 0.5).to(device).requires_grad_()
    labels = _edge_labels(torch.randint(0, vocab, (n,), generator=gen), vocab).to(device)
    labels[1] = -100
    upstream = torch.randn(n, generator=gen).to(device)
    got = fused_linear_token_logprob(x, w, labels, backend=backend)
    grads = torch.autograd.grad((got * upstream).sum(), (x, w))
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    truth = token_logprob_reference(x64 @ w64.T, labels)
    truth_grads = torch.autograd.grad((truth * upstream.double()).sum(), (x64, w64))
    x32, w32 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    fp32 = token_logprob_reference(x32 @ w32.T, labels)
    fp32_grads = torch.autograd.grad((fp32 * upstream).sum(), (x32, w32))

    # Triton: 1e-5 flat. Torch: its dX is an [n, V] @ [V, H] float32 GEMM whose rounding grows with the
    # reduction length V (~1.4e-5 at V = 152k): it must be as accurate as the fp32 materialized reference.
    def tol(plain, want):
        return 1e-5 if backend == "triton" else max(1e-5, 2 * rel_err(plain, want))
    assert got[1] == 0
    assert rel_err(got, truth) <= tol(fp32, truth), f"logp rel err {rel_err(got, truth):.2e}"
    for name, g, want, plain in zip(("hidden", "weight"), grads, truth_grads, fp32_grads):
        assert rel_err(g, want) <= tol(plain, want), f"d{name} rel err {rel_err(g, want):.2e}"
