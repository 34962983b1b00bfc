"""The backend registry (rklu/kernels/common/backends.py): adding a backend is one module and one register()
line, and both ops dispatch through it; names nobody registered, or an op a backend lacks, are errors."""
import textwrap

import pytest
import torch

from rklu.kernels import fused_linear_token_logprob, fused_linear_unlearning_kl, unlearning_kl_reference
from rklu.kernels.common import backends

TOY = textwrap.dedent('''
    """A toy KL backend: the reference math, counting its calls."""
    from rklu.kernels.kl.reference import unlearning_kl_linear

    CALLS = []


    def unlearning_kl(xs, ws, bs, xo, wo, bo, xa, wa, ba, *, alpha, direction, grad_in_forward, chunk_tokens,
                      grad_filter, transforms):
        CALLS.append(dict(rows=xs.shape[0], alpha=alpha, direction=direction, chunk_tokens=chunk_tokens))
        return 2.0 * unlearning_kl_linear(xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha=alpha, direction=direction,
                                          grad_in_forward=grad_in_forward, chunk_tokens=chunk_tokens,
                                          grad_filter=grad_filter, transforms=transforms)
''')


@pytest.fixture
def toy_backend(tmp_path, monkeypatch):
    (tmp_path / "rklu_toy_backend.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    backends.register(backends.Backend("toy", {"kl": "rklu_toy_backend:unlearning_kl"}))
    try:
        yield __import__("rklu_toy_backend")
    finally:
        backends.unregister("toy")


def test_a_registered_backend_is_dispatched_by_the_kl_op(toy_backend):
    torch.manual_seed(0)
    xs, xo = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True), torch.randn(2, 3, 8, dtype=torch.float64)
    ws, wo = torch.randn(13, 8, dtype=torch.float64), torch.randn(13, 8, dtype=torch.float64)
    labels = torch.tensor([[1, -100, 2], [3, 4, -100]])
    assert "toy" in backends.choices("kl") and "toy" not in backends.choices("logprob")

    loss = fused_linear_unlearning_kl(xs, ws, xo, wo, alpha=3.0, direction="forward", labels=labels,
                                      backend="toy", chunk_tokens=5)
    assert toy_backend.CALLS == [dict(rows=4, alpha=3.0, direction="forward", chunk_tokens=5)]
    expected = unlearning_kl_reference(xs @ ws.T, xo @ wo.T, alpha=3.0, direction="forward", labels=labels)
    torch.testing.assert_close(loss, 2.0 * expected)
    loss.backward()  # the toy's autograd graph is used as is
    assert xs.grad is not None and xs.grad.abs().sum() > 0

    with pytest.raises(ValueError, match="backend 'toy' does not implement the logprob op"):
        fused_linear_token_logprob(xs, ws, torch.zeros(2, 3, dtype=torch.long), backend="toy")


def test_unregistered_backend_is_gone(toy_backend):
    backends.unregister("toy")
    assert "toy" not in backends.choices()
    with pytest.raises(ValueError, match="unknown backend 'toy'"):
        fused_linear_unlearning_kl(torch.randn(2, 4), torch.randn(5, 4), torch.randn(2, 4), torch.randn(5, 4),
                                   backend="toy")


def test_registration_errors():
    with pytest.raises(ValueError, match="reserved or already registered"):
        backends.register(backends.Backend("torch", {"kl": "x:y"}))
    with pytest.raises(ValueError, match="reserved or already registered"):
        backends.register(backends.Backend("auto", {"kl": "x:y"}))
    with pytest.raises(ValueError, match="non-empty subset"):
        backends.register(backends.Backend("nothing", {"loss": "x:y"}))
    assert backends.choices() == ("auto", "triton", "chunked", "torch", "reference")
    assert backends.choices("logprob") == ("auto", "triton", "torch", "reference")
