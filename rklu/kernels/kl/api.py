"""Public entry points of the KL op: check the inputs, pick a backend (common/backends.py), drop ignored
tokens, run the backend's op function, reduce. Every backend shares this code path."""
from __future__ import annotations

import torch

from ..common import backends
from ..common.masking import reduce_counted, select_counted, zero_loss
from ..common.validation import (
    check_finite, check_linear_inputs, mixed_precision_teachers,
)
from .chunk_policy import check_chunk_knobs
from .loss_options import LossOptions
from . import objective_inputs as oi
from .uniform_shift import uniform_target_shift


def resolve_backend(backend: str, device: torch.device, problem: dict | None = None) -> str:
    """The backend the KL runs on: ``backend`` once it is known to run on ``device``, or for ``"auto"`` the
    policy of ``backends.auto_backend`` (``problem``: n, h, v, dtype "bf16"/"fp32", augmented, reverse,
    grad_filter; without it, ``"triton"`` on CUDA)."""
    return backends.resolve("kl", backend, device, problem)


def fused_linear_unlearning_kl(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    original_hidden: torch.Tensor | None = None,
    original_weight: torch.Tensor | None = None,
    augmented_hidden: torch.Tensor | None = None,
    augmented_weight: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str = "auto",
    student_bias: torch.Tensor | None = None,
    original_bias: torch.Tensor | None = None,
    augmented_bias: torch.Tensor | None = None,
    chunk_tokens: int | None = None,
    max_chunk_bytes: int | None = None,
    chunk_memory_fraction: float | None = None,
    check_inputs_finite: bool = True,
    grad_filter: bool | None = None,
    **options,
) -> torch.Tensor:
    """Unlearning KL between the student and the (modified) teacher, from hidden states and lm_head weights.

    ``l = hidden @ weight.T (+ bias)`` for each model, then that model's logit transform: ``l = scale * l``
    and, with a softcap ``c``, ``l = c * tanh(l / c)`` (``<model>_scale``, ``<model>_softcap``; a head that
    divides, like Granite's ``logits_scaling``, passes the inverse; see ``common/logit_transform.py``). The
    teacher is ``l_o - alpha * relu(l_aug - l_o)`` (or ``l_o`` without an augmented model).
    ``direction="reverse"`` is KL(p_student || p_teacher) (RKLU),
    ``"forward"`` is KL(p_teacher || p_student) (FKLU, and the "+KL" retain term). Gradients flow to the
    student's hidden states, weight and bias; the teachers are constants. With the fused backends no
    [tokens x vocab] tensor is built. Labels only mask: pass them already shifted for next-token
    prediction (hidden[:, :-1] with labels[:, 1:]). Each model may have its own hidden size.

    The objective (``objective.py``; each logit-distillation unlearning method is one choice of it):
    ``divergence`` ("reverse", "forward", "jsd" with ``jsd_beta`` as Liger-Kernel's generalized JSD, "argmax_ce"
    as WHP's generic labels, Eldan & Russinovich 2023, arXiv 2310.02238; None: ``direction``); ``teacher``
    ("models": the original, edited by the augmented model; "self": the student's own detached logits, CE-U /
    Unilogit, no original model passed; "labels": one-hot on the label, JensUn, no original model passed);
    ``target_edit`` of the teacher's logit at the label ("subtract" ``target_shift``: UNDIAL, Dong et al. 2024,
    arXiv 2402.10052; "uniform": p_teacher(label) = 1/V, Unilogit, Vasilev et al. 2025, arXiv 2505.06027;
    "exclude": -inf, CE-U, Yang et al. 2025, arXiv 2503.01224), which needs ``labels`` (counted ones in [0, V));
    ``temperature`` divides every model's logits before the softmaxes (no T^2 factor). Invalid combinations
    raise ValueError before any work (``KLObjective.check``).

    Mixed dtypes (a bf16 student with an fp32 teacher): the torch backend computes every model in fp32, the
    chunked backend each model's GEMM in its own dtype; the fused ``"triton"`` kernel computes all in the
    student's dtype and so refuses a wider teacher (ValueError naming the dtypes); ``"auto"`` never picks it
    for one.

    Chunks of the ``"chunked"`` backend (``chunk_policy.py``): by default a memory budget equal to Liger-Kernel
    FusedLinearJSD's working set for the same shape (at most a quarter of the free GPU memory);
    ``max_chunk_bytes`` (bytes) or ``chunk_memory_fraction`` (of the free GPU memory) set the budget instead;
    ``chunk_tokens`` fixes the chunk (the torch backend's only knob). Never below 128 tokens (or N).
    ``triton_chunked.last_chunk_plan()`` reports what a call used.

    ``grad_filter`` (Triton backend): skip backward tiles whose every gradient entry is below
    finfo(dtype).eps / 32 (see ``rklu/kernels/kl/triton_fused/backward.py``); None = on unless the environment sets
    ``RKLU_GRAD_FILTER=0``. The torch and reference backends compute dense gradients and ignore it.
    """
    loss = LossOptions.of("fused_linear_unlearning_kl", options)
    objective, transforms = loss.resolve(reduction, augmented=augmented_hidden is not None, labels=labels is not None)
    oi.check_teacher_inputs(objective, dict(original_hidden=original_hidden, original_weight=original_weight))
    if objective.teacher != "models" and original_bias is not None:
        oi.check_teacher_inputs(objective, dict(original_bias=original_bias))
    if objective.teacher != "models":
        # The self / labels teacher: the student's own tensors (detached) in the original's place.
        original_hidden, original_weight, original_bias = student_hidden, student_weight, student_bias
    check_chunk_knobs(max_chunk_bytes, chunk_memory_fraction, chunk_tokens)
    check_linear_inputs(student_hidden, student_weight, student_bias, original_hidden, original_weight,
                        original_bias, augmented_hidden, augmented_weight, augmented_bias, labels)
    requested = backend
    backend = resolve_backend(backend, student_hidden.device, problem=dict(
        n=student_hidden[..., 0].numel(), h=max(student_hidden.shape[-1], original_hidden.shape[-1]),
        v=student_weight.shape[0], dtype="fp32" if student_hidden.dtype == torch.float32 else "bf16",
        augmented=augmented_hidden is not None, reverse=objective.kernel_divergence == "reverse",
        grad_filter=grad_filter is not False, teacher_gemm=objective.teacher == "models"))
    if requested == "auto" and backend == "triton" and mixed_precision_teachers(
            student_hidden, student_weight, original_hidden, original_weight, augmented_hidden, augmented_weight):
        backend = "torch"  # the fused kernel would round the wider teacher; torch computes it in fp32
    if check_inputs_finite:
        for name, t in (("student_hidden", student_hidden), ("original_hidden", original_hidden),
                        ("augmented_hidden", augmented_hidden)):
            if name != "original_hidden" or objective.teacher == "models":
                check_finite(name, t)

    lead_shape = student_hidden.shape[:-1]
    hidden = student_hidden.shape[-1]
    counted, (xs, xo, xa, y) = select_counted(
        labels, ignore_index, student_hidden.reshape(-1, hidden),
        original_hidden.detach().reshape(-1, original_hidden.shape[-1]),
        None if augmented_hidden is None else augmented_hidden.detach().reshape(-1, augmented_hidden.shape[-1]),
        None if labels is None else labels.reshape(-1, 1))
    wo, bo, wa, ba = (None if t is None else t.detach() for t in (original_weight, original_bias, augmented_weight,
                                                                  augmented_bias))
    targets = oi.checked_targets(y.reshape(-1), student_weight.shape[0]) if objective.has_target_edit else None
    if xs.shape[0] == 0:
        return zero_loss(lead_shape, reduction, student_hidden, student_weight, student_bias)
    shift = _target_shift(objective, targets, xo, wo, bo, transforms[1], backend, chunk_tokens)

    # The chunk budget knobs concern the chunked backend alone (the others take chunk_tokens or nothing).
    budget = dict(max_chunk_bytes=max_chunk_bytes, memory_fraction=chunk_memory_fraction) if backend == "chunked" else {}
    per_token = backends.function("kl", backend)(
        xs, student_weight, student_bias, xo, wo, bo, xa, wa, ba, alpha=float(loss.alpha),
        direction=objective.kernel_divergence, grad_in_forward=reduction != "none", chunk_tokens=chunk_tokens,
        grad_filter=grad_filter, transforms=transforms, **budget,
        **oi.kernel_objective_kwargs(objective, targets, shift))
    return reduce_counted(per_token, counted, lead_shape, reduction)


def _target_shift(objective, targets, xo, wo, bo, teacher_transform, backend, chunk_tokens):
    """[N] shift of the teacher's logit at each target (None without an edit). Unilogit's "uniform" edit needs
    the teacher's p(target) before the edit: from the teacher's (for the self teacher, the student's detached)
    hidden states, weight, bias and transform, without gradient (uniform_shift.py)."""
    if objective.target_edit != "uniform":
        dtype = torch.float64 if xo.dtype == torch.float64 else torch.float32
        return oi.fixed_target_shift(objective, xo.shape[0], dtype, xo.device)
    return uniform_target_shift(xo, wo, bo, targets, teacher_transform, kl_backend=backend, chunk_tokens=chunk_tokens)


class FusedLinearUnlearningKL(torch.nn.Module):
    """Module form of :func:`fused_linear_unlearning_kl` holding the loss options (alpha, direction or the
    objective, the logit transforms: ``loss_options.py``), reduction and backend."""

    def __init__(self, alpha: float = 8.0, direction: str = "reverse", ignore_index: int = -100,
                 reduction: str = "mean", backend: str = "auto", **options):
        super().__init__()
        self.loss = LossOptions.of("FusedLinearUnlearningKL", dict(options, alpha=alpha, direction=direction))
        # What can be checked without the inputs (the augmented model and labels are the call's).
        self.loss.resolve(reduction, augmented=False, labels=True)
        backends.check_name(backend, "kl")
        self.ignore_index, self.reduction, self.backend = ignore_index, reduction, backend

    @property
    def alpha(self) -> float:
        return self.loss.alpha

    @property
    def direction(self) -> str:
        return self.loss.direction

    def forward(self, student_hidden, student_weight, original_hidden=None, original_weight=None,
                augmented_hidden=None, augmented_weight=None, labels=None, **biases):
        return fused_linear_unlearning_kl(
            student_hidden, student_weight, original_hidden, original_weight, augmented_hidden, augmented_weight,
            labels=labels, ignore_index=self.ignore_index, reduction=self.reduction, backend=self.backend,
            **vars(self.loss), **biases)

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.loss.changed().items() if k not in ("alpha", "direction"))
        return (f"alpha={self.alpha}, direction={self.direction!r}, reduction={self.reduction!r}, "
                f"backend={self.backend!r}{extra}")
