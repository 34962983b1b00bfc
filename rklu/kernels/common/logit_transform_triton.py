"""The logit transforms of ``logit_transform.py`` inside the Triton kernels: ``z = scale * l`` (a runtime
float; ``x * 1.0 == x`` exactly, so scale 1 leaves every logit bitwise as it was), then, when the constexpr
``HAS_SOFTCAP`` is set, ``z = cap * tanh(z / cap)`` (without it no softcap code is compiled).

tanh in fp32 from core ``tl`` operations: libdevice's ``tanh`` (what Cut-Cross-Entropy's ``tl_tanh`` and
Liger's cross entropy call) does not run under the CPU interpreter the tests use. The formulation is
Cephes' ``tanhf`` (S. L. Moshier, Cephes Math Library, tanhf.c; also in xsimd, Eigen's and Dr.Jit's
vectorized tanh): for |u| < 0.625 the odd polynomial
``u + u^3 * P(u^2)`` (no cancellation near 0, where ``(1 - e) / (1 + e)`` would lose all digits of small
logits), else ``1 - 2 e / (1 + e)`` with ``e = exp(-2|u|)`` <= 0.29, which never overflows (the division is
``tl.fdiv``, CUDA's ``div.full.f32``, 2 ulp: an IEEE one would add a slow-path call and a stack frame) (Cephes writes
``1 - 2 / (exp(2|u|) + 1)``, which overflows to the same 1 for |u| > 44). Max relative error ~2e-7 against
the float64 tanh (tests/kernels/test_logit_transform.py checks it over the whole fp32 range).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tanh(u):
    a = tl.abs(u)
    small = tl.where(a < 0.625, u, 0.0)  # the polynomial never sees huge arguments (u^2 would overflow)
    s2 = small * small
    poly = ((((-5.70498872745e-3 * s2 + 2.06390887954e-2) * s2 - 5.37397155531e-2) * s2
             + 1.33314422036e-1) * s2 - 3.33332819422e-1) * s2 * small + small
    e = tl.exp(-2.0 * tl.minimum(a, 20.0))  # beyond |u| = 9, 1 - 2e / (1 + e) is 1 in fp32 anyway
    big = 1.0 - tl.fdiv(2.0 * e, 1.0 + e)
    return tl.where(a < 0.625, poly, tl.where(u < 0, -big, big))


@triton.jit
def _transform(l, scale, cap, inv_cap, HAS_SOFTCAP: tl.constexpr):
    """The model's logits from the fp32 tile ``l = x @ W.T (+ b)``; ``inv_cap`` = 1 / cap, rounded once on the
    host (no division in the kernels: an IEEE fp32 division compiles to a slow-path call with a stack frame)."""
    z = l * scale
    if HAS_SOFTCAP:
        z = cap * _tanh(z * inv_cap)
    return z


@triton.jit
def _transform_with_grad(l, scale, cap, inv_cap, HAS_SOFTCAP: tl.constexpr):
    """(z, dz/dl) from the raw tile: z bitwise as :func:`_transform` gives it, and the factor
    scale * (1 - tanh(u)^2) from u itself, as 4 e / (1 + e)^2 with e = exp(-2|u|) where the tanh saturates
    (1 - t^2 from a rounded t near 1 keeps only the digits of its last ulps)."""
    z = _transform(l, scale, cap, inv_cap, HAS_SOFTCAP)
    if HAS_SOFTCAP:
        u = (l * scale) * inv_cap
        a = tl.minimum(tl.abs(u), 20.0)
        e = tl.exp(-2.0 * a)
        t = z * inv_cap
        sech2 = tl.where(a < 0.625, 1.0 - t * t, tl.fdiv(4.0 * e, (1.0 + e) * (1.0 + e)))
        factor = scale * sech2
    else:
        factor = tl.zeros_like(l) + scale
    return z, factor


@triton.jit
def _transform_grad(g, z, scale, cap, inv_cap, HAS_SOFTCAP: tl.constexpr):
    """d loss / d l from ``g`` = d loss / d z and the transformed tile ``z`` alone (for kernels that cannot
    keep the raw tile): times scale * (1 - (z / cap)^2), the tanh derivative from its value as in
    Cut-Cross-Entropy's ``tl_softcapping_grad`` and Liger, written (cap - z)(cap + z) / cap^2: cap - |z| is
    exact (Sterbenz) where the tanh saturates, one rounding fewer than forming z / cap first."""
    if HAS_SOFTCAP:
        out = g * ((scale * inv_cap * inv_cap) * ((cap - z) * (cap + z)))
    else:
        out = g * scale
    return out
