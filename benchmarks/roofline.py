"""Roofline estimate of every unlearning-KL backend on H100 and A100 (no GPU needed): FLOPs and bytes per
launched kernel from the backends' own grids and tile constants (rklu/kernels/common/cost_model.py imports them
from the kernel modules; the floor, eager, torch and v1 models are in cost_model_report.py), time = sum over
kernels of max(compute, DRAM, L2 + atomics), compared with the dense floor (three logit GEMMs + dX + dW at
peak). Assumptions are listed in rklu/kernels/common/cost_model.py's docstring.

Eager PyTorch's elementwise traffic is traced, not guessed: the reference loss (materialized logits) runs
forward + backward on a small CPU case under a TorchDispatchMode that adds up the bytes of the inputs and
outputs of every non-GEMM aten op; bytes / (N * V) is its traffic per logit element (same for the torch
chunked backend's chunk math). The kept fraction f of the gradient filter comes from
benchmarks/results/grad-sparsity.json (SmolLM2 logits) when present.

    python benchmarks/roofline.py     # -> benchmarks/results/roofline.{json,md}
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

# The benchmark suite's GPU shapes (bench_kernel.sweep_points("cuda")) are read from bench_kernel.py.
HEADLINE = (8192, 4096, 32000)


def suite_shapes() -> list[tuple[int, int, int]]:
    import bench_kernel

    pts = [(p["n"], p["h"], p["v"]) for p in bench_kernel.sweep_points("cuda")]
    return list(dict.fromkeys([HEADLINE, (8192, 4096, 128256), *pts]))


class _ByteCounter(torch.utils._python_dispatch.TorchDispatchMode):
    GEMMS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "addmm_"}

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.ops: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if name not in self.GEMMS and name not in ("detach", "view", "_unsafe_view", "t", "transpose",
                                                  "expand", "alias", "slice", "select", "unsqueeze", "squeeze"):
            seen = 0
            for t in torch.utils._pytree.tree_flatten((args, kwargs, out))[0]:
                if isinstance(t, torch.Tensor):
                    seen += t.numel() * t.element_size()
            self.bytes += seen
            self.ops[name] = self.ops.get(name, 0) + seen
        return out


def traced_bytes_per_element(kind: str, n=512, h=4, v=8192, dtype=torch.bfloat16) -> dict:
    """Non-GEMM bytes per logit element of eager (``kind="eager"``) or the torch backend's chunk math."""
    import bench_common as bc

    torch.manual_seed(0)
    case = bc.make_case(n, h, v, dtype if kind == "eager" else torch.float32, "cpu")
    counter = _ByteCounter()
    with counter:
        if kind == "eager":
            bc.eager_loss(case["xs"], case["ws"], case["xo"], case["wo"], case["xa"], case["wa"]).backward()
        else:
            from rklu.kernels import fused_linear_unlearning_kl

            fused_linear_unlearning_kl(case["xs"], case["ws"], case["xo"], case["wo"], case["xa"], case["wa"],
                                       alpha=bc.ALPHA, backend="torch", check_inputs_finite=False).backward()
    top = sorted(counter.ops.items(), key=lambda kv: -kv[1])[:8]
    return dict(bytes_per_element=counter.bytes / (n * v), traced_shape=[n, h, v],
                top_ops={k: round(b / (n * v), 1) for k, b in top})


def measured_f() -> dict:
    path = RESULTS / "grad-sparsity.json"
    if not path.exists():
        return {}
    import grad_sparsity

    result = json.loads(path.read_text())
    tile = grad_sparsity.default_tile()  # the fused backward's current default (BLOCK_N, BLOCK_V)
    out = {}
    for direction in ("reverse", "forward"):
        f = grad_sparsity.headline(result, direction=direction, tile=tile)
        if f is not None:
            out[direction] = f
        f32 = grad_sparsity.headline(result, direction=direction, tile=tile, threshold="2^-28")
        if f32 is not None:
            out[direction + "_fp32"] = f32  # fp32 inputs filter at finfo(fp32).eps / 32 = 2^-28
    out["source"] = (f"benchmarks/results/grad-sparsity.json: SmolLM2-135M, TOFU forget01+retain99, 8-row batches, "
                     f"tile {tile[0]}x{tile[1]}, threshold 2^-12, sorted vocabulary")
    return out


def rows_for(shape, dtype, gpu_name, f_values, traced) -> list[dict]:
    import cost_model_report as rc
    from rklu.kernels.common import cost_model as cm

    n, h, v = shape
    s = cm.Shape(n, h, v, dtype)
    gpu = cm.GPUS[gpu_name]
    floor = rc.floor_seconds(s, gpu)
    eb, tb = traced["eager"]["bytes_per_element"], traced["torch"]["bytes_per_element"]
    cases = [("eager", False, 1.0, lambda g: rc.eager(s, g, eb), None),
             ("torch chunked", False, 1.0, lambda g: rc.torch_chunked(s, g, tb), True),
             ("triton fused v1 (before issue 11)", False, 1.0, lambda g: rc.fused_v1(s, g), None),
             ("triton fused v2, atomic dX/dW", False, 1.0, lambda g: cm.fused_v2(s, g, 1.0), None),
             ("triton fused v2, store-g + cuBLAS dX/dW", False, 1.0, lambda g: cm.fused_v2(s, g, 1.0, store_g=True), None),
             ("chunked cuBLAS", False, 1.0, lambda g: cm.chunked(s, g), None)]
    for label, f in f_values:
        cases.append(("triton fused v2, atomic dX/dW", True, f, lambda g, f=f: cm.fused_v2(s, g, f), label))
        cases.append(("triton fused v2, store-g + cuBLAS dX/dW", True, f,
                      lambda g, f=f: cm.fused_v2(s, g, f, store_g=True), label))
    out = []
    for backend, filt, f, rebuild, extra in cases:
        kernels = rebuild(gpu)
        fp32 = True if extra is True else None
        est = cm.estimate(kernels, s, gpu, fp32_gemms=fp32)
        row = dict(backend=backend, gpu=gpu_name, dtype=dtype, N=n, H=h, V=v, filtering=filt,
                   kept_fraction=f if filt else None, est_ms=round(est * 1e3, 3), floor_ms=round(floor * 1e3, 3),
                   ratio_to_floor=round(est / floor, 3),
                   kernels={k.name: round(k.seconds(gpu, fp32 if fp32 is not None else dtype == "fp32",
                                                    cm.ATOMIC_EFFICIENCY) * 1e3, 3) for k in kernels})
        if isinstance(extra, str):
            row["kept_fraction_source"] = extra
        fast_l2 = dataclasses.replace(gpu, l2_tbs=gpu.l2_tbs * 1.5)
        row["ratio_l2_x1.5"] = round(cm.estimate(rebuild(fast_l2), s, fast_l2, fp32_gemms=fp32) / floor, 3)
        if "atomic" in backend:
            row["ratio_atomics_half_rate"] = round(cm.estimate(kernels, s, gpu, cm.ATOMIC_EFFICIENCY / 2) / floor, 3)
            row["ratio_atomics_free"] = round(cm.estimate(kernels, s, gpu, math.inf) / floor, 3)
        out.append(row)
    return out


def run(args) -> dict:
    torch.set_num_threads(1)
    traced = {"eager": traced_bytes_per_element("eager"), "torch": traced_bytes_per_element("torch")}
    f = measured_f()
    rows = []
    for shape in suite_shapes():
        for gpu in ("H100", "A100"):
            dtypes = ("bf16", "fp32") if shape == HEADLINE else ("bf16",)
            for dtype in dtypes:
                f_values = [("assumed 0.1", 0.1), ("assumed 0.25", 0.25)]
                key = "reverse" if dtype == "bf16" else "reverse_fp32"
                if key in f:
                    f_values.insert(0, (f"measured SmolLM2 reverse KL ({'2^-12' if dtype == 'bf16' else '2^-28'})",
                                        f[key]))
                rows += rows_for(shape, dtype, gpu, f_values, traced)
    from rklu.kernels.common import cost_model as cm

    meta = dict(traced=traced, kept_fraction=f, gpus={k: vars(g) for k, g in cm.GPUS.items()},
                atomic_efficiency=cm.ATOMIC_EFFICIENCY, assumptions=cm.__doc__.split("Assumptions")[1].strip(),
                chunk_policies=chunk_policy_rows())
    return dict(meta=meta, rows=rows)


# Issue 23's benchmark shapes: Llama-2/3 vocabularies at H=4096 and Llama-3.2-1B's H=2048.
POLICY_SHAPES = [(8192, 4096, 32000), (8192, 4096, 128256), (8192, 4096, 256000), (8192, 2048, 128256)]


def chunk_policy_rows() -> list[dict]:
    """The chunked backend's modelled time and working set per chunk policy (cost_model_report.chunk_policies),
    bf16."""
    import cost_model_report as rc
    from rklu.kernels.common import cost_model as cm
    from rklu.kernels.kl.chunk_policy import liger_extra_bytes

    rows = []
    for gpu in ("H100", "A100"):
        for n, h, v in POLICY_SHAPES:
            s = cm.Shape(n, h, v)
            for policy, e in rc.chunk_policies(s, cm.GPUS[gpu]).items():
                rows.append(dict(gpu=gpu, N=n, H=h, V=v, policy=policy, liger_bytes=liger_extra_bytes(n, h, v), **e))
    return rows


def chunk_policy_markdown(rows: list[dict]) -> list[str]:
    out = ["## Chunked backend: chunk policy (bf16, estimates)", "",
           "Logit chunk / gradient (G) block in tokens, the working set they take (logit buffers + G; the fp32 "
           "dX/dW accumulators come on top), and the modelled time. Each G block after the first reads and writes "
           "the fp32 dW accumulator (8 V H bytes): the cost of small blocks, which sizing G apart from the logit "
           "chunk avoids at the same memory. Liger MiB: FusedLinearJSD's working set, the default budget "
           "(rklu/kernels/kl/chunk_policy.py).", "",
           "| GPU | N | H | V | policy | chunk / G tokens | working set MiB | Liger MiB | est ms | x floor |",
           "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['gpu']} | {r['N']} | {r['H']} | {r['V']} | {r['policy']} | {r['logit_tokens']} / "
                   f"{r['grad_tokens']} | {r['working_set_bytes'] / 2**20:,.0f} | {r['liger_bytes'] / 2**20:,.0f} | "
                   f"{r['seconds'] * 1e3:.1f} | {r['ratio_to_floor']:.2f} |")
    return out + [""]


def markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    n, h, v = HEADLINE
    out = ["# Roofline estimate (cost model, no GPU)", "",
           "Generated by `benchmarks/roofline.py` from `rklu/kernels/common/cost_model.py`: per launched kernel "
           "max(GEMM FLOPs at peak [+ exp/log on the SFUs], DRAM bytes / HBM bandwidth, (L2 operand bytes + fp32 "
           "atomic bytes) / L2 bandwidth), summed; floor = 3 logit GEMMs + dX + dW at peak. Estimates, not "
           "measurements. Assumptions:", "", meta["assumptions"], "",
           f"Eager's elementwise traffic (traced): {meta['traced']['eager']['bytes_per_element']:.0f} B per logit "
           f"element fwd+bwd (top ops: {meta['traced']['eager']['top_ops']}); torch chunked's chunk math: "
           f"{meta['traced']['torch']['bytes_per_element']:.0f} B.", ""]
    if meta["kept_fraction"]:
        kf = meta["kept_fraction"]
        out += [f"Kept fraction f (measured, {kf['source']}): reverse KL {kf.get('reverse', float('nan')):.3f}, "
                f"forward KL {kf.get('forward', float('nan')):.3f}.", ""]
    out += targets(result)
    out += [f"## Headline: N={n}, H={h}, V={v}", "",
            "| GPU | dtype | backend | filter f | est ms | floor ms | x floor | x floor, L2 1.5x faster | "
            "x floor, atomics at half rate | x floor, atomics free |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if (r["N"], r["H"], r["V"]) == HEADLINE:
            f = "off" if not r["filtering"] else f"{r['kept_fraction']:.3f} ({r.get('kept_fraction_source', '')})"
            out.append(f"| {r['gpu']} | {r['dtype']} | {r['backend']} | {f} | {r['est_ms']:.1f} | {r['floor_ms']:.1f} | "
                       f"**{r['ratio_to_floor']:.2f}** | {r['ratio_l2_x1.5']:.2f} | {r.get('ratio_atomics_half_rate', '')} | "
                       f"{r.get('ratio_atomics_free', '')} |")
    out += ["", "## Benchmark-suite shapes (bf16, H100 and A100): x floor", ""]
    backends = list(dict.fromkeys((r["backend"], r["filtering"], r.get("kept_fraction_source")) for r in rows))
    heads = [b if not filt else f"{b}, f={src}" for b, filt, src in backends]
    out += ["| GPU | N | H | V | " + " | ".join(heads) + " |", "|---|---:|---:|---:|" + "---:|" * len(heads)]
    for gpu in ("H100", "A100"):
        for shape in dict.fromkeys((r["N"], r["H"], r["V"]) for r in rows):
            sel = {(r["backend"], r["filtering"], r.get("kept_fraction_source")): r for r in rows
                   if r["gpu"] == gpu and (r["N"], r["H"], r["V"]) == shape and r["dtype"] == "bf16"}
            out.append(f"| {gpu} | {shape[0]} | {shape[1]} | {shape[2]} | "
                       + " | ".join(f"{sel[b]['ratio_to_floor']:.2f}" if b in sel else "—" for b in backends) + " |")
    out += [""] + chunk_policy_markdown(meta.get("chunk_policies", []))
    out += ["Per-kernel breakdown at the headline shape (H100, bf16, ms):", ""]
    for r in rows:
        if (r["N"], r["H"], r["V"]) == HEADLINE and r["gpu"] == "H100" and r["dtype"] == "bf16":
            f = "" if not r["filtering"] else f" f={r['kept_fraction']:.3f}"
            out.append(f"- {r['backend']}{f}: " + ", ".join(f"{k} {t:.2f}" for k, t in r["kernels"].items()))
    return "\n".join(out) + "\n"


def targets(result: dict) -> list[str]:
    """Issue 11's modelled targets at the headline shape on the H100, bf16, checked against the estimates."""
    rows = headline_rows(result)

    def get(backend, filt, source_prefix=None):
        for r in rows:
            if r["backend"] == backend and r["filtering"] == filt and (
                    source_prefix is None or str(r.get("kept_fraction_source", "")).startswith(source_prefix)):
                return r
        return None
    atomic, store = "triton fused v2, atomic dX/dW", "triton fused v2, store-g + cuBLAS dX/dW"
    a0, s0 = get(atomic, False), get(store, False)
    a1, s1 = get(atomic, True, "measured"), get(store, True, "measured")
    ch = get("chunked cuBLAS", False)
    out = ["## Issue 11 targets (model, H100, bf16, N=8192, H=4096, V=32000)", ""]
    best0 = min(a0, s0, key=lambda r: r["ratio_to_floor"])
    out.append(f"- fused v2 without filtering <= 1.6x floor: best backward ({best0['backend'].split(', ')[1]}) "
               f"{best0['ratio_to_floor']:.2f}x -> **{'met' if best0['ratio_to_floor'] <= 1.6 else 'NOT met'}** "
               f"(atomic {a0['ratio_to_floor']:.2f}x, store-g + cuBLAS {s0['ratio_to_floor']:.2f}x).")
    if a1 and s1:
        best1 = min(a1, s1, key=lambda r: r["ratio_to_floor"])
        out.append(f"- fused v2 with filtering at the measured f = {a1['kept_fraction']:.3f} <= 1.0x floor: best "
                   f"{best1['ratio_to_floor']:.2f}x -> **{'met' if best1['ratio_to_floor'] <= 1.0 else 'NOT met'}** "
                   f"(atomic {a1['ratio_to_floor']:.2f}x, store-g + cuBLAS {s1['ratio_to_floor']:.2f}x).")
    else:
        out.append("- fused v2 with filtering: no measured f (run benchmarks/grad_sparsity.py).")
    out.append(f"- chunked cuBLAS (O(chunk x V) memory, not O(N)): {ch['ratio_to_floor']:.2f}x.")
    pref = [f"f=1: {'atomic' if a0['est_ms'] < s0['est_ms'] else 'store-g + cuBLAS'}"]
    for r in rows:
        if r["backend"] == atomic and r["filtering"]:
            other = get(store, True, r.get("kept_fraction_source"))
            pref.append(f"f={r['kept_fraction']:.2f}: {'atomic' if r['est_ms'] < other['est_ms'] else 'store-g + cuBLAS'}")
    out += [f"- backward the model prefers: {'; '.join(pref)}.", ""]
    return out


def headline_rows(result: dict, gpu="H100", dtype="bf16") -> list[dict]:
    return [r for r in result["rows"] if (r["N"], r["H"], r["V"]) == HEADLINE and r["gpu"] == gpu
            and r["dtype"] == dtype]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(RESULTS / "roofline"))
    args = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    result = run(args)
    from rklu.io import atomic_write_text

    prefix = Path(args.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(prefix.with_suffix(".json"), json.dumps(result["rows"], indent=1) + "\n")
    atomic_write_text(prefix.with_name(prefix.name + "-meta.json"), json.dumps(result["meta"], indent=1) + "\n")
    md = markdown(result)
    atomic_write_text(prefix.with_name(prefix.name + "-table.md"), md)
    print(md)


if __name__ == "__main__":
    main()
