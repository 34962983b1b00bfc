"""Input checks shared by every backend: bad input raises ValueError naming the problem."""
from __future__ import annotations

import torch

DIRECTIONS = ("reverse", "forward")
REDUCTIONS = ("mean", "sum", "none")


def check_direction_reduction(direction: str, reduction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")


def check_alpha(alpha: float) -> None:
    if not isinstance(alpha, (int, float)) or alpha != alpha or alpha < 0:
        raise ValueError(f"alpha must be a non-negative number, got {alpha!r}")


def check_finite(name: str, tensor: torch.Tensor | None) -> None:
    if tensor is not None and tensor.numel() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or inf values")


def check_linear_inputs(
    student_hidden, student_weight, student_bias,
    original_hidden, original_weight, original_bias,
    augmented_hidden, augmented_weight, augmented_bias,
    labels,
) -> None:
    """Shapes, dtypes and devices of the (hidden, weight, bias) triples of the student and teachers."""
    if (augmented_hidden is None) != (augmented_weight is None):
        raise ValueError("augmented_hidden and augmented_weight must be given together (or both None)")
    triples = [("student", student_hidden, student_weight, student_bias),
               ("original", original_hidden, original_weight, original_bias)]
    if augmented_hidden is not None:
        triples.append(("augmented", augmented_hidden, augmented_weight, augmented_bias))
    elif augmented_bias is not None:
        raise ValueError("augmented_bias given without augmented_hidden/augmented_weight")

    device = student_hidden.device
    lead = tuple(student_hidden.shape[:-1])
    vocab = None
    for name, hidden, weight, bias in triples:
        for part, t in ((f"{name}_hidden", hidden), (f"{name}_weight", weight), (f"{name}_bias", bias)):
            if t is None:
                continue
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{part} must be a torch.Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise ValueError(f"{part} must be a floating-point tensor, got dtype {t.dtype}")
            if t.device != device:
                raise ValueError(f"{part} is on {t.device} but student_hidden is on {device}: put all tensors on one device")
        if hidden.dim() < 1 or weight.dim() != 2:
            raise ValueError(f"{name}_weight must be 2-D [V, H], got shape {tuple(weight.shape)}")
        if hidden.shape[-1] != weight.shape[1]:
            raise ValueError(
                f"hidden size mismatch: {name}_hidden has H={hidden.shape[-1]} but {name}_weight is "
                f"{tuple(weight.shape)} (expected [V, {hidden.shape[-1]}])")
        if tuple(hidden.shape[:-1]) != lead:
            raise ValueError(
                f"leading shape mismatch: {name}_hidden has {tuple(hidden.shape[:-1])}, student_hidden has {lead}")
        if vocab is None:
            vocab = weight.shape[0]
        elif weight.shape[0] != vocab:
            raise ValueError(f"vocab size mismatch: {name}_weight has V={weight.shape[0]}, student_weight has V={vocab}")
        if bias is not None and tuple(bias.shape) != (vocab,):
            raise ValueError(f"{name}_bias must have shape ({vocab},), got {tuple(bias.shape)}")
    if labels is not None:
        if not isinstance(labels, torch.Tensor):
            raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        if tuple(labels.shape) != lead:
            raise ValueError(f"labels shape {tuple(labels.shape)} must equal the hidden states' leading shape {lead}")
        if labels.device != device:
            raise ValueError(f"labels is on {labels.device} but student_hidden is on {device}")


def check_logit_inputs(student_logits, original_logits, augmented_logits, labels) -> None:
    device = student_logits.device
    for name, t in (("original_logits", original_logits), ("augmented_logits", augmented_logits)):
        if t is None:
            continue
        if t.shape != student_logits.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} differs from student_logits {tuple(student_logits.shape)}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but student_logits is on {device}")
    if labels is not None and tuple(labels.shape) != tuple(student_logits.shape[:-1]):
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal the logits' leading shape {tuple(student_logits.shape[:-1])}")


def model_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype a model's lm_head GEMM runs in: the autocast dtype when autocast is on (what lm_head would
    use), else the wider of its hidden states' and weight's dtypes (as ``tiles.gemm_dtype``)."""
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def mixed_precision_teachers(xs, ws, xo, wo, xa=None, wa=None) -> list[str]:
    """Teachers whose GEMM dtype is wider than the student's (e.g. fp32 teacher, bf16 student): one-dtype
    kernels would round them to the student's dtype. Each as "name (dtype)"."""
    student = model_dtype(xs, ws)
    wider = []
    for name, x, w in (("original", xo, wo), ("augmented", xa, wa)):
        if x is None:
            continue
        dtype = model_dtype(x, w)
        if torch.promote_types(dtype, student) != student:
            wider.append(f"{name} ({dtype})")
    return wider


def check_no_teacher_rounding(xs, ws, xo, wo, xa=None, wa=None) -> None:
    """The fused Triton kernel runs every GEMM in one dtype (its tiles share one tl.dot mode): a teacher in a
    wider dtype than the student would be rounded to the student's. Refuse that before any work."""
    wider = mixed_precision_teachers(xs, ws, xo, wo, xa, wa)
    if wider:
        raise ValueError(
            f"backend='triton' computes every model in the student's dtype ({model_dtype(xs, ws)}), but the "
            f"teacher {' and '.join(wider)} {'is' if len(wider) == 1 else 'are'} wider: its logits would be "
            "rounded. Use backend='chunked' or 'torch' (each model's GEMM in its own dtype), or cast the teacher "
            "to the student's dtype yourself.")
