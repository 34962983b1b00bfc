"""Bad input raises ValueError naming the problem."""
import pytest
import torch

from kernel_cases import make_inputs
from rklu.kernels import fused_linear_unlearning_kl, unlearning_kl_from_logits, unlearning_kl_reference


def call(**overrides):
    inputs = make_inputs(4, 8, 50)
    inputs.update(overrides)
    options = {k: inputs.pop(k) for k in ("alpha", "direction", "reduction", "backend") if k in inputs}
    return fused_linear_unlearning_kl(**inputs, **options)


@pytest.mark.parametrize("overrides, message", [
    (dict(student_weight=torch.randn(50, 9)), "hidden size mismatch"),
    (dict(original_weight=torch.randn(51, 8)), "vocab size mismatch"),
    (dict(augmented_weight=torch.randn(49, 8)), "vocab size mismatch"),
    (dict(original_hidden=torch.randn(5, 8)), "leading shape mismatch"),
    (dict(labels=torch.zeros(3, dtype=torch.long)), "labels shape"),
    (dict(direction="sideways"), "unknown direction"),
    (dict(reduction="max"), "unknown reduction"),
    (dict(backend="cuda-magic"), "unknown backend"),
    (dict(alpha=-1.0), "alpha must be a non-negative"),
    (dict(alpha=float("nan")), "alpha must be a non-negative"),
    (dict(augmented_weight=None), "must be given together"),
    (dict(student_hidden=torch.ones(4, 8, dtype=torch.long)), "floating-point"),
    (dict(student_weight=torch.randn(50, 8, device="meta")), "put all tensors on one device"),
    (dict(student_bias=torch.randn(49)), "student_bias must have shape"),
    (dict(original_hidden=torch.full((4, 8), float("nan"))), "original_hidden contains NaN"),
    (dict(student_hidden=torch.full((4, 8), float("inf"))), "student_hidden contains NaN or inf"),
])
def test_bad_input_names_the_problem(overrides, message):
    with pytest.raises(ValueError, match=message):
        call(**overrides)


def test_triton_backend_without_cuda_or_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs a CUDA device or TRITON_INTERPRET=1"):
        call(backend="triton")


def test_reference_and_from_logits_check_shapes():
    with pytest.raises(ValueError, match="logit shapes differ"):
        unlearning_kl_reference(torch.randn(2, 5), torch.randn(2, 6))
    with pytest.raises(ValueError, match="differs from student_logits"):
        unlearning_kl_from_logits(torch.randn(2, 5), torch.randn(2, 6))
    with pytest.raises(ValueError, match="labels shape"):
        unlearning_kl_from_logits(torch.randn(2, 5), torch.randn(2, 5), labels=torch.zeros(3))


def test_old_triton_interpreter_gets_a_clear_error(monkeypatch):
    """Triton 3.6's interpreter fails inside the kernels with a numpy TypeError; say what is wrong instead."""
    import triton

    from rklu.kernels import resolve_backend

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    with pytest.raises(RuntimeError, match=r"needs triton >= 3\.7, found 3\.6\.0"):
        resolve_backend("triton", torch.device("cpu"))
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    monkeypatch.setattr(triton, "__version__", "3.7.0")
    assert resolve_backend("chunked", torch.device("cpu")) == "chunked"
