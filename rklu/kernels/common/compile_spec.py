"""What a Triton kernel needs to be compiled ahead of time for a CUDA target, without a GPU.

Every Triton module in ``rklu.kernels`` exposes ``compile_specs() -> list[CompileSpec]`` over its full
launch matrix (dtype bf16/fp32 x direction x augmented teacher yes/no x bias yes/no), and
``benchmarks/gpu_compile.py`` compiles each spec with each of its configs for sm_80 and sm_90 to check
registers, spills and shared memory (the CPU test ``tests/kernels/test_gpu_compile.py`` runs a subset in CI).
"""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CompileSpec:
    kernel: str                      # report name, e.g. "unlearning_kl_forward"
    fn: object                       # the @triton.jit function (not the autotuned wrapper)
    signature: dict                  # every argument (constexprs too, type "constexpr") -> Triton type string: "*bf16", "*fp32", "*i32", "i32", "fp32", "constexpr"
    constexprs: dict                 # values of the tl.constexpr arguments except the tile sizes/num_warps/num_stages that come from the configs
    configs: tuple                   # triton.Config objects this kernel can be launched with on CUDA (its autotune list)
    dtype: str                       # "bf16" | "fp32"
    variant: str                     # e.g. "reverse,aug,bias"
    divisible: tuple = ()            # argument names that get tt.divisibility=16 in a real launch
