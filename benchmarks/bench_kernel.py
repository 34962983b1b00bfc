"""Kernel benchmark: forward + backward time and peak extra memory of the unlearning-KL implementations,
swept over vocabulary size, tokens and hidden size. Writes JSON (raw figures), markdown (ratios against the
eager baseline and the GEMM floor measured in the same run) and a PNG (time and memory vs V and vs N).

    python benchmarks/bench_kernel.py --device cpu                 # small CPU sweep (~10 min on 1 core)
    python benchmarks/bench_kernel.py --device cuda --dtype bf16   # N up to 64k, V up to 256k, H=4096

On CPU every case runs in its own subprocess (clean peak-RSS counter, see README.md "Peak memory").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

HERE = Path(__file__).resolve().parent


def sweep_points(device: str) -> list[dict]:
    """(sweep, N, H, V) points; a point shared by two sweeps is run once."""
    if device == "cuda":
        h = 4096
        pts = [dict(sweep="vocab", n=8192, h=h, v=v) for v in (32000, 64000, 128256, 256000)]
        pts += [dict(sweep="tokens", n=n, h=h, v=32000) for n in (1024, 4096, 16384, 65536)]
        pts += [dict(sweep="hidden", n=8192, h=hh, v=32000) for hh in (1024, 2048, 8192)]
        return pts
    pts = [dict(sweep="vocab", n=512, h=256, v=v) for v in (8000, 16000, 32000, 64000)]
    pts += [dict(sweep="tokens", n=n, h=256, v=16000) for n in (256, 1024, 2048)]
    pts += [dict(sweep="hidden", n=512, h=hh, v=16000) for hh in (128, 512)]
    # issue 3's CPU requirement: torch chunked peak memory <= 0.15x the reference at this shape
    pts += [dict(sweep="headline", n=2048, h=256, v=32000)]
    return pts


def parse_shapes(text: str) -> list[dict]:
    pts = []
    for item in text.split(","):
        n, h, v = (int(x) for x in item.lower().split("x"))
        pts.append(dict(sweep="custom", n=n, h=h, v=v))
    return pts


def run(args) -> dict:
    device = args.device
    points = parse_shapes(args.shapes) if args.shapes else sweep_points(device)
    impls = [i for i in (args.impls.split(",") if args.impls else bc.IMPLS)]
    compile_sweeps = set(args.compile_sweeps.split(",")) if args.compile_sweeps else None
    rows = []
    t_start = time.time()
    for p in points:
        for impl in impls:
            if impl == "compiled" and compile_sweeps is not None and p["sweep"] not in compile_sweeps:
                rows.append(dict(impl=impl, n=p["n"], h=p["h"], v=p["v"], dtype=args.dtype, device=device,
                                 sweep=p["sweep"], status="skipped",
                                 reason=f"torch.compile only timed on sweeps {sorted(compile_sweeps)} here "
                                        "(compiling costs ~1 min per shape on this CPU)"))
                continue
            reason = bc.unavailable_reason(impl, device)
            if reason:
                row = dict(impl=impl, n=p["n"], h=p["h"], v=p["v"], dtype=args.dtype, device=device,
                           status="skipped", reason=reason)
            elif device == "cpu":
                row = bc.run_isolated(impl, p["n"], p["h"], p["v"], args.dtype, device, args.repeats, args.threads,
                                      args.chunk_tokens)
            else:
                row = bc.run_case(impl, p["n"], p["h"], p["v"], args.dtype, device, args.repeats, None,
                                  args.chunk_tokens)
            row["sweep"] = p["sweep"]
            rows.append(row)
            msg = (f"{row['median_s'] * 1e3:9.1f} ms  peak+ {row.get('peak_extra_bytes', 0) / 2**20:8.1f} MiB"
                   if row["status"] == "ok" else f"{row['status']}: {row.get('reason', '')}")
            print(f"[{time.time() - t_start:6.0f}s] {p['sweep']:8s} N={p['n']:6d} H={p['h']:5d} V={p['v']:6d} "
                  f"{impl:14s} {msg}", flush=True)
    import torch

    meta = dict(device=device, device_name=bc.device_name(device), dtype=args.dtype, repeats=args.repeats,
                threads=args.threads if device == "cpu" else None, torch=torch.__version__,
                triton_autotune=os.environ.get("RKLU_TRITON_AUTOTUNE", "1") != "0",
                memory_method=("torch.cuda.max_memory_allocated - memory_allocated before the step"
                               if device == "cuda" else
                               "peak RSS (VmHWM after clear_refs reset) - RSS before the step, one subprocess per case"),
                wall_s=time.time() - t_start)
    return dict(meta=meta, rows=rows)


# ---- report --------------------------------------------------------------------------------------------------

def _key(r):
    return (r["n"], r["h"], r["v"])


def _fmt_ms(s):
    return f"{s * 1e3:,.1f}" if s is not None else "—"


def _fmt_mib(b):
    return f"{b / 2**20:,.1f}" if b is not None else "—"


def markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    ok = {(_key(r), r["impl"]): r for r in rows if r["status"] == "ok"}
    shapes = []
    for r in rows:
        if (_key(r), r.get("sweep")) not in [(s, w) for s, w in shapes] and _key(r) not in [s for s, _ in shapes]:
            shapes.append((_key(r), r.get("sweep")))
    impls = [i for i in bc.IMPLS if any(r["impl"] == i for r in rows)]
    out = [f"Device: **{meta['device_name']}** ({meta['device']}), dtype {meta['dtype']}, median of "
           f"{meta['repeats']} timed forward+backward calls after one warm-up"
           + (f", {meta['threads']} thread(s)" if meta.get("threads") else "") + f", torch {meta['torch']}.",
           f"Peak memory: {meta['memory_method']}. It includes the gradient outputs (dX, dW); "
           "\"extra beyond grads\" subtracts them.",
           "",
           "| sweep | N | H | V | implementation | time ms | x faster than eager | x GEMM floor | peak extra MiB "
           "| extra beyond grads MiB | memory / eager |",
           "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for shape, sweep in shapes:
        eager = ok.get((shape, "eager"))
        for impl in impls:
            floor = ok.get((shape, bc.floor_of(impl)))
            # eager does the 5-GEMM unlearning loss: no "x faster than eager" for rows doing Liger's work.
            baseline = None if impl in bc.LIGER_WORK else eager
            r = ok.get((shape, impl))
            if r is None:
                miss = next((x for x in rows if _key(x) == shape and x["impl"] == impl), None)
                if miss is not None and miss["status"] in ("oom", "error"):
                    out.append(f"| {sweep} | {shape[0]} | {shape[1]} | {shape[2]} | {bc.LABELS[impl]} | "
                               f"{miss['status'].upper()} | | | | | |")
                continue
            speed = f"{baseline['median_s'] / r['median_s']:.2f}" if baseline else "—"
            vs_floor = f"{r['median_s'] / floor['median_s']:.2f}" if floor else "—"
            peak = r.get("peak_extra_bytes")
            beyond = None if peak is None else peak - r.get("grad_bytes", 0)
            mem_ratio = (f"{peak / eager['peak_extra_bytes']:.3f}" if (eager and peak is not None
                                                                       and eager.get("peak_extra_bytes")) else "—")
            out.append(f"| {sweep} | {shape[0]} | {shape[1]} | {shape[2]} | {bc.LABELS[impl]} | {_fmt_ms(r['median_s'])} | "
                       f"{speed} | {vs_floor} | {_fmt_mib(peak)} | {_fmt_mib(beyond)} | {mem_ratio} |")
    skipped = {}
    for r in rows:
        if r["status"] == "skipped":
            skipped.setdefault((r["impl"], r["reason"]), 0)
            skipped[(r["impl"], r["reason"])] += 1
    if skipped:
        out += ["", "Not measured:"]
        out += [f"- {bc.LABELS[i]}: {reason} ({k} case(s))" for (i, reason), k in skipped.items()]
    tuned = [r.get("autotune") for r in rows if r.get("autotune")]
    if tuned:
        out += ["", "Triton autotune choices (kernel -> (H, V, dtype) -> config):", "```",
                json.dumps(tuned[-1], indent=1), "```"]
    return "\n".join(out) + "\n"


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for col, (sweep, x) in enumerate((("vocab", "v"), ("tokens", "n"))):
        sub = [r for r in rows if r.get("sweep") in (sweep, "headline") and
               (sweep != "vocab" or r["n"] == min(p["n"] for p in rows if p.get("sweep") == "vocab")) and
               (sweep != "tokens" or r["v"] == min(p["v"] for p in rows if p.get("sweep") == "tokens"))]
        sub = [r for r in sub if r.get("sweep") == sweep]
        for impl in bc.IMPLS:
            pts = sorted((r[x], r) for r in sub if r["impl"] == impl)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            axes[0][col].plot(xs, [p[1]["median_s"] * 1e3 for p in pts], marker="o", label=bc.LABELS[impl])
            if impl not in bc.FLOORS:
                axes[1][col].plot(xs, [p[1]["peak_extra_bytes"] / 2**20 for p in pts], marker="o", label=bc.LABELS[impl])
        fixed = sub[0] if sub else None
        where = "" if fixed is None else (f"N={fixed['n']}, H={fixed['h']}" if x == "v" else f"V={fixed['v']}, H={fixed['h']}")
        name = "vocab size V" if x == "v" else "tokens N"
        for row_i, ylabel in enumerate(("forward+backward time (ms)", "peak extra memory (MiB)")):
            ax = axes[row_i][col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(f"{name} ({where})")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    meta = result["meta"]
    fig.suptitle(f"Unlearning KL (RKLU forget loss) fwd+bwd — {meta['device_name']}, {meta['dtype']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=sorted(bc.DTYPES), help="default fp32 on CPU, bf16 on CUDA")
    p.add_argument("--shapes", help="comma-separated NxHxV, e.g. 8192x4096x32000,8192x4096x128256")
    p.add_argument("--impls", help=f"comma-separated subset of {','.join(bc.IMPLS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (median); default 3 CPU, 10 CUDA")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per case (1: steadier on a shared machine)")
    p.add_argument("--chunk-tokens", type=int, default=None, help="torch chunked backend chunk size (default: auto)")
    p.add_argument("--compile-sweeps", default=None,
                   help="only time torch.compile on these sweeps (default on CPU: headline; on CUDA: all)")
    p.add_argument("--out", default=None, help="output prefix (default benchmarks/results/kernel-<device>-<dtype>)")
    p.add_argument("--from-json", help="re-render markdown/PNG from an earlier JSON, no measuring")
    args = p.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        prefix = Path(args.from_json).with_suffix("")
    else:
        args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
        args.repeats = args.repeats or (10 if args.device == "cuda" else 3)
        if args.compile_sweeps is None and args.device == "cpu" and not args.shapes:
            args.compile_sweeps = "headline"
        result = run(args)
        prefix = Path(args.out) if args.out else HERE / "results" / f"kernel-{args.device}-{args.dtype}"
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_suffix(".json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    prefix.with_suffix(".md").write_text(md)
    has_png = plot(result, prefix.with_suffix(".png"))
    print(md)
    print(f"wrote {prefix}.json, {prefix}.md" + (f", {prefix}.png" if has_png else ""))


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
