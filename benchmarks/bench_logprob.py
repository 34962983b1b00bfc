"""Fused linear log-prob in a whole unlearning step: peak memory and time of an ``npo+rt`` and an ``rklu+rt``
step (forget + retain batch, AdamW), naive vs fused, measured in the same run on the same device.

- naive: what one writes without the fused ops: ``model(...).logits`` for every model and role, float32
  log-softmax, the label's log-prob (NPO, the "+RT" NLL) and the RKLU KL on the materialized logits
  (``unlearning_kl_reference``);
- fused: rklu's training loss (``get_method(name).loss``): final hidden states + lm_head into
  ``fused_linear_token_logprob`` and ``fused_linear_unlearning_kl`` (backend "auto": Triton on CUDA, the torch
  chunked backend on CPU). No [tokens x vocab] tensor.

Both variants compute the same loss (checked: the JSON records both). Peak memory is the whole step (models,
AdamW state, activations): CUDA ``max_memory_allocated``, CPU the peak RSS of a fresh process (see
bench_common). Each (method, variant) runs in its own process on CPU.

    python benchmarks/bench_logprob.py --device cpu                       # ~3 min, 1 thread
    python benchmarks/bench_logprob.py --device cpu --sizes cpu-v128k     # Llama-3 vocabulary, small body
    python benchmarks/bench_logprob.py --device cuda --sizes 1b,1b-v128k  # bf16
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402
import bench_unlearning_step as bus  # noqa: E402  (model and batch builders)

HERE = Path(__file__).resolve().parent
METHODS = ("npo+rt", "rklu+rt")
VARIANTS = ("naive", "fused")
# name -> (hidden, layers, heads, intermediate, vocab): the step benchmark's sizes plus a small body with the
# Llama-3 vocabulary, where the logits dominate the step's memory.
SIZES = dict(bus.SIZES, **{"cpu-v128k": (256, 2, 4, 688, 128256)})
bus.SIZES.update(SIZES)  # build_model looks sizes up there
ALPHA, NPO_BETA = 8.0, 0.1


def _logits(model, sub):
    return model(input_ids=sub["input_ids"], attention_mask=sub["attention_mask"], use_cache=False).logits[:, :-1]


def _label_logp(logits, labels):
    """Per-token log p(label) from materialized logits, 0 where masked (the pre-fusion NLL path)."""
    targets = labels[:, 1:]
    mask = targets != -100
    logp = torch.log_softmax(logits.float(), -1).gather(-1, targets.masked_fill(~mask, 0)[..., None]).squeeze(-1)
    return logp * mask, mask


def naive_loss(method, student, original, augmented, batch):
    import torch.nn.functional as F

    from rklu.kernels import unlearning_kl_reference

    f, r = batch["forget"], batch["retain"]
    if method == "npo+rt":
        logp = _label_logp(_logits(student, f), f["labels"])[0].sum(1)
        with torch.no_grad():
            ref = _label_logp(_logits(original, f), f["labels"])[0].sum(1)
        forget = -F.logsigmoid(-NPO_BETA * (logp - ref)).mean() * 2.0 / NPO_BETA
    else:
        with torch.no_grad():
            o_f, a_f = _logits(original, f), _logits(augmented, f)
        forget = unlearning_kl_reference(_logits(student, f), o_f, a_f, alpha=ALPHA, direction="reverse",
                                         labels=f["labels"][:, 1:])
    logp, mask = _label_logp(_logits(student, r), r["labels"])
    return forget + (-logp.sum() / mask.sum())


def setup(method, variant, size, rows, seq, dtype, device):
    from rklu.methods import LossContext, get_method
    from rklu.models.heads import ModelTeacher

    student = bus.build_model(size, dtype, device, seed=0)
    original = bus.build_model(size, dtype, device, seed=1)
    augmented = bus.build_model(size, dtype, device, seed=2) if method.startswith("rklu") else None
    vocab = SIZES[size][4]
    batch = {"forget": bus.make_batch(rows, seq, vocab, device, 10, 0),
             "retain": bus.make_batch(rows, seq, vocab, device, 11, 0)}
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batch.values())
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    if variant == "naive":
        for m in (original, augmented):
            if m is not None:
                m.eval().requires_grad_(False)

        def loss_fn():
            return naive_loss(method, student, original, augmented, batch)
    else:
        ctx = LossContext(model=student, original=ModelTeacher(original),
                          augmented=None if augmented is None else ModelTeacher(augmented), alpha=ALPHA,
                          retain_weight=1.0, npo_beta=NPO_BETA, kl_backend="auto")
        m = get_method(method)

        def loss_fn():
            return m.loss(ctx, batch)[0]
    student.train()

    return bc.training_step(optimizer, loss_fn), tokens


def measure(method, variant, size, rows, seq, dtype_name, device, steps, threads=None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    row = dict(method=method, variant=variant, size=size, rows_per_role=rows, seq=seq, dtype=dtype_name, device=device)
    import transformers.models.llama.modeling_llama  # noqa: F401 -- imports before the memory baseline
    import rklu.methods  # noqa: F401
    gc.collect()
    base_rss = bc.reset_peak_rss() if device == "cpu" else None
    try:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step, tokens = setup(method, variant, size, rows, seq, bc.DTYPES[dtype_name], device)
        row["tokens_per_step"] = tokens
        row["loss"] = float(step())  # warm-up: optimizer state, autotuning; the first step's loss (same weights)
        bc.sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            bc.reset_peak_rss()
        times = []
        for _ in range(steps):
            bc.sync(device)
            t0 = time.perf_counter()
            step()
            bc.sync(device)
            times.append(time.perf_counter() - t0)
        row["peak_bytes"] = torch.cuda.max_memory_allocated() if device == "cuda" else bc.peak_rss() - base_rss
        row.update(status="ok", times_s=times, step_s=statistics.median(times))
    except Exception as e:  # noqa: BLE001
        bc.failed_row(row, e)
    return row


def measure_isolated(**kw) -> dict:
    return bc.measure_in_subprocess("bench_logprob", str(HERE), **kw)


def markdown(result) -> str:
    m = result["meta"]
    lines = [f"# Fused linear log-prob in an unlearning step ({m['device_name']}, {m['dtype']})", "",
             f"{m['rows']} rows per role (forget + retain) x {m['seq']} tokens, AdamW, median of {m['steps']} steps "
             f"after a warm-up step; {m['memory_method']}.", ""]
    if m["device"] == "cpu":
        lines += [f"CPU numbers come from a busy, shared 2-core machine with torch.set_num_threads({m['threads']}): "
                  "timings vary by tens of percent between runs; compare the ratios within this run.", ""]
    lines += ["| size | method | variant | step (s) | peak (MiB) | time vs naive | peak vs naive | loss |",
              "|---|---|---|---|---|---|---|---|"]
    rows = result["rows"]
    for r in rows:
        base = next((b for b in rows if b["size"] == r["size"] and b["method"] == r["method"]
                     and b["variant"] == "naive"), None)
        if r["status"] != "ok":
            lines.append(f"| {r['size']} | {r['method']} | {r['variant']} | {r['status']}: {r.get('reason', '')} |||||")
            continue
        ok = base is not None and base["status"] == "ok"
        lines.append(
            f"| {r['size']} | {r['method']} | {r['variant']} | {r['step_s']:.3f} | {r['peak_bytes'] / 2**20:,.0f} | "
            + (f"{r['step_s'] / base['step_s']:.2f}x | {r['peak_bytes'] / base['peak_bytes']:.2f}x" if ok else "- | -")
            + f" | {r['loss']:.6g} |")
    lines += ["", f"params: {m['params']}; torch {m['torch']}; wall {m['wall_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--sizes", default=None, help=f"comma-separated of {','.join(SIZES)}")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--dtype", default=None, choices=sorted(bc.DTYPES))
    p.add_argument("--rows", type=int, default=None, help="rows per role (forget and retain)")
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON path or stem (default results/logprob-<device>-<dtype>.json)")
    args = p.parse_args(argv)
    cpu = args.device == "cpu"
    sizes = (args.sizes or ("cpu-20m" if cpu else "1b,1b-v128k")).split(",")
    dtype = args.dtype or ("fp32" if cpu else "bf16")
    rows, seq = args.rows or (4 if cpu else 8), args.seq or (128 if cpu else 512)
    t0 = time.time()
    result_rows, params = [], {}
    for size in sizes:
        h, layers, _, inter, vocab = SIZES[size]
        params[size] = f"{(2 * vocab * h + layers * (4 * h * h + 3 * h * inter)) / 1e6:,.1f}M (V={vocab}, H={h})"
        for method in args.methods.split(","):
            for variant in VARIANTS:
                kw = dict(method=method, variant=variant, size=size, rows=rows, seq=seq, dtype_name=dtype,
                          device=args.device, steps=args.steps, threads=args.threads)
                r = measure_isolated(**kw) if cpu else measure(**kw)
                if not cpu:
                    gc.collect()
                    torch.cuda.empty_cache()
                result_rows.append(r)
                print(f"[{time.time() - t0:6.0f}s] {size} {method} {variant:6s} " + (
                    f"{r['step_s']:.3f} s/step peak {r['peak_bytes'] / 2**20:,.0f} MiB loss {r['loss']:.6g}"
                    if r["status"] == "ok" else f"{r['status']}: {r.get('reason')}"), flush=True)
    meta = dict(device=args.device, device_name=bc.device_name(args.device), dtype=dtype, seq=seq, rows=rows,
                steps=args.steps, threads=args.threads if cpu else None, sizes=sizes, params=params,
                torch=torch.__version__, wall_s=time.time() - t0,
                memory_method=("torch.cuda.max_memory_allocated over the timed steps" if not cpu else
                               "peak RSS over the timed steps minus the RSS of the fresh interpreter after imports"))
    result = dict(meta=meta, rows=result_rows)
    out = Path(args.out) if args.out else HERE / "results" / f"logprob-{args.device}-{dtype}.json"
    out = out if out.suffix == ".json" else out.with_name(out.name + ".json")  # a stem, like bench_kernel's --out
    out.parent.mkdir(parents=True, exist_ok=True)
    from rklu.io import atomic_write_text

    atomic_write_text(out, json.dumps(result, indent=1))
    md = markdown(result)
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
