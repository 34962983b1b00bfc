"""The chunked backend's chunk policy (rklu/kernels/kl/chunk_policy.py) and the cost model's estimate per
policy: pure Python, no device."""
import sys
from pathlib import Path

import pytest

from rklu.kernels.common import cost_model as cm
from rklu.kernels.kl import chunk_policy as cp

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import cost_model_report as rc  # noqa: E402  (the report-only estimates live with the benchmarks)

GiB = 1 << 30
# N, H, V of the benchmark shapes (issue 23): Llama-2/3 vocabularies at H=4096, Llama-3.2-1B's H=2048.
SHAPES = [(8192, 4096, 32000), (8192, 4096, 128256), (8192, 4096, 256000), (8192, 2048, 128256)]


def test_liger_chunk_formula():
    """next_power_of_2(cdiv(N, cdiv(V, H))), as in Liger's fused_linear_jsd_forward: its comment's example
    (BT = 4096 * 4, V = 32000, H = 4096 -> 2048) and the benchmark shapes."""
    assert cp.liger_chunk_tokens(4096 * 4, 4096, 32000) == 2048
    assert cp.liger_chunk_tokens(8192, 4096, 32000) == 1024
    assert cp.liger_chunk_tokens(8192, 4096, 128256) == 256      # cdiv(8192, 32) = 256
    assert cp.liger_chunk_tokens(8192, 4096, 256000) == 256      # cdiv(8192, 63) = 131 -> 256
    assert cp.liger_chunk_tokens(8192, 2048, 128256) == 256      # cdiv(8192, 63) = 131 -> 256
    assert cp.liger_chunk_tokens(100, 4096, 1000) == 128         # V <= H: one "factor", N -> 128
    assert cp.liger_extra_bytes(8192, 4096, 32000) == 1024 * 32000 * cp.LIGER_BYTES_PER_LOGIT


@pytest.mark.parametrize("n,h,v", SHAPES)
@pytest.mark.parametrize("grad_bytes", [2, 4], ids=["bf16", "fp32"])
@pytest.mark.parametrize("augmented", [True, False], ids=["aug", "no-aug"])
def test_default_stays_within_liger_memory(n, h, v, grad_bytes, augmented):
    plan = cp.plan_chunks(n, h, v, grad_bytes, augmented, free_bytes=70 * GiB)
    assert plan.source == "liger" and plan.fits
    assert plan.working_set_bytes == cp.working_set_bytes(plan.logit_tokens, plan.grad_tokens, v, grad_bytes, augmented)
    assert plan.working_set_bytes <= cp.liger_extra_bytes(n, h, v)
    assert cp.MIN_CHUNK_TOKENS <= plan.logit_tokens <= plan.grad_tokens <= n
    assert plan.logit_tokens % cp.CHUNK_ALIGN == 0
    assert plan.grad_tokens == n or plan.grad_tokens % plan.logit_tokens == 0
    # The budget goes to G first: not even one more logit chunk's worth of G rows would have fit.
    if plan.grad_tokens < n:
        spare = plan.budget_bytes - plan.working_set_bytes
        assert spare < plan.logit_tokens * v * grad_bytes + cp.CHUNK_ALIGN * v * (4 * (3 if augmented else 2))


@pytest.mark.parametrize("n,h,v,free,budget,expected", [
    # Liger's memory at V=32000 leaves G room for all 8192 rows beside a 640-token logit chunk.
    (8192, 4096, 32000, 70 * GiB, None, (640, 8192)),
    # V=128256: 128-token logit chunks and 2304-row G blocks (18 logit chunks each).
    (8192, 4096, 128256, 70 * GiB, None, (128, 2304)),
    # A quarter of the free memory caps the default: 1 GiB free -> 256 MiB.
    (8192, 4096, 32000, 1 * GiB, None, (128, 3328)),
    # Everything fits: one chunk of all N.
    (8192, 4096, 32000, 70 * GiB, 8192 * 32000 * 14, (8192, 8192)),
    # An explicit budget below the floor: the floor (128 tokens), reported as not fitting.
    (8192, 4096, 32000, 70 * GiB, 1000, (128, 128)),
    # Fewer tokens than the floor: all of them.
    (50, 4096, 32000, 70 * GiB, 1000, (50, 50)),
])
def test_shapes_and_budgets_to_chunks(n, h, v, free, budget, expected):
    plan = cp.plan_chunks(n, h, v, 2, True, free_bytes=free, max_chunk_bytes=budget)
    assert (plan.logit_tokens, plan.grad_tokens) == expected
    assert plan.fits == (plan.working_set_bytes <= plan.budget_bytes)
    if budget is None:
        assert plan.budget_bytes == min(cp.liger_extra_bytes(n, h, v), free // 4)
    if plan.fits:
        assert plan.working_set_bytes <= plan.budget_bytes
    else:
        assert (plan.logit_tokens, plan.grad_tokens) == (min(n, 128),) * 2


@pytest.mark.parametrize("budget_gib", [0.1, 0.5, 1, 3, 20])
@pytest.mark.parametrize("n,h,v", SHAPES)
def test_any_budget_above_the_floor_is_respected(n, h, v, budget_gib):
    budget = int(budget_gib * GiB)
    plan = cp.plan_chunks(n, h, v, 2, True, max_chunk_bytes=budget)
    floor = cp.working_set_bytes(128, 128, v, 2)
    assert plan.fits == (floor <= budget)
    if plan.fits:
        assert plan.working_set_bytes <= budget
    # More memory never gives smaller chunks.
    bigger = cp.plan_chunks(n, h, v, 2, True, max_chunk_bytes=2 * budget)
    assert bigger.grad_tokens >= plan.grad_tokens


def test_memory_fraction_and_knob_errors():
    plan = cp.plan_chunks(8192, 4096, 32000, 2, True, free_bytes=10 * GiB, memory_fraction=0.1)
    assert plan.source == "memory_fraction" and plan.budget_bytes == GiB
    assert plan.working_set_bytes <= GiB
    with pytest.raises(ValueError, match="not both"):
        cp.plan_chunks(8192, 4096, 32000, 2, True, max_chunk_bytes=GiB, memory_fraction=0.5)
    with pytest.raises(ValueError, match="memory_fraction must be in"):
        cp.plan_chunks(8192, 4096, 32000, 2, True, free_bytes=GiB, memory_fraction=1.5)
    with pytest.raises(ValueError, match="needs the free GPU memory"):
        cp.plan_chunks(8192, 4096, 32000, 2, True, memory_fraction=0.5)
    with pytest.raises(ValueError, match="max_chunk_bytes must be > 0"):
        cp.plan_chunks(8192, 4096, 32000, 2, True, max_chunk_bytes=0)
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1"):
        cp.plan_chunks(8192, 4096, 32000, 2, True, chunk_tokens=0)


def test_api_refuses_bad_knobs_before_any_work():
    import torch

    from rklu.kernels import fused_linear_unlearning_kl

    x, w = torch.zeros(2, 4), torch.zeros(3, 4)
    with pytest.raises(ValueError, match="not both"):
        fused_linear_unlearning_kl(x, w, x, w, backend="torch", max_chunk_bytes=1 << 20, chunk_memory_fraction=0.5)


def test_fits_in_is_the_128_token_floor():
    floor = cp.working_set_bytes(128, 128, 128256, 2)
    assert cp.fits_in(4 * floor, 8192, 128256, 2)
    assert not cp.fits_in(4 * floor - 1, 8192, 128256, 2)


@pytest.mark.parametrize("n,h,v", SHAPES)
def test_cost_model_per_policy(n, h, v):
    """The model's estimate per policy (H100): sizing G apart keeps the default within a few percent of the
    old fixed 4096-token chunk at Liger's memory. Equal logit and G chunks of the same memory pay the dW
    read-modify-write of every small block: at V >= 128256 (384-token blocks, memory-bound dW GEMMs) that
    costs them over 20%; at V = 32000 (1664-token blocks, compute-bound) about nothing, and the default's
    extra logit-chunk launches are within 2%. Half the budget costs more, twice the budget no more."""
    s = cm.Shape(n, h, v)
    est = rc.chunk_policies(s, cm.GPUS["H100"])
    default, fixed = est["default (Liger's memory)"], est["fixed 4096 tokens"]
    equal, half, twice = (est[k] for k in ("Liger's memory, equal chunks", "half of Liger's memory",
                                           "twice Liger's memory"))
    assert default["working_set_bytes"] <= cp.liger_extra_bytes(n, h, v)
    assert default["seconds"] <= 1.05 * fixed["seconds"]
    assert default["seconds"] <= (1.02 if v < 100_000 else 0.8) * equal["seconds"]
    assert half["seconds"] >= default["seconds"] >= twice["seconds"]
    assert all(e["ratio_to_floor"] >= 1.0 for e in est.values())


def test_cost_model_counts_dw_traffic_per_gradient_block():
    """Each G block after the first reads and writes the fp32 dW accumulator: 8 * V * H bytes."""
    s = cm.Shape(8192, 4096, 128256)
    one = sum(k.dram for k in cm.chunked(s, cm.GPUS["H100"], 128, 8192))
    four = sum(k.dram for k in cm.chunked(s, cm.GPUS["H100"], 128, 2048))
    assert four - one == pytest.approx(3 * 8 * 128256 * 4096)


@pytest.mark.parametrize("n,h,v", SHAPES)
def test_a_teacher_without_gemm_counts_one_logit_buffer(n, h, v):
    """A self or labels teacher is built from the student's logit buffer: the plan counts one fp32 buffer per
    token, not the original's too, so the same budget gives at least as many tokens per chunk."""
    assert cp.logit_bytes_per_token(v, False, teacher_gemm=False) == 4 * v
    assert cp.logit_bytes_per_token(v, False) == 8 * v and cp.logit_bytes_per_token(v, True) == 12 * v
    models = cp.plan_chunks(n, h, v, 2, False, free_bytes=70 * GiB)
    alone = cp.plan_chunks(n, h, v, 2, False, free_bytes=70 * GiB, teacher_gemm=False)
    assert alone.fits and alone.working_set_bytes <= alone.budget_bytes == models.budget_bytes
    assert alone.working_set_bytes == cp.working_set_bytes(alone.logit_tokens, alone.grad_tokens, v, 2, False,
                                                           teacher_gemm=False)
    assert alone.logit_tokens >= models.logit_tokens and alone.grad_tokens >= models.grad_tokens
    assert (alone.logit_tokens, alone.grad_tokens) != (models.logit_tokens, models.grad_tokens)
    # the smallest plan of a GEMM-free teacher needs less free memory: auto keeps the chunked backend longer
    floor_models = cp.working_set_bytes(128, 128, v, 2, False)
    free = int(floor_models / cp.FREE_MEMORY_CAP) - 1
    assert not cp.fits_in(free, n, v, 2, False) and cp.fits_in(free, n, v, 2, False, teacher_gemm=False)
    assert cp.choose_cuda_backend(n, v, "bf16", False, free) == "triton"
    assert cp.choose_cuda_backend(n, v, "bf16", False, free, teacher_gemm=False) == "chunked"


def test_the_buffer_a_self_teacher_does_not_hold_goes_to_g():
    """The budget goes to G first, beside a 128-token logit chunk: at V = 32000 and 187.5 MiB, a teacher without
    GEMM frees the original's 128-row buffer, two more 128-row G chunks (2816 rows instead of 2560)."""
    v = 32000
    budget = cp.working_set_bytes(1024, 1024, v, 2, False, teacher_gemm=False)
    alone = cp.plan_chunks(8192, 4096, v, 2, False, max_chunk_bytes=budget, teacher_gemm=False)
    models = cp.plan_chunks(8192, 4096, v, 2, False, max_chunk_bytes=budget)
    assert (alone.logit_tokens, alone.grad_tokens, alone.fits) == (128, 2816, True)
    assert (models.logit_tokens, models.grad_tokens, models.fits) == (128, 2560, True)
