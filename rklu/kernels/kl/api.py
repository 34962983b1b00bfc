"""Public entry points: pick a backend, drop ignored tokens, reduce. Every backend shares this code path."""
from __future__ import annotations

import torch

from ..common.masking import reduce_counted, select_counted, zero_loss
from ..common.validation import (
    check_alpha, check_backend, check_direction_reduction, check_finite, check_linear_inputs,
)
from .reference import unlearning_kl_reference


def triton_available(device: torch.device) -> bool:
    """Triton runs on CUDA devices, or anywhere under TRITON_INTERPRET=1 (CPU tensors, numpy-backed)."""
    import os

    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return device.type == "cuda"


def resolve_backend(backend: str, device: torch.device, problem: dict | None = None) -> str:
    """The backend a call runs on. ``"auto"``: ``"torch"`` off CUDA (or without Triton). On CUDA, given the
    ``problem`` (n, h, v, dtype "bf16"/"fp32", augmented, reverse, grad_filter), ``"chunked"`` when its
    O(chunk x V) working set fits in a quarter of the free GPU memory (torch.cuda.mem_get_info) at a chunk of >= 512
    tokens (or all of them) and the roofline model (``cost_model.choose_cuda_backend``) says it is faster
    than the O(N)-memory fused kernel with the gradient filter at the kept fraction measured on SmolLM2
    logits; else ``"triton"`` (also when no problem is given).
    """
    check_backend(backend)
    if backend == "auto":
        if device.type != "cuda" or not triton_available(device):
            return "torch"
        if problem is None:
            return "triton"
        from ..common.cost_model import choose_cuda_backend

        free, _ = torch.cuda.mem_get_info(device)
        return choose_cuda_backend(free_bytes=free, **problem)
    if backend in ("triton", "chunked") and not triton_available(device):
        raise ValueError(
            f"backend={backend!r} needs a CUDA device or TRITON_INTERPRET=1 (tensors are on {device}); "
            "use backend='torch' or 'auto'")
    if backend in ("triton", "chunked") and device.type != "cuda":
        _check_interpreter_version()
    return backend


# Triton 3.6's interpreter cannot run a loop whose bounds depend on tl.program_id ("only 0-dimensional arrays
# can be converted to Python scalars"); 3.7, 3.8 and 3.9 can. Compiled CUDA runs are not affected (the kernel
# tests pass on an H200 with triton 3.6).
MIN_INTERPRETER_TRITON = (3, 7)


def _check_interpreter_version() -> None:
    import triton

    version = tuple(int(p) for p in triton.__version__.split("+")[0].split(".")[:2])
    if version < MIN_INTERPRETER_TRITON:
        raise RuntimeError(
            f"TRITON_INTERPRET=1 (the Triton backends on CPU) needs triton >= "
            f"{'.'.join(map(str, MIN_INTERPRETER_TRITON))}, found {triton.__version__}: its interpreter cannot "
            "run the kernels' vocabulary loops. Use backend='torch' (or 'auto') on CPU, or upgrade triton.")


def fused_linear_unlearning_kl(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    original_hidden: torch.Tensor,
    original_weight: torch.Tensor,
    augmented_hidden: torch.Tensor | None = None,
    augmented_weight: torch.Tensor | None = None,
    *,
    alpha: float = 8.0,
    direction: str = "reverse",
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str = "auto",
    student_bias: torch.Tensor | None = None,
    original_bias: torch.Tensor | None = None,
    augmented_bias: torch.Tensor | None = None,
    chunk_tokens: int | None = None,
    check_inputs_finite: bool = True,
    grad_filter: bool | None = None,
) -> torch.Tensor:
    """Unlearning KL between the student and the (modified) teacher, from hidden states and lm_head weights.

    ``l = hidden @ weight.T (+ bias)`` for each model; the teacher is ``l_o - alpha * relu(l_aug - l_o)``
    (or ``l_o`` without an augmented model). ``direction="reverse"`` is KL(p_student || p_teacher) (RKLU),
    ``"forward"`` is KL(p_teacher || p_student) (FKLU, and the "+KL" retain term). Gradients flow to the
    student's hidden states, weight and bias; the teachers are constants. With the fused backends no
    [tokens x vocab] tensor is built. Labels only mask: pass them already shifted for next-token
    prediction (hidden[:, :-1] with labels[:, 1:]). Each model may have its own hidden size.

    ``grad_filter`` (Triton backend): skip backward tiles whose every gradient entry is below
    finfo(dtype).eps / 32 (see ``rklu/kernels/triton_fused_backward.py``); None = on unless the environment sets
    ``RKLU_GRAD_FILTER=0``. The torch and reference backends compute dense gradients and ignore it.
    """
    check_direction_reduction(direction, reduction)
    check_alpha(alpha)
    check_linear_inputs(student_hidden, student_weight, student_bias, original_hidden, original_weight,
                        original_bias, augmented_hidden, augmented_weight, augmented_bias, labels)
    backend = resolve_backend(backend, student_hidden.device, problem=dict(
        n=student_hidden[..., 0].numel(), h=max(student_hidden.shape[-1], original_hidden.shape[-1]),
        v=student_weight.shape[0], dtype="fp32" if student_hidden.dtype == torch.float32 else "bf16",
        augmented=augmented_hidden is not None, reverse=direction == "reverse",
        grad_filter=grad_filter is not False))
    if check_inputs_finite:
        for name, t in (("student_hidden", student_hidden), ("original_hidden", original_hidden),
                        ("augmented_hidden", augmented_hidden)):
            check_finite(name, t)

    lead_shape = student_hidden.shape[:-1]
    hidden = student_hidden.shape[-1]
    counted, (xs, xo, xa) = select_counted(
        labels, ignore_index, student_hidden.reshape(-1, hidden),
        original_hidden.detach().reshape(-1, original_hidden.shape[-1]),
        None if augmented_hidden is None else augmented_hidden.detach().reshape(-1, augmented_hidden.shape[-1]))
    teachers = (original_weight.detach(), _detach(original_bias), _detach(augmented_weight), _detach(augmented_bias))
    if xs.shape[0] == 0:
        return zero_loss(lead_shape, reduction, student_hidden, student_weight, student_bias)

    if backend == "reference":
        per_token = _reference_per_token(xs, student_weight, student_bias, xo, xa, teachers, alpha, direction)
    elif backend == "torch":
        from .torch_chunked import TorchChunkedUnlearningKL

        wo, bo, wa, ba = teachers
        per_token = TorchChunkedUnlearningKL.apply(
            xs, student_weight, student_bias, xo, wo, bo, xa, wa, ba, float(alpha), direction,
            reduction != "none", chunk_tokens)
    elif backend == "chunked":
        from .triton_chunked import TritonChunkedUnlearningKL

        xs_c, ws_c, bs_c, tw = _common_dtype(xs, student_weight, student_bias, xo, xa, teachers)
        per_token = TritonChunkedUnlearningKL.apply(
            xs_c, ws_c, bs_c, xo.to(xs_c.dtype), tw[0], tw[1], None if xa is None else xa.to(xs_c.dtype),
            tw[2], tw[3], float(alpha), direction, reduction != "none", chunk_tokens)
    else:
        from .triton_fused import TritonFusedUnlearningKL

        xs_c, ws_c, bs_c, tw = _common_dtype(xs, student_weight, student_bias, xo, xa, teachers)
        xo_c = xo.to(xs_c.dtype)
        xa_c = None if xa is None else xa.to(xs_c.dtype)
        per_token = TritonFusedUnlearningKL.apply(
            xs_c, ws_c, bs_c, xo_c, tw[0], tw[1], xa_c, tw[2], tw[3], float(alpha), direction, grad_filter)

    return reduce_counted(per_token, counted, lead_shape, reduction)


def _detach(t):
    return None if t is None else t.detach()


def _reference_per_token(xs, ws, bs, xo, xa, teachers, alpha, direction):
    wo, bo, wa, ba = teachers
    dtype = torch.float64 if xs.dtype == torch.float64 else torch.float32
    student = torch.nn.functional.linear(xs.to(dtype), ws.to(dtype), None if bs is None else bs.to(dtype))
    original = torch.nn.functional.linear(xo.to(dtype), wo.to(dtype), None if bo is None else bo.to(dtype))
    augmented = None if xa is None else torch.nn.functional.linear(xa.to(dtype), wa.to(dtype), None if ba is None else ba.to(dtype))
    return unlearning_kl_reference(student, original, augmented, alpha=alpha, direction=direction, reduction="none")


def _common_dtype(xs, ws, bs, xo, xa, teachers):
    """Triton GEMM inputs share one dtype: the autocast dtype when autocast is on (what lm_head would use),
    else the widest of the student's hidden/weight dtypes. Logits are still accumulated in float32."""
    device_type = xs.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = torch.promote_types(xs.dtype, ws.dtype)
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    wo, bo, wa, ba = teachers
    return cast(xs), cast(ws), bs, (cast(wo), bo, cast(wa), ba)


class FusedLinearUnlearningKL(torch.nn.Module):
    """Module form of :func:`fused_linear_unlearning_kl` holding alpha, direction, reduction and backend."""

    def __init__(self, alpha: float = 8.0, direction: str = "reverse", ignore_index: int = -100,
                 reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        check_direction_reduction(direction, reduction)
        check_alpha(alpha)
        check_backend(backend)
        self.alpha, self.direction, self.ignore_index = alpha, direction, ignore_index
        self.reduction, self.backend = reduction, backend

    def forward(self, student_hidden, student_weight, original_hidden, original_weight,
                augmented_hidden=None, augmented_weight=None, labels=None, **biases):
        return fused_linear_unlearning_kl(
            student_hidden, student_weight, original_hidden, original_weight, augmented_hidden, augmented_weight,
            alpha=self.alpha, direction=self.direction, labels=labels, ignore_index=self.ignore_index,
            reduction=self.reduction, backend=self.backend, **biases)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, direction={self.direction!r}, reduction={self.reduction!r}, backend={self.backend!r}"
