"""Logit transforms some heads apply after the lm_head, per model: ``z = scale * (h @ W.T + b)``, then, with a
softcap ``c``, ``z = c * tanh(z / c)``; always in float32 (float64 stays float64).

Where they come from (transformers' modeling code): Cohere's ``logit_scale`` multiplies; Granite's
``logits_scaling`` divides (pass its inverse as the scale); Gemma2/Gemma3 ``final_logit_softcapping`` and
RecurrentGemma's ``logits_soft_cap`` are ``c * tanh(z / c)`` after any scale. The chain rule factor of the
student's gradient is ``dz/dl = scale * (1 - tanh(u)^2)`` with ``u = scale * l / c``, written from the capped
value as ``scale * (1 - (z / c)^2)`` like Cut-Cross-Entropy (apple/ml-cross-entropy,
cut_cross_entropy/tl_utils.py ``tl_softcapping_grad``), Liger's cross entropy (liger_kernel/ops/
cross_entropy.py, ``1 - intermediate * intermediate``) and PyTorch's own ``tanh_backward``.

The identity (scale 1, no softcap) is skipped by the torch backends and multiplied through by the Triton
ones: ``x * 1.0 == x`` exactly in IEEE arithmetic (also inside a fused multiply-add), so default arguments
give bitwise the results of the kernels without transforms.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

MODELS = ("student", "original", "augmented")


@dataclass(frozen=True)
class LogitTransform:
    """One model's transform: multiply by ``scale``, then softcap at ``softcap`` (None: no softcap)."""

    scale: float = 1.0
    softcap: float | None = None

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def kernel_args(self) -> tuple[float, float, float, bool]:
        """(scale, softcap, 1 / softcap, HAS_SOFTCAP) as the Triton kernels take them (softcap 1 when unused)."""
        cap = 1.0 if self.softcap is None else self.softcap
        return self.scale, cap, 1.0 / cap, self.softcap is not None


IDENTITY = LogitTransform()


def kernel_args(transforms) -> tuple[tuple, tuple]:
    """Per model (student, original, augmented): the runtime floats (scale, softcap, 1 / softcap, each model
    in turn) and the HAS_SOFTCAP flags, for the Triton kernels."""
    args = [t.kernel_args() for t in transforms]
    return tuple(a for per_model in args for a in per_model[:3]), tuple(per_model[3] for per_model in args)


def logit_transform(name: str, scale, softcap) -> LogitTransform:
    """Validated transform of model ``name`` ("" for a single-model op): ``scale`` a finite number > 0,
    ``softcap`` None or finite > 0. ValueError naming the argument otherwise (a zero scale would make every
    distribution uniform, a negative one would reverse the vocabulary, NaN/inf poison every logit)."""
    prefix = f"{name}_" if name else ""
    if not _real(scale) or not math.isfinite(float(scale)) or float(scale) <= 0:
        raise ValueError(f"{prefix}scale must be a finite number > 0 (a divisor is passed as its inverse), "
                         f"got {scale!r}")
    if softcap is not None and (not _real(softcap) or not math.isfinite(float(softcap)) or float(softcap) <= 0):
        raise ValueError(f"{prefix}softcap must be None or a finite number > 0, got {softcap!r}")
    return LogitTransform(float(scale), None if softcap is None else float(softcap))


def model_transforms(student_scale, student_softcap, original_scale, original_softcap, augmented_scale,
                     augmented_softcap) -> tuple[LogitTransform, LogitTransform, LogitTransform]:
    """(student, original, augmented) transforms from the public keyword arguments, each checked by name."""
    return (logit_transform("student", student_scale, student_softcap),
            logit_transform("original", original_scale, original_softcap),
            logit_transform("augmented", augmented_scale, augmented_softcap))


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def apply(logits: torch.Tensor, transform: LogitTransform) -> torch.Tensor:
    """The transformed logits (differentiable); the identity returns ``logits`` itself."""
    if transform.identity:
        return logits
    z = logits * transform.scale if transform.scale != 1.0 else logits
    if transform.softcap is not None:
        z = torch.tanh(z / transform.softcap) * transform.softcap
    return z


def apply_(logits: torch.Tensor, transform: LogitTransform, need_factor: bool = False):
    """In place on a scratch buffer: (transformed logits, dz/dl or None). The factor is a tensor with a softcap,
    the float ``scale`` without one (None for the identity, whose factor is 1)."""
    if transform.scale != 1.0:
        logits.mul_(transform.scale)
    if transform.softcap is None:
        return logits, (transform.scale if need_factor and transform.scale != 1.0 else None)
    t = logits.div_(transform.softcap).tanh_()
    factor = None
    if need_factor:
        # 1 - t^2 = (1 - t)(1 + t): no cancellation of t^2 against 1 beyond t's own rounding.
        factor = (1 - t) * (1 + t)
        if transform.scale != 1.0:
            factor.mul_(transform.scale)
    return t.mul_(transform.softcap), factor


def chain(grad: torch.Tensor, factor) -> torch.Tensor:
    """d loss / d logits from d loss / d transformed logits, in place (``factor`` from :func:`apply_`)."""
    return grad if factor is None else grad.mul_(factor)


def with_temperature(transform: LogitTransform, temperature: float) -> LogitTransform:
    """``transform`` followed by a division by ``temperature``: ``c tanh(s l / c) / T = (c/T) tanh((s/T) l / (c/T))``
    exactly, so the temperature folds into scale and softcap (T = 1 returns ``transform`` itself)."""
    if temperature == 1.0:
        return transform
    return LogitTransform(transform.scale / temperature,
                          None if transform.softcap is None else transform.softcap / temperature)
