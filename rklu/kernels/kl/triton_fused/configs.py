"""Tile configurations of the fused kernels, and their compile specs for the CPU GPU-readiness check.

Every config in an autotune list must be spill-free and fit the shared memory of sm_80 (166912 bytes per
block) and sm_90 (232448 bytes), for bf16 and fp32 and every variant (direction, augmented teacher, bias,
logit softcap, sorted vocabulary, filter, deterministic store): ``compile_specs()`` enumerates that matrix and
``benchmarks/gpu_compile.py`` (tests/kernels/test_gpu_compile.py) compiles each case for both targets on CPU.
The lists below are what survived that check. What limits them is registers, not shared memory: a
[64, 128] fp32 tile is 32 registers per thread at 8 warps, the kernels hold up to three (two GEMM
accumulators + one teacher/student tile), and sm_80 has no vector float atomics, so every element of the
atomic dX/dW tiles needs its own 64-bit address (hence the separate, smaller BLOCK_HG of the gradient
loop). 16 warps cap a thread at 128 registers and spill everywhere; 128x128 spills at 8 warps. fp32 runs
tl.dot in full IEEE fp32 (FMA, no tensor cores; the accuracy mode, not the fast one) with operands in
registers, so it gets the smallest tiles. Forward and backward of a dtype share BLOCK_H (bitwise
recompute, see forward.py).
"""
from __future__ import annotations

import triton

from ...common.compile_spec import CompileSpec
from ...common.tiles import GROUP, INTERPRET


# (BLOCK_N, BLOCK_V, BLOCK_H, num_warps, num_stages). The first entry is the fixed default
# (RKLU_TRITON_AUTOTUNE=0).
FORWARD_SHAPES = {
    "bf16": [(64, 128, 64, 8, 3), (64, 64, 64, 8, 3)],
    "fp32": [(32, 32, 16, 4, 2)],
}
# The sorted forward (the atomic backward's vocabulary order) gathers its columns through PERM: the extra
# address registers make the bf16 64x128 tile spill on sm_90 with the forward KL's accumulators, so it is
# launched with the 64x64 tile only (benchmarks/results/gpu-compile.md).
SORTED_FORWARD_SHAPES = {"bf16": [(64, 64, 64, 8, 3)], "fp32": FORWARD_SHAPES["fp32"]}
# The objective's paths (objective.py: a self / labels teacher, a target shift, the JSD and its second pass,
# argmax_ce) keep more live than the plain KLs (the edit's target column, the -inf guards, the argmax, the
# log-mixture): the bf16 64x128 forward tile spilled 8-264 B with them on sm_80/sm_90 (a labels teacher the
# most), so they run the smaller bf16 tile ("lean"; its BLOCK_H is the forward's, as the backward recomputes the
# same logits).
LEAN_FORWARD_SHAPES = {"bf16": [(64, 64, 64, 8, 3)], "fp32": FORWARD_SHAPES["fp32"]}
# (BLOCK_N, BLOCK_V, BLOCK_H, BLOCK_HG, num_warps, num_stages): BLOCK_HG is the H step of the gradient
# GEMMs + atomics. BLOCK_H equals the forward's per dtype: see forward.py (bitwise recompute).
BACKWARD_SHAPES = {
    "bf16": [(128, 64, 64, 32, 8, 3), (64, 64, 64, 32, 8, 3)],
    "fp32": [(32, 64, 16, 16, 4, 1)],
}

# The objective's backwards: the bf16 128x64 tile spilled 8-120 B on sm_80/sm_90 with a target shift or the JSD
# (student and teacher tiles, the log-mixture and the gradient tile at once), the fp32 32x64 one 24 B with the
# JSD's augmented teacher, and a labels teacher's 64x64 tile 16 B under ptxas' own register choice: they run
# the smaller tiles with the register cap (benchmarks/results/gpu-compile.md).
LEAN_BACKWARD_SHAPES = {"bf16": [(64, 64, 64, 32, 8, 3)], "fp32": [(32, 32, 16, 16, 4, 1)]}


def lean(flags: dict) -> bool:
    """Whether a kernel variant (its constexpr flags) is one of the objective's paths, with the lean tiles."""
    return flags.get("TEACHER", 0) != 0 or bool(flags.get("HAS_SHIFT", False)) or flags.get("DIVERGENCE", 0) >= 2


# Register cap (ptxas .maxnreg) by kernel. Without one, ptxas trades registers for occupancy and squeezes
# the forward into 96 (fp32) or 128 (bf16 64x64) registers, where the forward KL's running-maximum
# accumulators and the logit-transform arguments spill 8-32 bytes; the softcap backwards likewise (bf16 at
# 128 on sm_80, fp32 with the tanh temporaries). 255 (the most a thread can have; 8 warps x 255 fits the
# register file) lets it take what it needs: no config spills (benchmarks/results/gpu-compile.md). The
# backward without a softcap keeps ptxas' own choice.
def max_registers(kernel: str, dtype_name: str, softcap: bool, lean_tiles: bool = False) -> int | None:
    if kernel == "forward" or softcap or lean_tiles:
        return 255
    return None


def forward_configs(dtype_name: str, softcap: bool = False, sorted_vocab: bool = False,
                    lean_tiles: bool = False) -> list:
    maxnreg = max_registers("forward", dtype_name, softcap)
    if lean_tiles:
        shapes = LEAN_FORWARD_SHAPES[dtype_name]
    else:
        shapes = (SORTED_FORWARD_SHAPES if sorted_vocab else FORWARD_SHAPES)[dtype_name]
    return [triton.Config(dict(BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh), num_warps=w, num_stages=st, maxnreg=maxnreg)
            for bn, bv, bh, w, st in shapes]


def backward_configs(dtype_name: str, softcap: bool = False, lean_tiles: bool = False) -> list:
    maxnreg = max_registers("backward", dtype_name, softcap, lean_tiles)
    shapes = (LEAN_BACKWARD_SHAPES if lean_tiles else BACKWARD_SHAPES)[dtype_name]
    return [triton.Config(dict(BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh, BLOCK_HG=bhg), num_warps=w, num_stages=st,
                          maxnreg=maxnreg)
            for bn, bv, bh, bhg, w, st in shapes]


def autotune_configs() -> list:
    """Every config any kernel can be launched with (for reports)."""
    return [c for dt in ("bf16", "fp32") for c in forward_configs(dt) + backward_configs(dt)]


def block_sizes(kernel: str, dtype_name: str, softcap: bool = False) -> dict:
    """``kernel``: "forward", "forward_sorted", "backward" (the store variant "backward_store" takes the same tiles),
    each also as "<name>_lean" (the objective's paths), and the JSD's second pass "forward_jsd", "forward_jsd_sorted".
    Fixed tiles: the interpreter steps through blocks in Python, so it gets few, large tiles; on CUDA
    (RKLU_TRITON_AUTOTUNE=0) the first entry of the kernel's autotune list."""
    if INTERPRET:
        blocks = dict(BLOCK_N=32, BLOCK_V=256, BLOCK_H=64, num_warps=4)
        return blocks if kernel.startswith("forward") else dict(blocks, BLOCK_HG=64)
    if kernel.startswith("forward"):
        cfg = forward_configs(dtype_name, softcap, sorted_vocab=kernel.endswith("_sorted"),
                              lean_tiles="_lean" in kernel or kernel.startswith("forward_jsd"))[0]
    else:
        cfg = backward_configs(dtype_name, softcap, lean_tiles=kernel.endswith("_lean"))[0]
    blocks = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return blocks if cfg.maxnreg is None else dict(blocks, maxnreg=cfg.maxnreg)


def dtype_key(dtype) -> str:
    """bf16 and fp16 share the tensor-core configs; fp32 (IEEE dot) has its own."""
    return "fp32" if str(dtype).endswith("float32") or dtype == "fp32" else "bf16"


# Every SPLIT_V is a multiple of every BLOCK_V above, so vocab blocks never straddle two splits.
SPLIT_ALIGN = 256
# Enough programs to fill an H100/A100 a few times over (132/108 SMs) before the splits add traffic.
TARGET_FORWARD_PROGRAMS = 1024


def vocab_split_size(n: int, v: int) -> int:
    """Vocabulary entries per forward program: as few splits as fill the GPU (each split adds O(N) stats
    and a re-read of X), at least one aligned block. The interpreter pays per program, not per idle SM: one
    split there (tests/kernels/test_kernel_v2.py forces many splits explicitly)."""
    if INTERPRET:
        return triton.cdiv(max(v, 1), SPLIT_ALIGN) * SPLIT_ALIGN
    row_blocks = triton.cdiv(n, 64)
    splits = max(1, min(triton.cdiv(v, SPLIT_ALIGN), triton.cdiv(TARGET_FORWARD_PROGRAMS, row_blocks)))
    per_split = triton.cdiv(v, splits)
    return triton.cdiv(per_split, SPLIT_ALIGN) * SPLIT_ALIGN


# The objective variants (teacher.py) in the compile report, beyond the original objective's full matrix:
# (divergence, teacher source, target shift, augmented teacher), the combinations the methods use and the
# heaviest of each new path, each over dtype x softcap with biases (the heavier case; bias on/off adds one
# load per tile and is covered by the original matrix).
OBJECTIVE_VARIANTS = (
    (1, 0, True, False),   # forward KL, models, target shift (UNDIAL)
    (1, 1, True, False),   # forward KL, self, shift (CE-U's -inf, Unilogit's uniform)
    (0, 1, True, False),   # reverse KL, self, shift
    (1, 2, False, False),  # forward KL, labels
    (0, 0, True, True),    # reverse KL, models + augmented, shift
    (3, 0, False, True),   # argmax_ce, models + augmented (WHP)
    (3, 1, True, False),   # argmax_ce, self, shift
    (2, 2, False, False),  # JSD, labels (JensUn)
    (2, 0, True, True),    # JSD, models + augmented, shift
    (2, 1, True, False),   # JSD, self, shift
)
DIVERGENCE_NAMES = ("reverse", "forward", "jsd", "argmax_ce")
TEACHER_NAMES = ("models", "self", "labels")


def compile_specs() -> list:
    """Every kernel this backend launches on CUDA, over dtype x direction x augmented x bias x softcap (every
    model's, the heaviest case of the per-model HAS_SOFTCAP_* flags) (x filter x deterministic store for the
    backward), with the configs it can be launched with; then OBJECTIVE_VARIANTS over dtype x softcap
    (with the JSD's second pass)."""
    from .backward import _backward_kernel
    from .forward import _forward_kernel
    from .jsd import _jsd_kernel

    specs = []
    transform_args = {f"{arg}_{m}": "fp32" for m in "soa" for arg in ("logit_scale", "softcap", "inv_softcap")}
    for dt in ("bf16", "fp32"):
        ptr = f"*{dt}"
        precision = 1 if dt == "fp32" else 0
        matrix = [(d, 0, False, aug) for d in (0, 1) for aug in (True, False)]
        for divergence, teacher, shift, aug in matrix + list(OBJECTIVE_VARIANTS):
            for bias in ((True, False) if (divergence, teacher, shift, aug) in matrix else (True,)):
                for softcap in (True, False):
                    flags = dict(HAS_AUG=aug, HAS_BS=bias, HAS_BO=bias, HAS_BA=bias and aug,
                                 HAS_SOFTCAP_S=softcap, HAS_SOFTCAP_O=softcap, HAS_SOFTCAP_A=softcap and aug,
                                 DIVERGENCE=divergence, TEACHER=teacher, HAS_SHIFT=shift,
                                 PRECISION=precision, GROUP=GROUP)
                    variant = ",".join([DIVERGENCE_NAMES[divergence], "aug" if aug else "no-aug",
                                        "bias" if bias else "no-bias"] + (["softcap"] if softcap else [])
                                       + ([f"teacher={TEACHER_NAMES[teacher]}"] if teacher else [])
                                       + (["shift"] if shift else []))
                    specs += _variant_specs(_forward_kernel, _backward_kernel, _jsd_kernel, dt, ptr, flags,
                                            variant, transform_args)
    return specs


def _variant_specs(forward_kernel, backward_kernel, jsd_kernel, dt, ptr, flags, variant, transform_args) -> list:
    softcap = flags["HAS_SOFTCAP_S"]
    tensors = {k: ptr for k in ("XS", "WS", "BS", "XO", "WO", "BO", "XA", "WA", "BA")}
    ints = ("H_S", "H_O", "H_A", "stride_xs", "stride_ws", "stride_xo", "stride_wo",
            "stride_xa", "stride_wa")
    objective = {"TARGETS": "*i64", "SHIFT": "*fp32"}
    sig = {**tensors, "PART": "*fp32", "PERM": "*i64", "REF": "*fp32", **objective, "N": "i32", "V": "i32",
           **{k: "i32" for k in ints}, "alpha": "fp32", **transform_args, "SPLIT_V": "i32", "NUM_SPLITS": "i32",
           **{k: "constexpr" for k in (*flags, "SORTED", "BLOCK_N", "BLOCK_V", "BLOCK_H")}}
    specs = []
    for sort in (True, False):
        specs.append(CompileSpec(
            kernel="unlearning_kl_forward", fn=forward_kernel, signature=sig,
            constexprs=dict(flags, SORTED=sort), configs=tuple(forward_configs(dt, softcap, sort, lean(flags))), dtype=dt,
            variant=variant + (",sorted" if sort else ",unsorted"),
            divisible=(*tensors, "PART", "PERM", "REF", *objective, *ints, "SPLIT_V")))
        if flags["DIVERGENCE"] == 2:
            jflags = {k: val for k, val in flags.items() if k != "DIVERGENCE"}
            jsig = {**tensors, "STATS": "*fp32", "PERM": "*i64", **objective, "PART": "*fp32", "N": "i32",
                    "V": "i32", **{k: "i32" for k in ints}, "alpha": "fp32", **transform_args,
                    **{k: "fp32" for k in ("beta", "log_beta", "log_1mb", "one_minus_beta")},
                    "SPLIT_V": "i32", "NUM_SPLITS": "i32",
                    **{k: "constexpr" for k in (*jflags, "SORTED", "BLOCK_N", "BLOCK_V", "BLOCK_H")}}
            specs.append(CompileSpec(
                kernel="unlearning_kl_jsd", fn=jsd_kernel, signature=jsig,
                constexprs=dict(jflags, SORTED=sort), configs=tuple(forward_configs(dt, softcap, sort, lean_tiles=True)),
                dtype=dt, variant=variant + (",sorted" if sort else ",unsorted"),
                divisible=(*tensors, "STATS", "PERM", *objective, "PART", *ints, "SPLIT_V")))
    for filt in (True, False):
        for store in (False, True):
            # Deterministic mode (store) walks the vocabulary unsorted: see triton_fused.py.
            bflags = dict(flags, FILTER=filt, SORTED=filt and not store, STORE_G=store)
            bsig = {**tensors, "STATS": "*fp32", "GRAD_OUT": "*fp32", "PERM": "*i64", **objective,
                    "DX": "*fp32", "DW": "*fp32", "DB": "*fp32", "G": ptr, "COUNTER": "*i32",
                    "ROW0": "i32", "NUM_ROWS": "i32", "V": "i32",
                    **{k: "i32" for k in ints}, "stride_g": "i32", "alpha": "fp32", "eps": "fp32",
                    **transform_args, **{k: "fp32" for k in ("log_beta", "log_1mb", "one_minus_beta")},
                    **{k: "constexpr" for k in (*bflags, "BLOCK_N", "BLOCK_V", "BLOCK_H", "BLOCK_HG")}}
            bvariant = variant + ("," + ("filter" if filt else "no-filter")
                                  + ("," + "store-g" if store else ",atomic"))
            specs.append(CompileSpec(
                kernel="unlearning_kl_backward", fn=backward_kernel, signature=bsig,
                constexprs=bflags, configs=tuple(backward_configs(dt, softcap, lean(flags))),
                dtype=dt,
                variant=bvariant,
                divisible=(*tensors, "STATS", "GRAD_OUT", "PERM", *objective, "DX", "DW", "DB", "G",
                           "COUNTER", *ints, "stride_g")))
    return specs
