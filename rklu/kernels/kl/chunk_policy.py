"""How many tokens the chunked backend (``triton_chunked.py``) works on at once: a memory budget, not a
fixed token count.

The working set of one call beyond its inputs and the dX/dW it returns: ``logit_tokens`` rows of the fp32
logit buffers (student, original, augmented: 4 bytes each per vocabulary entry; the student's alone when the
teacher runs no GEMM, ``teacher_gemm=False``: a self or labels teacher) and ``grad_tokens`` rows of
the gradient buffer G (the input dtype: 2 bytes in bf16). The two are sized apart because they cost
different things: a logit chunk only needs to be large enough for its GEMMs, while every G block adds one
``dW += G.T @ X`` into the fp32 [V, H] accumulator, which cuBLAS reads and writes in full (8 * V * H bytes
per block: at V = 128256, H = 4096 that is 4.2 GB, 1.25 ms at 3.35 TB/s, about as long as a 400-token
block's GEMM takes to compute). So the budget goes to G first: G holds as many rows as fit beside a
128-token logit chunk (up to all N), then the logit chunk takes what is left.

Default budget: Liger-Kernel's extra memory for the same shape, so that the default never needs more than
Liger's FusedLinearJSD does. Liger (linkedin/Liger-Kernel, src/liger_kernel/ops/fused_linear_jsd.py,
``fused_linear_jsd_forward``) chunks the tokens so that a [chunk, V] block is about the size of the [N, H]
input: ``inc_factor = cdiv(V, H)``, ``chunk_size = next_power_of_2(cdiv(BT, inc_factor))``. Per chunk it
computes the logits with bf16 GEMMs and casts them to fp32, and at its gradient line holds six fp32
[chunk, V] tensors (student and teacher logits / temperature, both log-softmaxes, softmax * sum and the
difference): LIGER_BYTES_PER_LOGIT = 24, a lower bound on its peak (the bf16 GEMM outputs and the previous
chunk's tensors, alive until their names are reassigned, come on top), so a plan within it stays within
Liger's memory. Capped on CUDA at a quarter of the free GPU memory.

Not in the budget: the fp32 dX and dW accumulators, 4 * (N * H + V * H) bytes, which the chunked backend holds
until it returns the gradients in the parameter dtype (Liger accumulates dW in the parameter dtype, rounding
once per chunk). At V >= 128256 and H = 4096 the fp32 dW alone is larger than Liger's whole working set.

Knobs: ``max_chunk_bytes`` (a budget in bytes) or ``memory_fraction`` (that fraction of the free GPU memory)
replace the default. Whatever the budget, neither chunk goes below MIN_CHUNK_TOKENS (or N): below that the
logit GEMMs lose their tensor-core tiles. A budget too small for that floor is reported (``fits=False``);
``backend="auto"`` then runs the O(N)-memory fused kernel instead, but only when the floor does not fit in
the free memory (see ``fits_in``).
"""
from __future__ import annotations

from dataclasses import dataclass

MIN_CHUNK_TOKENS = 128
# Chunks are whole multiples of this many tokens (cuBLAS tiles along M are 64 or 128 rows).
CHUNK_ALIGN = 128
LIGER_BYTES_PER_LOGIT = 24
FREE_MEMORY_CAP = 0.25  # the default budget takes at most this fraction of the free GPU memory


@dataclass(frozen=True)
class ChunkPlan:
    logit_tokens: int    # rows of the fp32 logit buffers per chunk
    grad_tokens: int     # rows of the gradient buffer G (a multiple of logit_tokens, or all of N)
    budget_bytes: int | None  # what the plan had to fit in (None: no bound)
    working_set_bytes: int    # what it takes: logit buffers + G
    fits: bool           # working_set_bytes <= budget_bytes (False: the 128-token floor exceeded it)
    source: str          # "liger" | "max_chunk_bytes" | "memory_fraction" | "chunk_tokens" | "cpu"


def liger_chunk_tokens(n: int, h: int, v: int) -> int:
    """Liger's FusedLinearJSD chunk: next_power_of_2(cdiv(N, cdiv(V, H)))."""
    inc_factor = -(-v // h)
    return _next_power_of_2(-(-n // inc_factor))


def liger_extra_bytes(n: int, h: int, v: int) -> int:
    """Liger FusedLinearJSD's working set for this shape (its fp32 [chunk, V] tensors at the gradient line)."""
    return min(liger_chunk_tokens(n, h, v), n) * v * LIGER_BYTES_PER_LOGIT


def logit_bytes_per_token(v: int, augmented: bool = True, teacher_gemm: bool = True) -> int:
    """fp32 logit buffer bytes per token: the student's, plus the original's and the augmented model's when
    the teacher is the models (a self or labels teacher is built from the student's buffer)."""
    return v * 4 * (1 + ((2 if augmented else 1) if teacher_gemm else 0))


def working_set_bytes(logit_tokens: int, grad_tokens: int, v: int, grad_bytes: int, augmented: bool = True,
                      teacher_gemm: bool = True) -> int:
    return logit_tokens * logit_bytes_per_token(v, augmented, teacher_gemm) + grad_tokens * v * grad_bytes


def plan_chunks(n: int, h: int, v: int, grad_bytes: int, augmented: bool = True, *,
                free_bytes: int | None = None, max_chunk_bytes: int | None = None,
                memory_fraction: float | None = None, chunk_tokens: int | None = None,
                teacher_gemm: bool = True) -> ChunkPlan:
    """The chunk plan of one call of N tokens ([N, H] student hidden states, vocabulary V, G in
    ``grad_bytes`` per entry). ``free_bytes``: free GPU memory (None off CUDA: no cap). ``chunk_tokens``
    forces both chunks to that many tokens (tests, sweeps). ``teacher_gemm=False``: a self or labels teacher
    (one logit buffer per token, the student's)."""
    if chunk_tokens is not None:
        check_chunk_knobs(chunk_tokens=chunk_tokens)
        c = min(n, chunk_tokens)
        return ChunkPlan(c, c, None, working_set_bytes(c, c, v, grad_bytes, augmented, teacher_gemm), True,
                         "chunk_tokens")
    check_chunk_knobs(max_chunk_bytes, memory_fraction)
    if max_chunk_bytes is not None:
        budget, source = int(max_chunk_bytes), "max_chunk_bytes"
    elif memory_fraction is not None:
        if free_bytes is None:
            raise ValueError("memory_fraction needs the free GPU memory (a CUDA device); use max_chunk_bytes")
        budget, source = int(free_bytes * memory_fraction), "memory_fraction"
    else:
        budget, source = liger_extra_bytes(n, h, v), "liger"
        if free_bytes is not None:
            budget = min(budget, int(free_bytes * FREE_MEMORY_CAP))
    return _fit(n, v, grad_bytes, augmented, budget, source, teacher_gemm)


def check_chunk_knobs(max_chunk_bytes=None, memory_fraction=None, chunk_tokens=None) -> None:
    """Refuse bad chunk knobs before any work."""
    if max_chunk_bytes is not None and memory_fraction is not None:
        raise ValueError("give max_chunk_bytes or memory_fraction, not both")
    if max_chunk_bytes is not None and not max_chunk_bytes > 0:
        raise ValueError(f"max_chunk_bytes must be > 0, got {max_chunk_bytes}")
    if memory_fraction is not None and not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")


def _fit(n, v, grad_bytes, augmented, budget, source, teacher_gemm=True) -> ChunkPlan:
    a = logit_bytes_per_token(v, augmented, teacher_gemm)
    b = v * grad_bytes
    floor = min(n, MIN_CHUNK_TOKENS)
    if (a + b) * n <= budget:
        c = g = n
    elif (a + b) * floor > budget:
        c = g = floor
    else:
        # G first, beside a logit chunk at the floor; then the logit chunk takes what G leaves.
        g = min(n, _align((budget - a * floor) // b))
        c = max(floor, min(g, _align((budget - b * g) // a)))
        if g < n:
            g = max(c, g // c * c)  # whole logit chunks per G block
    ws = working_set_bytes(c, g, v, grad_bytes, augmented, teacher_gemm)
    return ChunkPlan(int(c), int(g), int(budget), int(ws), ws <= budget, source)


def fits_in(free_bytes: int, n: int, v: int, grad_bytes: int, augmented: bool = True,
            teacher_gemm: bool = True) -> bool:
    """Whether the smallest plan (both chunks at MIN_CHUNK_TOKENS, or N) fits in a quarter of the free memory:
    ``backend="auto"`` runs the O(N) fused kernel only when it does not."""
    floor = min(n, MIN_CHUNK_TOKENS)
    return working_set_bytes(floor, floor, v, grad_bytes, augmented, teacher_gemm) <= free_bytes * FREE_MEMORY_CAP


def choose_cuda_backend(n: int, v: int, dtype: str, augmented: bool, free_bytes: int, teacher_gemm: bool = True,
                        **_) -> str:
    """``backend="auto"`` on CUDA: "chunked" whenever its smallest plan fits (``fits_in``), else the
    O(N)-memory fused "triton" kernel. No race between the two: the fused kernel does 8 GEMMs (fewer only where
    the gradient filter skips tiles) against the chunked path's 5 (benchmarks/roofline.py); it is the memory
    fallback. Other problem fields (h, reverse, grad_filter) are accepted and do not matter."""
    return "chunked" if fits_in(free_bytes, n, v, 2 if dtype == "bf16" else 4, augmented, teacher_gemm) else "triton"


def _align(tokens: int) -> int:
    return tokens // CHUNK_ALIGN * CHUNK_ALIGN if tokens >= CHUNK_ALIGN else max(int(tokens), 1)


def _next_power_of_2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()
