"""Chunked cuBLAS backend (``backend="chunked"``): Liger's structure -- the gradient is computed in the
forward pass, a chunk of tokens at a time -- but the logits are never rounded to bf16.

Per chunk of tokens:
  1. GEMMs with float32 output from the bf16/fp16 inputs (``torch.mm(x, w.T, out_dtype=torch.float32)``
     on CUDA: tensor cores, fp32 accumulation, fp32 result) for the student and, with a model teacher, the
     original and augmented logits, each model in its own dtype (an fp32 teacher of a bf16 student is not
     rounded to bf16); a self teacher (the student's own logits) or a one-hot labels teacher needs no GEMM;
  2. ONE Triton kernel (``chunk_row_kernel.py``) reads the fp32 logit tiles (plus biases) to build the teacher
     and the online log-sum-exps of student and teacher and the divergence (the JSD in a second pass, once
     the normalizers are known), then once more, to write the gradient d loss / d student logits in the
     input dtype (in the opposite order of the last pass: those blocks are the likeliest to be still in L2);
  3. two GEMMs for the gradient: dX[chunk] = G @ W_s and dW += G.T @ X_s[chunk] (fp32 outputs/accumulator).
Five cuBLAS GEMMs per chunk with an augmented model teacher, O(chunk * V) extra memory (the fp32 logit
buffers and one gradient buffer), plus O(N * H + V * H) for the fp32 gradient accumulators every backend
returns.

Unlike the fused kernel (``triton_fused``, O(N) memory, recomputes the logits in the backward), this path
spends O(chunk * V) memory to run every GEMM through cuBLAS at full tensor-core rate and never recompute.
Where it pays is decided by ``backend="auto"`` (``common/backends.auto_backend``) from the free memory and
the cost model in ``common/cost_model.py`` (its estimates: benchmarks/results/roofline.md).

Numerics: statistics are accumulated relative to the running maxima (no subtraction of two offset-sized
numbers, so a common offset of 1e4 on the teacher logits costs no accuracy); the gradient tile (e.g.
``p_s * ((z_s - m_s) - (z_t - m_t) - E_ps[...])`` for the reverse KL, ``p_s - p_t`` for the forward) is
computed in fp32 and rounded once to the input dtype as eager autograd would, but from fp32 logits.

On CPU (tests, under TRITON_INTERPRET=1) ``torch.mm`` has no ``out_dtype``: 16-bit operands are upcast to
fp32 first, which is exact (bf16/fp16 -> fp32) and accumulates in fp32 like the CUDA path.
"""
from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from ..common import logit_transform as lt
from ..common.compile_spec import CompileSpec
from ..common.tiles import gemm_dtype, to_dtype
from .chunk_policy import ChunkPlan, plan_chunks
from .chunk_row_kernel import (  # noqa: F401  (TUNED_KERNELS, block_sizes: read by benchmarks and tests)
    DIVERGENCE_CODES, TEACHER_CODES, TUNED_KERNELS, _chunk_kernel, autotune_configs, block_sizes, run_chunk_kernel,
)


# Chunk sizes come from a memory budget (chunk_policy.py): by default no more extra memory than Liger's
# FusedLinearJSD for the same shape, the gradient buffer sized apart from the logit buffers.


# ---- GEMMs with fp32 output ----------------------------------------------------------------------------------

def _has_out_dtype(device: torch.device) -> bool:
    """cuBLAS bf16/fp16 GEMMs with an fp32 result (torch >= 2.8: ``torch.mm(..., out_dtype=)``) on CUDA."""
    return device.type == "cuda" and hasattr(torch.ops.aten.mm, "dtype")


_ADDMM_OUT_DTYPE = True


class _Gemms:
    """fp32-output GEMMs from the input dtype. CUDA + 16-bit: cuBLAS with ``out_dtype=float32`` (tensor cores,
    fp32 accumulation, no rounding of the result). Elsewhere (CPU, torch without out_dtype, fp32 inputs):
    operands in fp32 -- upcasting bf16/fp16 is exact, so the result differs only in summation order."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.native = dtype in (torch.bfloat16, torch.float16) and _has_out_dtype(device)

    def operand(self, t: torch.Tensor) -> torch.Tensor:
        """A weight as it enters the GEMMs (converted once per call, not once per chunk)."""
        return t if self.native or t.dtype == torch.float32 else t.float()

    def mm(self, a, b, out):
        if self.native:
            return torch.mm(a, b, out_dtype=torch.float32, out=out)
        return torch.mm(a.float(), b.float(), out=out)

    def accumulate(self, acc, a, b, first: bool):
        """acc = a @ b on the first chunk (beta = 0: no zero-fill, no read of the accumulator), else acc += a @ b."""
        return self.mm(a, b, acc) if first else self.addmm_(acc, a, b)

    def addmm_(self, acc, a, b):
        """acc += a @ b, acc float32 (cuBLAS accumulates into it in place: beta = 1)."""
        global _ADDMM_OUT_DTYPE
        if self.native:
            if _ADDMM_OUT_DTYPE:
                try:
                    return torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
                except (RuntimeError, TypeError):  # a torch without addmm.dtype_out into its own input
                    _ADDMM_OUT_DTYPE = False
            return acc.add_(torch.mm(a, b, out_dtype=torch.float32))
        return acc.addmm_(a.float(), b.float())


def default_chunk_plan(n: int, h: int, v: int, grad_bytes: int, device: torch.device, augmented: bool = True,
                       free_bytes: int | None = None, **knobs) -> ChunkPlan:
    """``chunk_policy.plan_chunks`` with the free GPU memory read from the device on CUDA (None elsewhere).
    ``knobs``: max_chunk_bytes, memory_fraction, chunk_tokens, teacher_gemm."""
    if free_bytes is None and device.type == "cuda":
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return plan_chunks(n, h, v, grad_bytes, augmented, free_bytes=free_bytes, **knobs)


def default_chunk_tokens(n: int, h: int, v: int, grad_bytes: int, device: torch.device, augmented: bool = True,
                         free_bytes: int | None = None, **knobs) -> int:
    """Tokens per logit chunk of ``default_chunk_plan``."""
    return default_chunk_plan(n, h, v, grad_bytes, device, augmented, free_bytes, **knobs).logit_tokens


def unlearning_kl(xs, ws, bs, xo, wo, bo, xa, wa, ba, *, alpha, direction, grad_in_forward, chunk_tokens,
                  grad_filter, transforms=(lt.IDENTITY,) * 3, teacher_source="models", jsd_beta=0.5, targets=None,
                  target_shift=None, max_chunk_bytes=None, memory_fraction=None):
    """The KL op of backend "chunked" (common/backends.py; the objective's arguments: kl/objective.py). Dense
    gradients: ``grad_filter`` does not apply. Each model's GEMMs run in its own dtype (``gemm_dtype`` of its
    hidden states and weight): an fp32 teacher of a bf16 student is not rounded. A "self" or "labels"
    teacher runs no teacher GEMM (xo, wo, bo are not read). Chunks: ``chunk_policy.plan_chunks`` under the
    given knobs."""
    _check_objective(direction, teacher_source, targets, target_shift, xs.shape[0])
    xs, ws = to_dtype(gemm_dtype(xs, ws), xs, ws)
    if teacher_source == "models":
        xo, wo = to_dtype(gemm_dtype(xo, wo), xo, wo)
        if xa is not None:
            xa, wa = to_dtype(gemm_dtype(xa, wa), xa, wa)
    else:
        xo = wo = bo = xa = wa = ba = None
    chunking = dict(chunk_tokens=chunk_tokens, max_chunk_bytes=max_chunk_bytes, memory_fraction=memory_fraction)
    objective = dict(divergence=direction, teacher=teacher_source, jsd_beta=float(jsd_beta))
    if targets is not None:
        targets = targets.to(device=xs.device, dtype=torch.int64).contiguous()
    if target_shift is not None:
        target_shift = target_shift.to(device=xs.device, dtype=torch.float32).contiguous()
    return TritonChunkedUnlearningKL.apply(xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha, direction, grad_in_forward,
                                           chunking, transforms, objective, targets, target_shift)


def _check_objective(direction, teacher_source, targets, target_shift, n):
    """The backend's own preconditions (the API validates the objective itself): known names, and the target
    tensors its teacher needs, one per row."""
    if direction not in DIVERGENCE_CODES:
        raise ValueError(f"unknown direction {direction!r}; expected one of {tuple(DIVERGENCE_CODES)}")
    if teacher_source not in TEACHER_CODES:
        raise ValueError(f"unknown teacher_source {teacher_source!r}; expected one of {tuple(TEACHER_CODES)}")
    if targets is None and (teacher_source == "labels" or target_shift is not None):
        raise ValueError("teacher_source='labels' and target_shift need targets (int64 [N])")
    for name, t in (("targets", targets), ("target_shift", target_shift)):
        if t is not None and tuple(t.shape) != (n,):
            raise ValueError(f"{name} must have shape ({n},) (one per row), got {tuple(t.shape)}")


class TritonChunkedUnlearningKL(torch.autograd.Function):
    """Counted tokens only: [N, H_model] hidden states (each model its own H), lm_head weights [V, H_model]
    -> per-token loss [N] float32. With ``grad_in_forward`` (mean/sum reductions: one upstream weight for
    every token) the gradient is computed in the forward pass and backward only rescales it; with
    ``reduction="none"`` backward recomputes each chunk's logits with the per-token weights."""

    @staticmethod
    def forward(ctx, xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha, direction, grad_in_forward, chunking=None,
                transforms=(lt.IDENTITY,) * 3, objective=None, targets=None, target_shift=None):
        objective = objective or dict(divergence=direction)
        need_grad = any(ctx.needs_input_grad[:3])
        in_forward = grad_in_forward and need_grad
        with torch.no_grad(), torch.autocast(xs.device.type, enabled=False):
            loss, grads = _run(xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha, objective, chunking,
                               row_weights=None, need_grad=in_forward, transforms=transforms,
                               targets=targets, target_shift=target_shift)
        ctx.alpha, ctx.objective, ctx.chunking, ctx.transforms = alpha, objective, chunking, transforms
        ctx.grad_in_forward = in_forward
        ctx.dtypes = (xs.dtype, ws.dtype, None if bs is None else bs.dtype)
        if in_forward:
            ctx.save_for_backward(*grads)
        else:
            ctx.save_for_backward(xs, ws, bs, xo, wo, bo, xa, wa, ba, targets, target_shift)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        no_grads = (None,) * 14  # the teachers, alpha, direction, flags, chunking, transforms, objective, targets
        if ctx.grad_in_forward:
            dx, dw, db = ctx.saved_tensors
            scale = grad_loss[0].float() if grad_loss.numel() else torch.zeros((), device=dx.device)
            # One pass per gradient: scaled and rounded to the parameter dtype together (the fp32 dW alone is
            # V x H x 4 bytes; a separate multiply and cast would read and write it twice more).
            return (_scaled(dx, scale, x_dtype), _scaled(dw, scale, w_dtype),
                    None if db is None else _scaled(db, scale, b_dtype), *no_grads)
        else:
            xs, ws, bs, xo, wo, bo, xa, wa, ba, targets, target_shift = ctx.saved_tensors
            with torch.no_grad(), torch.autocast(xs.device.type, enabled=False):
                _, (dx, dw, db) = _run(xs, ws, bs, xo, wo, bo, xa, wa, ba, ctx.alpha, ctx.objective,
                                       ctx.chunking, row_weights=grad_loss.float().contiguous(), need_grad=True,
                                       transforms=ctx.transforms, targets=targets, target_shift=target_shift)
        return (dx.to(x_dtype), dw.to(w_dtype), None if db is None else db.to(b_dtype), *no_grads)


@triton.jit
def _scale_cast_kernel(SRC, SCALE, DST, numel, BLOCK: tl.constexpr):
    """DST = (SRC * SCALE[0]).to(DST dtype): fp32 multiply, one rounding, the scale read on the device."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    scale = tl.load(SCALE)
    x = tl.load(SRC + offs, mask=mask, other=0.0)
    tl.store(DST + offs, (x * scale).to(DST.dtype.element_ty), mask=mask)


SCALE_CAST_CONFIG = dict(BLOCK=4096, num_warps=8)


def _scaled(grad: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """grad * scale in ``dtype``, one pass over the fp32 gradient (torch's mixed-dtype ``mul(out=bf16)`` is a
    non-vectorized kernel, well below the bandwidth this pass needs)."""
    out = torch.empty(grad.shape, dtype=dtype, device=grad.device)
    if not grad.is_cuda:  # CPU tensors (TRITON_INTERPRET=1): torch rounds fp32 -> bf16 to nearest like CUDA
        return torch.mul(grad, scale, out=out)   # does; the interpreter's conversion truncates
    if grad.numel():
        scale = scale.reshape(1).to(device=grad.device, dtype=torch.float32)
        _scale_cast_kernel[(triton.cdiv(grad.numel(), SCALE_CAST_CONFIG["BLOCK"]),)](
            grad, scale, out, grad.numel(), **SCALE_CAST_CONFIG)
    return out


_LAST_PLAN: list = []


def last_chunk_plan() -> ChunkPlan | None:
    """The chunk plan of the most recent chunked call (None before any), for reports."""
    return _LAST_PLAN[-1] if _LAST_PLAN else None


def last_chunk_tokens() -> int | None:
    """Tokens per logit chunk of the most recent chunked call (None before any)."""
    return _LAST_PLAN[-1].logit_tokens if _LAST_PLAN else None


def _run(xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha, objective, chunking, row_weights, need_grad,
         transforms=(lt.IDENTITY,) * 3, targets=None, target_shift=None):
    """Loss [N] and, when ``need_grad``, fp32 (dX, dW, dB) weighted per token by ``row_weights`` (None: 1).
    ``objective``: divergence, teacher, jsd_beta (``chunk_row_kernel.run_chunk_kernel``'s keywords);
    ``chunking``: the knobs of ``chunk_policy.plan_chunks`` (chunk_tokens, max_chunk_bytes, memory_fraction)."""
    device = xs.device
    models = objective.get("teacher", "models") == "models"
    xs = xs.contiguous()
    xo = xo.contiguous() if models else None
    xa = xa.contiguous() if models and xa is not None else None
    n, v = xs.shape[0], ws.shape[0]
    # One GEMM mode per model: each model's logits from its own dtype (a fp32 teacher of a bf16 student is
    # not rounded), all with fp32 output.
    gemm = _Gemms(device, xs.dtype)
    wst = gemm.operand(ws).T
    if models:
        gemm_o = _Gemms(device, xo.dtype)
        gemm_a = None if xa is None else _Gemms(device, xa.dtype)
        wot = gemm_o.operand(wo).T
        wat = None if wa is None else gemm_a.operand(wa).T
    grad_dtype = xs.dtype if xs.dtype in (torch.bfloat16, torch.float16) else torch.float32
    # A self or labels teacher holds one logit buffer (the student's), and the plan counts just that.
    plan = default_chunk_plan(n, xs.shape[1], v, torch.finfo(grad_dtype).bits // 8, device, xa is not None,
                              teacher_gemm=models, **(chunking or {}))
    _LAST_PLAN[:] = [plan]
    chunk = plan.logit_tokens
    # G block: the rows whose gradient is written before one dX GEMM and one dW accumulation (whole logit
    # chunks, or all N); without a gradient the logit chunks run back to back.
    block = plan.grad_tokens if need_grad else n
    zs_buf = torch.empty((chunk, v), dtype=torch.float32, device=device)
    zo_buf = torch.empty_like(zs_buf) if models else None
    za_buf = None if xa is None else torch.empty_like(zs_buf)
    g_buf = torch.empty((block, v), dtype=grad_dtype, device=device) if need_grad else None
    ones = torch.ones(chunk, dtype=torch.float32, device=device) if need_grad and row_weights is None else None
    loss = torch.empty(n, dtype=torch.float32, device=device)
    if need_grad:
        dx = torch.empty((n, xs.shape[1]), dtype=torch.float32, device=device)
        dw = torch.empty(ws.shape, dtype=torch.float32, device=device)  # the first block writes it
        db = None if bs is None else torch.zeros(v, dtype=torch.float32, device=device)
        ws_op = gemm.operand(ws)
    for block_start in range(0, n, block):
        block_end = min(n, block_start + block)
        for start in range(block_start, block_end, chunk):
            end = min(block_end, start + chunk)
            m = end - start
            zs = zs_buf[:m]
            gemm.mm(xs[start:end], wst, zs)
            zo = za = None
            if models:
                zo = zo_buf[:m]
                gemm_o.mm(xo[start:end], wot, zo)
            if xa is not None:
                za = za_buf[:m]
                gemm_a.mm(xa[start:end], wat, za)
            g = None if g_buf is None else g_buf[start - block_start:end - block_start]
            weights = None
            if need_grad:
                weights = ones[:m] if row_weights is None else row_weights[start:end]
            run_chunk_kernel(zs, zo, za, bs, bo, ba, weights, g, loss[start:end], alpha, need_grad, transforms,
                             targets=None if targets is None else targets[start:end],
                             shifts=None if target_shift is None else target_shift[start:end], **objective)
        if need_grad:
            g = g_buf[:block_end - block_start]
            gemm.mm(g, ws_op, dx[block_start:block_end])
            gemm.accumulate(dw, g.T, xs[block_start:block_end], first=block_start == 0)
            if db is not None:
                db += g.sum(0, dtype=torch.float32)
    return loss, ((dx, dw, db) if need_grad else None)


# ---- compile specs (benchmarks/gpu_compile.py) -------------------------------------------------------------

def _objective_variants():
    """(divergence, teacher, target shift, augmented, bias, softcap) of the chunk kernel's compile matrix:
    every divergence of a model teacher over augmented x bias x softcap (every model's: the heaviest case of
    the per-model HAS_SOFTCAP_* flags), then each other teacher source and target edit a method can ask for
    (not the reverse KL or argmax CE of a one-hot teacher, which the API refuses), at its heaviest flags."""
    for divergence in ("reverse", "forward", "jsd", "argmax_ce"):
        for aug, bias, softcap in itertools.product((True, False), repeat=3):
            yield divergence, "models", False, aug, bias, softcap
    for divergence in ("reverse", "forward", "jsd", "argmax_ce"):
        yield divergence, "models", True, True, True, True
        for shift in (False, True):
            yield divergence, "self", shift, False, True, True
    for divergence in ("forward", "jsd"):
        yield divergence, "labels", False, False, True, True


def compile_specs() -> list[CompileSpec]:
    """The chunk kernel over dtype x ``_objective_variants()``, with every CUDA config. Variant names: the
    divergence, the teacher ("aug"/"no-aug" for the models, "self", "labels"), "bias"/"no-bias", then
    "softcap" and "shift" (a target shift) when set."""
    specs = []
    names = _chunk_kernel.arg_names
    transform_args = {f"{arg}_{m}" for m in "soa" for arg in ("logit_scale", "softcap", "inv_softcap")}
    for dtype in ("bf16", "fp32"):
        for divergence, teacher, shift, aug, bias, softcap in _objective_variants():
            models = teacher == "models"
            sig = {}
            for a in names:
                if a in ("ZS", "ZO", "ZA", "ROW_SCALE", "LOSS", "SHIFTS"):
                    sig[a] = "*fp32"
                elif a == "TARGETS":
                    sig[a] = "*i64"
                elif a in ("BS", "BO", "BA", "G"):
                    sig[a] = f"*{dtype}"
                elif a in ("alpha", "jsd_beta", "log_beta", "log_1m_beta") or a in transform_args:
                    sig[a] = "fp32"
                elif a in ("n_rows", "V", "stride_z", "stride_g"):
                    sig[a] = "i32"
                else:
                    sig[a] = "constexpr"
            constexprs = dict(HAS_AUG=aug, HAS_BS=bias, HAS_BO=bias and models, HAS_BA=bias and aug,
                              HAS_SOFTCAP_S=softcap, HAS_SOFTCAP_O=softcap and models,
                              HAS_SOFTCAP_A=softcap and aug, DIVERGENCE=DIVERGENCE_CODES[divergence],
                              TEACHER=TEACHER_CODES[teacher], HAS_TARGET_SHIFT=shift, WRITE_GRAD=True)
            source = ("aug" if aug else "no-aug") if models else teacher
            variant = ",".join([divergence, source, "bias" if bias else "no-bias"] + (["softcap"] if softcap else [])
                               + (["shift"] if shift else []))
            specs.append(CompileSpec(
                kernel="chunked_unlearning_kl", fn=_chunk_kernel, signature=sig, constexprs=constexprs,
                configs=tuple(autotune_configs(divergence, teacher, shift)), dtype=dtype, variant=variant,
                divisible=("ZS", "ZO", "ZA", "BS", "BO", "BA", "TARGETS", "SHIFTS", "ROW_SCALE", "G", "LOSS", "V",
                           "stride_z", "stride_g")))
    for dtype in ("bf16", "fp32"):
        specs.append(CompileSpec(
            kernel="chunked_scale_cast", fn=_scale_cast_kernel,
            signature=dict(SRC="*fp32", SCALE="*fp32", DST=f"*{dtype}", numel="i64", BLOCK="constexpr"),
            constexprs={}, dtype=dtype, variant="-",
            configs=(triton.Config(dict(BLOCK=SCALE_CAST_CONFIG["BLOCK"]),
                                   num_warps=SCALE_CAST_CONFIG["num_warps"]),),
            divisible=("SRC", "SCALE", "DST")))
    return specs
