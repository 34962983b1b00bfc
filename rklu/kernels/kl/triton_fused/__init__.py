"""Triton backend: the fused linear unlearning KL, tiled over tokens x vocab, never building [N, V].

The pieces, one file each:
  common/tiles.py           logit / teacher tiles (one H loop per model, each model its own H), grouped order
  forward.py                forward: (token block x vocab split) programs -> [splits, N, 5] partial
                            statistics, merged by ``combine_partials`` (O(N * splits) torch ops)
  backward.py               backward: (token block x vocab block) tiles, each recomputing its logits once;
                            dX/dW by fp32 atomics, or (deterministic mode) the gradient of a token chunk
                            written to a [chunk, V] buffer and torch.mm for dX/dW; gradient filtering
  jsd.py                    the JSD's second forward pass (it needs both final log-normalizers): loss and
                            S = sum p_s g per (token block x vocab split), summed over the splits
  teacher.py                the objective's teacher inside the kernels: source (models / self / labels), the
                            per-token target shift, the constexpr codes of divergence and source
  configs.py                autotune lists (spill-free on sm_80/sm_90), fixed tiles, compile_specs()
This package's __init__: the autograd Function, launches, the vocabulary sort, the filter switch, the kept-tile counter.

Why recompute in backward instead of computing the gradient in the forward: the gradient tile needs the
final statistics of its rows, so a second pass over the logits is needed either way; putting it in the
backward keeps forward-only calls (evaluation, logging) at three GEMMs, lets ``reduction="none"`` weight
each token differently, and keeps memory beyond inputs and gradients O(N * splits) (the cuBLAS-chunked
backend, ``triton_chunked.py``, is the other trade-off: 5 GEMMs, O(chunk * V) memory).

Cost (per logit GEMM unit 2*N*V*H FLOPs): forward 3, backward 3 recomputed + 2 gradient = 8 units against
the dense floor of 5; with gradient filtering and a kept fraction f of backward tiles the backward is
1 (student) + f * (2 teacher + 2 gradient) for the reverse KL (the forward KL also always recomputes the
original: 2 + f * 3). ``grad_filter`` (default on; ``RKLU_GRAD_FILTER=0`` turns the default off) skips a
tile only when every gradient entry in it is below eps = finfo(dtype).eps / 32 (2^-12 in bf16, 2^-28 in
fp32), see backward.py. ``last_backward_tile_stats()`` reports the kept fraction.
The objective changes those counts: the self and labels teachers run no teacher GEMM (forward 1, backward
1 + 2), argmax_ce's backward none either (its target column is in the statistics), and the JSD needs both
final log-normalizers before its divergence, so its forward is the statistics pass plus a second pass over
the same tiles (jsd.py; 6 units with two teacher models).
Which backward: by default the store-G one (no fp32 atomics): per chunk of tokens the kernel
writes the gradient tile into a fixed 64 MiB [chunk, V] buffer and cuBLAS does dX/dW. ``RKLU_FUSED_BACKWARD=
atomic`` selects fp32 atomics for dX/dW (Cut-Cross-Entropy's way; it is the backward that sorts the
vocabulary, so the filter skips more tiles there). See ``store_backward``.
"""
from __future__ import annotations

import math
import os

import torch
import triton

from ...common import logit_transform as lt
from ...common.tiles import (  # noqa: F401  (re-exported)
    AUTOTUNE, GROUP, IEEE, INTERPRET, NATIVE, UPCAST, _mm, gemm_dtype, gemm_precision, to_dtype,
)
from ...common.validation import check_no_teacher_rounding
from ..triton_chunked import _Gemms
from .backward import _backward_kernel
from .configs import (
    autotune_configs, backward_configs, block_sizes, compile_specs, dtype_key, forward_configs, lean,
    vocab_split_size,
)
from .forward import NUM_STATS, _forward_kernel, combine_partials, jsd_combine, reference_logits
from .jsd import _jsd_kernel
from .teacher import ARGMAX, DIVERGENCE_CODES, JSD, LABELS, TEACHER_CODES

__all__ = ["TritonFusedUnlearningKL", "last_backward_tile_stats", "grad_filter_default", "compile_specs",
           "autotune_configs", "block_sizes", "TUNED_KERNELS"]

# CUDA only (AUTOTUNE): triton.autotune over the configs of configs.py, keyed on (H_S, H_O, V) -- the
# autotuner appends the dtypes of the tensor arguments, so the effective key includes the dtype. N is not
# in the key: one config per model head, whatever the batch. The interpreter keeps the fixed block_sizes()
# (autotuning would only time the Python interpreter); RKLU_TRITON_AUTOTUNE=0 uses them on CUDA too. The
# atomic backward accumulates into DX/DW/DB/COUNTER, so every timed trial starts from zeroed buffers
# (reset_to_zero; the autotuner zeroes them again before the real launch). Which config won is in
# ``<kernel>.cache`` ({key: Config}); benchmarks/bench_kernel.py records it.
_KEY = ["H_S", "H_O", "V"]

if AUTOTUNE:
    TUNED_KERNELS = {}
    # One autotuner per config list: the lists differ in tiles and register cap (configs.max_registers).
    for _dt in ("bf16", "fp32"):
        for _cap, _sfx in ((False, ""), (True, "_softcap")):
            TUNED_KERNELS[f"forward{_sfx}_{_dt}"] = triton.autotune(
                forward_configs(_dt, _cap), key=_KEY)(_forward_kernel)
            TUNED_KERNELS[f"forward_sorted{_sfx}_{_dt}"] = triton.autotune(
                forward_configs(_dt, _cap, sorted_vocab=True), key=_KEY)(_forward_kernel)
            TUNED_KERNELS[f"forward_lean{_sfx}_{_dt}"] = triton.autotune(
                forward_configs(_dt, _cap, lean_tiles=True), key=_KEY)(_forward_kernel)
            TUNED_KERNELS[f"forward_lean_sorted{_sfx}_{_dt}"] = triton.autotune(
                forward_configs(_dt, _cap, sorted_vocab=True, lean_tiles=True), key=_KEY)(_forward_kernel)
            TUNED_KERNELS[f"forward_jsd{_sfx}_{_dt}"] = triton.autotune(
                forward_configs(_dt, _cap, lean_tiles=True), key=_KEY)(_jsd_kernel)
            TUNED_KERNELS[f"forward_jsd_sorted{_sfx}_{_dt}"] = triton.autotune(
                forward_configs(_dt, _cap, sorted_vocab=True, lean_tiles=True), key=_KEY)(_jsd_kernel)
            TUNED_KERNELS[f"backward{_sfx}_{_dt}"] = triton.autotune(
                backward_configs(_dt, _cap), key=_KEY, reset_to_zero=["DX", "DW", "DB", "COUNTER"])(_backward_kernel)
            TUNED_KERNELS[f"backward_store{_sfx}_{_dt}"] = triton.autotune(
                backward_configs(_dt, _cap), key=_KEY, reset_to_zero=["COUNTER"])(_backward_kernel)
            TUNED_KERNELS[f"backward_lean{_sfx}_{_dt}"] = triton.autotune(
                backward_configs(_dt, _cap, lean_tiles=True), key=_KEY,
                reset_to_zero=["DX", "DW", "DB", "COUNTER"])(_backward_kernel)
            TUNED_KERNELS[f"backward_store_lean{_sfx}_{_dt}"] = triton.autotune(
                backward_configs(_dt, _cap, lean_tiles=True), key=_KEY, reset_to_zero=["COUNTER"])(_backward_kernel)
else:
    TUNED_KERNELS = {}

# Store backward: tokens per chunk of the [chunk, V] gradient buffer (2^25 elements, 64 MiB in bf16; 1024
# tokens at V=32000, enough rows for cuBLAS to run dX/dW near full rate).
DETERMINISTIC_CHUNK_ELEMENTS = 1 << 25


def _launch(name, kernel, grid_of, dtype_name, *args, **kwargs):
    """Launch ``kernel`` with the autotuned tiles on CUDA, else the fixed block_sizes();
    ``grid_of(meta)`` gives the grid from the chosen BLOCK_* values. A softcap on any model takes the
    softcap variants' config list."""
    softcap = any(kwargs[f"HAS_SOFTCAP_{m}"] for m in "SOA")
    tuned = TUNED_KERNELS.get(f"{name}{'_softcap' if softcap else ''}_{dtype_name}")
    if tuned is not None:
        return tuned[grid_of](*args, **kwargs)
    blocks = block_sizes(name, dtype_name, softcap)
    return kernel[grid_of(blocks)](*args, **kwargs, **blocks)


def grad_filter_default() -> bool:
    """The filter's default (``grad_filter=None``): on, unless the environment says RKLU_GRAD_FILTER=0."""
    return os.environ.get("RKLU_GRAD_FILTER", "1") != "0"


def filter_eps(dtype: torch.dtype) -> float:
    """Largest probability a skipped gradient entry can carry: finfo(dtype).eps / 32 (CCE's "auto")."""
    return torch.finfo(dtype).eps / 32


# Which backward runs when neither deterministic mode nor RKLU_FUSED_BACKWARD says: see store_backward().
# "store": at the same peak memory (its gradient buffer is a fixed 64 MiB) it avoids the atomic backward's
# N*H*V/BLOCK_V + V*H*N/BLOCK_N fp32 atomics, which run at a fraction of the L2 bandwidth (common/cost_model.py,
# ATOMIC_EFFICIENCY); measured comparison in benchmarks/RESULTS.md.
FUSED_BACKWARD_DEFAULT = "store"


def store_backward() -> bool:
    """Backward through a [chunk, V] gradient buffer (DETERMINISTIC_CHUNK_ELEMENTS, a fixed 64 MiB in bf16,
    whatever N) + cuBLAS for dX/dW, instead of fp32 atomics: always under
    ``torch.use_deterministic_algorithms(True)``; else ``RKLU_FUSED_BACKWARD=store|atomic``, default
    FUSED_BACKWARD_DEFAULT."""
    if torch.are_deterministic_algorithms_enabled():
        return True
    mode = os.environ.get("RKLU_FUSED_BACKWARD", FUSED_BACKWARD_DEFAULT)
    if mode not in ("store", "atomic"):
        raise ValueError(f"RKLU_FUSED_BACKWARD must be 'store' or 'atomic', got {mode!r}")
    return mode == "store"


_LAST_STATS: dict = {}


def last_backward_tile_stats() -> dict | None:
    """Tiles of the most recent Triton backward: {"kept", "total", "fraction", "filter"} (None before any).
    Reading it synchronizes with the GPU (the kept count is an int32 counter the kernel increments)."""
    if not _LAST_STATS:
        return None
    kept, total = (int(c) for c in _LAST_STATS["counter"].tolist())
    return dict(kept=kept, total=total, fraction=kept / max(total, 1), filter=_LAST_STATS["filter"])


def _common_args(xs, ws, bs, xo, wo, bo, xa, wa, ba, transforms):
    has_aug = xa is not None
    transform_args, (soft_s, soft_o, soft_a) = lt.kernel_args(transforms)
    dummy = xs  # never dereferenced: the HAS_* flags switch the loads off
    return dict(
        tensors=(xs, ws, bs if bs is not None else dummy, xo, wo, bo if bo is not None else dummy,
                 xa if has_aug else dummy, wa if has_aug else dummy, ba if ba is not None else dummy),
        sizes=(xs.shape[1], xo.shape[1], xa.shape[1] if has_aug else 0),
        strides=(xs.stride(0), ws.stride(0), xo.stride(0), wo.stride(0),
                 xa.stride(0) if has_aug else 0, wa.stride(0) if has_aug else 0),
        transforms=transform_args,
        flags=dict(HAS_AUG=has_aug, HAS_BS=bs is not None, HAS_BO=bo is not None, HAS_BA=ba is not None,
                   HAS_SOFTCAP_S=soft_s, HAS_SOFTCAP_O=soft_o, HAS_SOFTCAP_A=soft_a and has_aug,
                   PRECISION=gemm_precision(xs.dtype), GROUP=GROUP),
    )


def _mean_logits(xs, ws, bs) -> torch.Tensor:
    """Mean student logit of each vocabulary entry over the tokens (= W @ mean(x) + b). A GEMV: O(V * H)."""
    with torch.autocast(xs.device.type, enabled=False):
        mean_logit = ws.float() @ xs.float().mean(0)
        if bs is not None:
            mean_logit = mean_logit + bs.float()
    return mean_logit


def _vocab_order(mean_logit: torch.Tensor) -> torch.Tensor:
    """Vocabulary sorted by decreasing mean student logit, so the entries that carry probability for many
    rows share vocab blocks."""
    return torch.argsort(mean_logit, descending=True, stable=True)


def unlearning_kl(xs, ws, bs, xo, wo, bo, xa, wa, ba, *, alpha, direction, grad_in_forward, chunk_tokens,
                  grad_filter, transforms=(lt.IDENTITY,) * 3, teacher_source="models", jsd_beta=0.5,
                  targets=None, target_shift=None):
    """The KL op of backend "triton" (common/backends.py). The backward recomputes the logits whatever the
    reduction, and there is no chunk of tokens: ``grad_in_forward`` and ``chunk_tokens`` do not apply. All
    GEMMs run in the student's dtype: a wider teacher is refused, never rounded (``check_no_teacher_rounding``).
    The objective (teacher source, target shift, divergence: rklu/kernels/kl/objective.py) is validated by the
    API; teacher.py says how the kernels build each teacher."""
    if teacher_source == "models":
        check_no_teacher_rounding(xs, ws, xo, wo, xa, wa)
    xs, ws, xo, wo, xa, wa = to_dtype(gemm_dtype(xs, ws), xs, ws, xo, wo, xa, wa)
    return TritonFusedUnlearningKL.apply(xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha, direction, grad_filter,
                                         transforms, teacher_source, jsd_beta, targets, target_shift)


def _objective_args(n, v, device, direction, teacher_source, jsd_beta, targets, target_shift, dummy):
    """The objective's kernel arguments: tensors TARGETS, SHIFT (a never-read dummy where absent), the JSD's
    scalars, and the constexprs."""
    code = DIVERGENCE_CODES[direction]
    teacher = TEACHER_CODES[teacher_source]
    has_shift = target_shift is not None
    if teacher == LABELS or has_shift:
        if targets is None:
            raise ValueError(f"teacher_source={teacher_source!r} / target_shift need targets")
        targets = targets.to(device=device, dtype=torch.int64).contiguous()
    if code == ARGMAX and v >= 1 << 24:
        raise ValueError(f"argmax_ce keeps the argmax column in fp32 statistics: V must be < 2^24, got {v}")
    shift = target_shift.to(device=device, dtype=torch.float32).contiguous() if has_shift else dummy
    beta = float(jsd_beta)
    scalars = dict(log_beta=math.log(beta) if code == JSD else 0.0,
                   log_1mb=math.log1p(-beta) if code == JSD else 0.0, one_minus_beta=1.0 - beta)
    flags = dict(DIVERGENCE=code, TEACHER=teacher, HAS_SHIFT=has_shift)
    return (targets if targets is not None else dummy), shift, beta, scalars, flags


class TritonFusedUnlearningKL(torch.autograd.Function):
    """Counted tokens only: [N, H_*] hidden states (one dtype for all GEMM inputs; each model its own hidden
    size) -> per-token loss [N] float32."""

    @staticmethod
    def forward(ctx, xs, ws, bs, xo, wo, bo, xa, wa, ba, alpha, direction, grad_filter=None,
                transforms=(lt.IDENTITY,) * 3, teacher_source="models", jsd_beta=0.5, targets=None,
                target_shift=None):
        xs, ws, xo, wo = (t.contiguous() for t in (xs, ws, xo, wo))
        xa = None if xa is None else xa.contiguous()
        wa = None if wa is None else wa.contiguous()
        n = xs.shape[0]
        v = ws.shape[0]
        tgt, shift, beta, scalars, flags = _objective_args(n, v, xs.device, direction, teacher_source, jsd_beta,
                                                           targets, target_shift, xs)
        code = flags["DIVERGENCE"]
        inf_teacher = flags["TEACHER"] == LABELS or flags["HAS_SHIFT"]
        args = _common_args(xs, ws, bs, xo, wo, bo, xa, wa, ba, transforms)
        split_v = vocab_split_size(n, v)
        splits = triton.cdiv(v, split_v)
        part = torch.empty((splits, n, NUM_STATS), dtype=torch.float32, device=xs.device)
        dtype_name = dtype_key(xs.dtype)
        use_filter = grad_filter_default() if grad_filter is None else bool(grad_filter)
        need_grad = any(ctx.needs_input_grad[:3])
        # Deterministic mode stores whole gradient rows for cuBLAS, contiguously: no sort there (a gathered
        # store needs an address register per element and spills on sm_80); the filter still skips teachers.
        sort = use_filter and need_grad and not store_backward()
        mean_logit = _mean_logits(xs, ws, bs)
        perm = _vocab_order(mean_logit) if sort else None
        # The per-row reference logits: at the entry of largest mean logit, usually near each row's max, so
        # the log-ratio terms (z - c) stay small and exact (see forward.py).
        ref = reference_logits(xs, ws, bs, xo, wo, bo, xa, wa, ba, float(alpha), mean_logit.argmax(),
                               transforms, teacher_source, targets=tgt if tgt is not xs else None,
                               target_shift=target_shift)
        perm_arg = part if perm is None else perm
        _launch(("forward_lean" if lean(flags) else "forward") + ("" if perm is None else "_sorted"), _forward_kernel,
                lambda meta: (triton.cdiv(n, meta["BLOCK_N"]) * splits,), dtype_name,
                *args["tensors"], part, perm_arg, ref, tgt, shift, n, v, *args["sizes"],
                *args["strides"], float(alpha), *args["transforms"], split_v, splits,
                SORTED=perm is not None, **flags, **args["flags"])
        loss, stats = combine_partials(part, ref, code, inf_teacher)
        if code == JSD:
            jpart = torch.empty((splits, n, 2), dtype=torch.float32, device=xs.device)
            _launch("forward_jsd" if perm is None else "forward_jsd_sorted", _jsd_kernel,
                    lambda meta: (triton.cdiv(n, meta["BLOCK_N"]) * splits,), dtype_name,
                    *args["tensors"], stats, perm_arg, tgt, shift, jpart, n, v, *args["sizes"],
                    *args["strides"], float(alpha), *args["transforms"], beta, scalars["log_beta"],
                    scalars["log_1mb"], scalars["one_minus_beta"], split_v, splits,
                    SORTED=perm is not None, TEACHER=flags["TEACHER"], HAS_SHIFT=flags["HAS_SHIFT"],
                    **args["flags"])
            loss = jsd_combine(jpart, stats)
        ctx.save_for_backward(xs, ws, bs, xo, wo, bo, xa, wa, ba, stats, perm, tgt, shift)
        ctx.alpha, ctx.direction, ctx.use_filter, ctx.transforms = float(alpha), direction, use_filter, transforms
        ctx.scalars, ctx.flags = scalars, flags
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        xs, ws, bs, xo, wo, bo, xa, wa, ba, stats, perm, tgt, shift = ctx.saved_tensors
        n, h = xs.shape
        v = ws.shape[0]
        grad_loss = grad_loss.float().contiguous()
        args = _common_args(xs, ws, bs, xo, wo, bo, xa, wa, ba, ctx.transforms)
        dtype_name = dtype_key(xs.dtype)
        counter = torch.zeros(2, dtype=torch.int32, device=xs.device)  # kept tiles, all tiles
        sorted_ = perm is not None
        common = dict(FILTER=ctx.use_filter, SORTED=sorted_, **ctx.flags, **args["flags"])
        eps = filter_eps(xs.dtype)  # on p, also under a logit transform: see backward.py
        perm_arg = perm if sorted_ else counter  # never dereferenced unless SORTED
        objective = (tgt, shift)
        tiles = "_lean" if lean(ctx.flags) else ""  # the objective's paths: configs.LEAN_BACKWARD_SHAPES
        scalars = (ctx.scalars["log_beta"], ctx.scalars["log_1mb"], ctx.scalars["one_minus_beta"])
        if not store_backward():
            dx = torch.zeros((n, h), dtype=torch.float32, device=xs.device)
            dw = torch.zeros((v, h), dtype=torch.float32, device=xs.device)
            db = torch.zeros(v, dtype=torch.float32, device=xs.device) if bs is not None else dx
            _launch("backward" + tiles, _backward_kernel,
                    lambda meta: (triton.cdiv(n, meta["BLOCK_N"]) * triton.cdiv(v, meta["BLOCK_V"]),),
                    dtype_name, *args["tensors"], stats, grad_loss, perm_arg, *objective, dx, dw, db, dx, counter,
                    0, n, v, *args["sizes"], *args["strides"], 0, ctx.alpha, eps, *args["transforms"], *scalars,
                    STORE_G=False, **common)
        else:
            dx, dw, db = _deterministic_backward(xs, ws, bs, args, stats, grad_loss, perm_arg, objective, counter,
                                                 ctx.alpha, eps, scalars, dtype_name, common, tiles)
        _LAST_STATS.update(counter=counter, filter=ctx.use_filter)
        return (dx.to(xs.dtype), dw.to(ws.dtype), None if bs is None else db.to(bs.dtype),
                None, None, None, None, None, None, None, None, None, None, None, None, None, None)


def _deterministic_backward(xs, ws, bs, args, stats, grad_loss, perm_arg, objective, counter, alpha, eps, scalars,
                            dtype_name, common, tiles=""):
    """Bitwise reproducible: per token chunk, the kernel writes the gradient tile of each (token, vocab)
    block once (no atomics on floats) and torch.mm does dX and dW in a fixed order."""
    n, h = xs.shape
    v = ws.shape[0]
    # The gradient operand in the GEMM input dtype, like eager autograd; fp32 where the kernels upcast.
    g_dtype = torch.float32 if common["PRECISION"] != NATIVE else xs.dtype
    chunk = max(128, (DETERMINISTIC_CHUNK_ELEMENTS // max(v, 1)) // 128 * 128)
    chunk = min(chunk, n)
    g = torch.empty((chunk, v), dtype=g_dtype, device=xs.device)
    dx = torch.empty((n, h), dtype=torch.float32, device=xs.device)
    dw = torch.empty((v, h), dtype=torch.float32, device=xs.device)  # the first chunk writes it
    db = torch.zeros(v, dtype=torch.float32, device=xs.device) if bs is not None else None
    gemm = _Gemms(xs.device, g_dtype)
    with torch.autocast(xs.device.type, enabled=False):
        for start in range(0, n, chunk):
            rows = min(chunk, n - start)
            _launch("backward_store" + tiles, _backward_kernel,
                    lambda meta: (triton.cdiv(rows, meta["BLOCK_N"]) * triton.cdiv(v, meta["BLOCK_V"]),),
                    dtype_name, *args["tensors"], stats, grad_loss, perm_arg, *objective, dx, dw, dx, g, counter,
                    start, rows, v, *args["sizes"], *args["strides"], g.stride(0), alpha, eps,
                    *args["transforms"], *scalars, STORE_G=True, **common)
            g_c = g[:rows]
            gemm.mm(g_c, ws, dx[start:start + rows])
            gemm.accumulate(dw, g_c.T, xs[start:start + rows], first=start == 0)
            if db is not None:
                db += g_c.float().sum(0)
    return dx, dw, db
