"""Where the time of one fused unlearning-KL forward+backward goes on a GPU, and whether the numbers are right
at the benchmark shape (the kernel tests cover small, odd shapes; this covers the autotuned tiles at full size).

    python benchmarks/profile_kernel.py --shape 8192x4096x32000 --out benchmarks/results/gpu/profile

For each implementation: torch.profiler over a few steps -> CUDA time per kernel per step (JSON + markdown),
and, for the Triton and chunked backends, the loss and dX/dW relative errors against the torch chunked
backend (fp32 math on the same bf16 inputs) at that shape.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

CHECKED = ("triton", "triton_nofilter", "triton_atomic", "triton_store", "chunked")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def numerics(case: dict, impls: list[str]) -> list[dict]:
    """Loss and gradient errors of each backend against the torch backend on the same inputs."""
    from rklu.kernels import fused_linear_unlearning_kl

    xs, ws, xo, wo, xa, wa = (case[k] for k in ("xs", "ws", "xo", "wo", "xa", "wa"))

    def run(backend, **kw):
        xs.grad = ws.grad = None
        loss = fused_linear_unlearning_kl(xs, ws, xo, wo, xa, wa, alpha=bc.ALPHA, direction="reverse",
                                          backend=backend, check_inputs_finite=False, **kw)
        loss.backward()
        return loss.detach().float(), xs.grad.clone(), ws.grad.clone()

    ref = run("torch")
    rows = []
    for impl in impls:
        if impl not in CHECKED:
            continue
        backend, kw, mode = bc.fused_variant(impl)
        with bc.fused_backward_mode(mode):
            loss, dx, dw = run(backend, **kw)
        rows.append(dict(impl=impl, loss=loss.item(), loss_ref=ref[0].item(),
                         loss_rel_err=abs(loss.item() - ref[0].item()) / abs(ref[0].item()),
                         dx_rel_err=_rel(dx, ref[1]), dw_rel_err=_rel(dw, ref[2]),
                         finite=bool(torch.isfinite(dx).all() and torch.isfinite(dw).all())))
        print(f"numerics {impl:16s} loss {loss.item():.6f} (torch {ref[0].item():.6f})  "
              f"rel: loss {rows[-1]['loss_rel_err']:.2e} dX {rows[-1]['dx_rel_err']:.2e} "
              f"dW {rows[-1]['dw_rel_err']:.2e}", flush=True)
    xs.grad = ws.grad = None
    return rows


def profile(step, steps: int) -> list[dict]:
    """CUDA time per kernel name, per step."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None)
        if t is None:
            t = getattr(ev, "cuda_time_total", 0)
        if t <= 0:
            continue
        rows.append(dict(kernel=ev.key[:120], calls_per_step=ev.count / steps, ms_per_step=t / 1e3 / steps))
    rows.sort(key=lambda r: -r["ms_per_step"])
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="8192x4096x32000", help="NxHxV")
    p.add_argument("--dtype", default="bf16", choices=sorted(bc.DTYPES))
    p.add_argument("--impls", default="floor,eager,triton_atomic,triton_store,chunked")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=12, help="kernels listed per implementation in the markdown")
    p.add_argument("--out", required=True, help="output prefix (.json and .md are appended)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("profile_kernel.py needs a CUDA device")
    n, h, v = (int(x) for x in args.shape.lower().split("x"))
    impls = args.impls.split(",")
    case = bc.make_case(n, h, v, bc.DTYPES[args.dtype], "cuda")
    result = dict(meta=dict(device_name=torch.cuda.get_device_name(0), torch=torch.__version__, n=n, h=h, v=v,
                            dtype=args.dtype, steps=args.steps), numerics=[], profiles={})
    t0 = time.time()
    try:
        result["numerics"] = numerics(case, impls)
    except Exception as e:  # noqa: BLE001 -- a failure is a result; the profiles still run
        result["numerics_error"] = f"{type(e).__name__}: {e}"[:500]
        print("numerics failed:", result["numerics_error"], flush=True)
    for impl in impls:
        try:
            result["profiles"][impl] = profile(bc.build_step(impl, case), args.steps)
        except Exception as e:  # noqa: BLE001
            result["profiles"][impl] = [dict(kernel=f"ERROR {type(e).__name__}: {e}"[:300], calls_per_step=0,
                                             ms_per_step=0.0)]
        total = sum(r["ms_per_step"] for r in result["profiles"][impl])
        print(f"[{time.time() - t0:5.0f}s] profile {impl:16s} {total:8.2f} ms of CUDA kernels per step", flush=True)
    from rklu.io import atomic_write_text

    atomic_write_text(args.out + ".json", json.dumps(result, indent=1))
    lines = [f"# Kernel time breakdown — {result['meta']['device_name']}, N={n} H={h} V={v} {args.dtype}, "
             f"torch {torch.__version__}", "",
             "CUDA kernel time per forward+backward step (torch.profiler, mean of "
             f"{args.steps} steps after one warm-up).", ""]
    if result["numerics"]:
        lines += ["| backend | loss | torch backend loss | loss rel err | dX rel err | dW rel err |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['impl']} | {r['loss']:.6f} | {r['loss_ref']:.6f} | {r['loss_rel_err']:.1e} | "
                  f"{r['dx_rel_err']:.1e} | {r['dw_rel_err']:.1e} |" for r in result["numerics"]]
        lines.append("")
    for impl, rows in result["profiles"].items():
        total = sum(r["ms_per_step"] for r in rows)
        lines += [f"## {bc.LABELS.get(impl, impl)}: {total:.2f} ms per step", "",
                  "| kernel | calls/step | ms/step | share |", "|---|---:|---:|---:|"]
        lines += [f"| `{r['kernel']}` | {r['calls_per_step']:g} | {r['ms_per_step']:.3f} | "
                  f"{r['ms_per_step'] / total if total else 0:.0%} |" for r in rows[:args.top]]
        lines.append("")
    atomic_write_text(args.out + ".md", "\n".join(lines))
    print("wrote", args.out + ".json", args.out + ".md")


if __name__ == "__main__":
    main()
