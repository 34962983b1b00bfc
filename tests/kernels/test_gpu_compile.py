"""GPU readiness on CPU (benchmarks/gpu_compile.py): every Triton kernel config must compile for sm_80 and
sm_90 without spilling and within shared memory.

CI compiles the heaviest variant (reverse KL, augmented teacher, biases) of every kernel with every bf16
config and the default fp32 config for both architectures (~30 compiles) and checks that they are clean and
reproduce the committed figures; the committed ``benchmarks/results/gpu-compile.json`` must cover the full
matrix (every variant x config x arch), be clean, and come from the current kernel sources (hash per module).
The compile runs in a subprocess without TRITON_INTERPRET (the interpreter replaces @triton.jit).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_compile.py"
COMMITTED = ROOT / "benchmarks" / "results" / "gpu-compile"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_compile  # noqa: E402


def _cuda_toolchain() -> str | None:
    try:
        import triton
    except ImportError:
        return "triton is not installed"
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
        return "this Triton wheel ships no CUDA toolchain (backends/nvidia/bin/cuobjdump)"
    return None


pytestmark = pytest.mark.skipif(_cuda_toolchain() is not None, reason=str(_cuda_toolchain()))


def _run(*args, timeout=900):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def _row(**kw):
    row = dict(module="m", kernel="k", arch="sm_80", dtype="bf16", variant="reverse,aug,bias", config="c",
               num_warps=8, num_stages=3, registers=200, stack_bytes=0, local_bytes=0, shared_bytes=100_000)
    row.update(kw)
    return row


def test_problem_rules():
    assert gpu_compile.problems(_row()) == []
    assert "spills" in gpu_compile.problems(_row(stack_bytes=24))[0]
    assert "spills" in gpu_compile.problems(_row(local_bytes=8))[0]
    # 248 KB: fits neither A100 (163 KiB) nor H100 (227 KiB); 200 KB fits only the H100.
    assert "shared memory" in gpu_compile.problems(_row(shared_bytes=253_952, arch="sm_90"))[0]
    assert gpu_compile.problems(_row(shared_bytes=204_800, arch="sm_90")) == []
    assert "shared memory" in gpu_compile.problems(_row(shared_bytes=204_800, arch="sm_80"))[0]
    assert "register" in gpu_compile.problems(_row(registers=255, num_warps=16))[0]


def test_committed_results_cover_current_kernels_without_problems():
    out = _run("--verify", "--out", str(COMMITTED), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ci_subset_compiles_clean_and_reproduces_committed(tmp_path):
    out = _run("--subset", "ci", "--out", str(tmp_path / "ci"), "--check", "--quiet")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    rows = json.loads((tmp_path / "ci.json").read_text())
    kernels = {(r["module"], r["kernel"]) for r in rows}
    assert {m for m, _ in kernels} >= {"rklu.kernels.kl.triton_fused", "rklu.kernels.kl.triton_chunked"}
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    committed = {gpu_compile._key(r): r for r in json.loads(COMMITTED.with_suffix(".json").read_text())}
    for r in rows:
        ref = committed.get(gpu_compile._key(r))
        assert ref is not None, f"{gpu_compile._key(r)} missing from the committed results"
        if ref["source_sha256"] == r["source_sha256"] and ref["triton"] == r["triton"]:
            assert (r["registers"], r["stack_bytes"], r["shared_bytes"]) == \
                (ref["registers"], ref["stack_bytes"], ref["shared_bytes"]), gpu_compile._key(r)
