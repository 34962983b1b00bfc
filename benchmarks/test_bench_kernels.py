"""pytest-benchmark cases for the unlearning-KL kernels: ``pytest benchmarks --benchmark-only``.

Not collected by the test suite (``testpaths = ["tests"]``). Small shapes on CPU; the issue's GPU shape
(N=8192, H=4096, V=32000, bf16) and the Llama-3 vocab when CUDA is present. Implementations that cannot run
here are skipped with the reason printed (-ra). Peak memory is attached to each case's ``extra_info``.
"""
from __future__ import annotations

import gc

import pytest
import torch

import bench_common as bc

CUDA = torch.cuda.is_available()
CPU_SHAPES = [(256, 128, 8000), (512, 256, 32000)]
GPU_SHAPES = [(8192, 4096, 32000), (8192, 4096, 128256)]
CASES = [("cpu", "fp32", s) for s in CPU_SHAPES]
if CUDA:
    CASES += [("cuda", "bf16", s) for s in GPU_SHAPES]
IMPLS = list(bc.IMPLS)


def _id(case):
    device, dtype, (n, h, v) = case
    return f"{device}-{dtype}-N{n}-H{h}-V{v}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_forward_backward(benchmark, case, impl):
    device, dtype, (n, h, v) = case
    reason = bc.unavailable_reason(impl, device)
    if reason:
        pytest.skip(reason)
    if impl == "compiled" and device == "cpu" and n * v > 512 * 8000:
        pytest.skip("torch.compile on CPU only benchmarked at the smallest shape here (compiling takes ~1 min "
                    "per shape; benchmarks/bench_kernel.py times it at the headline shape)")
    if device == "cuda" and impl == "torch_chunked" and v > 32000:
        pytest.skip("torch chunked backend (fp32 GEMMs) only at V=32000 on GPU, to keep the run short")
    torch.manual_seed(0)
    step = bc.build_step(impl, bc.make_case(n, h, v, bc.DTYPES[dtype], device))
    step()  # warm-up: compile / autotune outside the timed rounds
    bc.sync(device)
    if impl not in bc.FLOORS:
        if device == "cuda":
            peak = bc.measure_cuda_peak(step)
        else:
            peak = None  # in-process RSS peaks are polluted by other cases; bench_kernel.py isolates them
        benchmark.extra_info["peak_extra_mib"] = None if peak is None else peak / 2**20

    def run():
        step()
        bc.sync(device)

    benchmark.extra_info.update(n=n, h=h, v=v, dtype=dtype, device=bc.device_name(device))
    benchmark.pedantic(run, rounds=3 if device == "cpu" else 10, iterations=1, warmup_rounds=0)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
