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
