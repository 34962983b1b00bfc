"""End-to-end unlearning step: forget batch + retain batch, ``rklu+kl`` loss (reverse KL to the RKLU teacher
on forget rows + forward KL to the original on retain rows), AdamW step, on a Llama-architecture model built
from a config (random weights). Three variants, measured in the same run:

- naive:        full student/original/augmented logits (model(...).logits), torch log_softmax + KL
                (rklu's unlearning_kl_reference on the materialized logits);
- fused:        rklu's training loss (``get_method("rklu+kl")``): final hidden states + lm_head into the
                fused kernel, teachers are frozen model copies;
- fused+cache:  as fused, but the teachers' final hidden states come from a TeacherCache computed once; the
                teacher models are freed (only their lm_head weights stay).

Reports step time, tokens/s, peak memory (whole process: models, optimizer, activations) and the largest
batch that fits a memory budget (GPU: the device; CPU: --cap-mib of RSS), all as ratios to naive.

    python benchmarks/bench_unlearning_step.py --device cpu                     # ~5M-param model
    python benchmarks/bench_unlearning_step.py --device cuda --sizes 125m,1b,7b # bf16
    python benchmarks/bench_unlearning_step.py --device cuda --sizes 1b-v128k,7b+lora --fit

A size ending in ``+lora`` trains a LoRA adapter (r=16 on the attention projections, rklu.models.loading's
add_lora) on the frozen student instead of every parameter; the teachers are the same full models.
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

HERE = Path(__file__).resolve().parent
VARIANTS = ("naive", "fused", "fused+cache")
# name -> (hidden, layers, heads, intermediate, vocab)
SIZES = {
    "cpu-5m": (256, 2, 4, 688, 8000),
    "cpu-20m": (256, 4, 4, 688, 32000),
    "125m": (768, 12, 12, 2048, 32000),
    "1b": (2048, 16, 16, 5504, 32000),
    "1b-v128k": (2048, 16, 16, 8192, 128256),   # Llama-3.2-1B shape
    "7b": (4096, 32, 32, 11008, 32000),         # Llama-2-7B shape
}


LORA_SUFFIX = "+lora"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def base_size(size: str) -> str:
    """The model shape of a size name (``7b+lora`` -> ``7b``), checked."""
    base = size[: -len(LORA_SUFFIX)] if size.endswith(LORA_SUFFIX) else size
    if base not in SIZES:
        raise ValueError(f"unknown size {size!r}: one of {', '.join(SIZES)}, optionally with {LORA_SUFFIX!r}")
    return base


def build_model(size: str, dtype, device, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    h, layers, heads, inter, vocab = SIZES[base_size(size)]
    config = LlamaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
                         tie_word_embeddings=False, attention_dropout=0.0)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: a 7B model built in fp32 first would not fit 3x
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def make_batch(rows: int, seq: int, vocab: int, device, seed: int, first_id: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (rows, seq), generator=gen)
    labels = ids.clone()
    labels[:, : seq // 4] = -100  # question tokens don't count (answer-only loss, as in TOFU)
    return dict(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device), labels=labels.to(device),
                example_id=torch.arange(first_id, first_id + rows).to(device))


def naive_loss(student, original, augmented, batch, alpha):
    from rklu.kernels import unlearning_kl_reference

    def logits(model, sub):
        return model(input_ids=sub["input_ids"], attention_mask=sub["attention_mask"], use_cache=False).logits[:, :-1]

    f, r = batch["forget"], batch["retain"]
    with torch.no_grad():
        o_f, a_f, o_r = logits(original, f), logits(augmented, f), logits(original, r)
    forget = unlearning_kl_reference(logits(student, f), o_f, a_f, alpha=alpha, direction="reverse",
                                     labels=f["labels"][:, 1:])
    retain = unlearning_kl_reference(logits(student, r), o_r, None, direction="forward", labels=r["labels"][:, 1:])
    return forget + retain


def setup(variant: str, size: str, rows: int, seq: int, dtype, device):
    """(step function, counted tokens per step, objects to keep alive)."""
    from rklu.methods import LossContext, get_method
    from rklu.models.heads import ModelTeacher, output_head
    from rklu.models.teacher_cache import CachedTeacher

    student = build_model(size, dtype, device, seed=0)
    if size.endswith(LORA_SUFFIX):
        from rklu.models.loading import add_lora, lora_config

        student = add_lora(student, lora_config(r=16, alpha=32, target_modules=LORA_TARGETS))
    original = build_model(size, dtype, device, seed=1)
    augmented = build_model(size, dtype, device, seed=2)
    vocab = SIZES[base_size(size)][4]
    batch = {"forget": make_batch(rows, seq, vocab, device, 10, 0), "retain": make_batch(rows, seq, vocab, device, 11, 0)}
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batch.values())
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    alpha = 8.0
    if variant == "naive":
        for m in (original, augmented):
            m.eval().requires_grad_(False)

        def loss_fn():
            return naive_loss(student, original, augmented, batch, alpha)
    else:
        teachers = {"original": ModelTeacher(original), "augmented": ModelTeacher(augmented)}
        if variant == "fused+cache":
            cached = {}
            for name, teacher in teachers.items():
                roles = ("forget", "retain") if name == "original" else ("forget",)
                rows_by_role = {role: [h.clone() for h in teacher(role, batch[role]).hidden.detach().cpu()]
                                for role in roles}
                w, b = output_head(teacher.model)
                cached[name] = CachedTeacher(rows_by_role, w.detach().clone(), None if b is None else b.detach().clone())
            teachers = cached
            del original, augmented  # only the cached hidden states and the two lm_head weights remain
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        method = get_method("rklu+kl")
        ctx = LossContext(model=student, original=teachers["original"], augmented=teachers["augmented"], alpha=alpha,
                          retain_weight=1.0, kl_backend="auto")

        def loss_fn():
            return method.loss(ctx, batch)[0]

    student.train()

    return bc.training_step(optimizer, loss_fn), tokens


def measure(variant, size, rows, seq, dtype_name, device, steps, threads=None, timing=True) -> dict:
    if threads:
        torch.set_num_threads(threads)
    dtype = bc.DTYPES[dtype_name]
    row = dict(variant=variant, size=size, rows_per_role=rows, seq=seq, dtype=dtype_name, device=device)
    import transformers.models.llama.modeling_llama  # noqa: F401 -- imports before the memory baseline
    import rklu.methods  # noqa: F401
    import rklu.models.teacher_cache  # noqa: F401
    gc.collect()
    base_rss = bc.reset_peak_rss() if device == "cpu" else None
    try:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step, tokens = setup(variant, size, rows, seq, dtype, device)
        row["tokens_per_step"] = tokens
        loss = step()  # warm-up: optimizer state, autotuning, allocator
        bc.sync(device)
        row["loss"] = float(loss)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            bc.reset_peak_rss()
        times = []
        for _ in range(steps if timing else 1):
            bc.sync(device)
            t0 = time.perf_counter()
            step()
            bc.sync(device)
            times.append(time.perf_counter() - t0)
        if device == "cuda":
            row["peak_bytes"] = torch.cuda.max_memory_allocated()
        else:
            row["peak_bytes"] = bc.peak_rss() - base_rss  # process RSS above the bare interpreter + libraries
        row.update(status="ok", times_s=times, step_s=statistics.median(times))
        row["tokens_per_s"] = tokens / row["step_s"]
    except Exception as e:  # noqa: BLE001
        bc.failed_row(row, e)
    return row


def measure_isolated(**kw) -> dict:
    return bc.measure_in_subprocess("bench_unlearning_step", str(HERE), **kw)


def largest_batch(variant, size, seq, dtype_name, device, threads, cap_bytes, start, limit, probes) -> dict:
    """Doubling then bisection over rows per role; fits = the step runs (GPU: no OOM) and, on CPU, its
    measured peak RSS stays under cap_bytes. Each probe is one measured step in a fresh process."""
    def fits(rows):
        kw = dict(variant=variant, size=size, rows=rows, seq=seq, dtype_name=dtype_name, device=device, steps=1,
                  threads=threads, timing=False)
        r = measure_isolated(**kw) if device == "cpu" else measure(**kw)
        if device == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
        ok = r["status"] == "ok" and (cap_bytes is None or r["peak_bytes"] <= cap_bytes)
        return ok, r

    lo, hi, n_probes, log = 0, None, 0, []
    rows = start
    while n_probes < probes:
        ok, r = fits(rows)
        n_probes += 1
        log.append((rows, ok, r.get("peak_bytes"), r.get("status")))
        if ok:
            lo = rows
            if hi is None:
                if rows >= limit:
                    break
                rows = min(rows * 2, limit)
                continue
        else:
            hi = rows
        if hi is not None:
            if hi - lo <= 1:
                break
            rows = (lo + hi) // 2
    return dict(variant=variant, largest_rows_per_role=lo, exact=hi is not None and hi - lo <= 1,
                upper_bound_tried=hi, search_limit=limit, probes=log)


def markdown(result) -> str:
    meta = result["meta"]
    out = [f"Device: **{meta['device_name']}**, dtype {meta['dtype']}, seq {meta['seq']} tokens, "
           f"{meta['rows']} forget + {meta['rows']} retain rows per step, median of {meta['steps']} steps after "
           "one warm-up" + (f", {meta['threads']} thread(s)" if meta.get("threads") else "") + ".",
           f"Peak memory: {meta['memory_method']}.", "",
           "| model | params | variant | step s | tokens/s | x naive tokens/s | peak MiB | peak / naive |",
           "|---|---:|---|---:|---:|---:|---:|---:|"]
    for size in meta["sizes"]:
        rs = {r["variant"]: r for r in result["rows"] if r["size"] == size}
        naive = rs.get("naive") if rs.get("naive", {}).get("status") == "ok" else None
        for v in VARIANTS:
            r = rs.get(v)
            if r is None:
                continue
            if r["status"] != "ok":
                out.append(f"| {size} | {meta['params'].get(size, '')} | {v} | {r['status'].upper()} | | | | |")
                continue
            out.append(f"| {size} | {meta['params'].get(size, '')} | {v} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                       + (f"{r['tokens_per_s'] / naive['tokens_per_s']:.2f}" if naive else "—") + " | "
                       + f"{r['peak_bytes'] / 2**20:,.0f} | "
                       + (f"{r['peak_bytes'] / naive['peak_bytes']:.3f}" if naive else "—") + " |")
    fits = result.get("largest_batch", [])
    if fits:
        out += ["", f"Largest batch (rows per role, seq {meta['seq']}) that fits "
                + (f"a {meta['cap_mib']} MiB RSS budget (measured peak per probe)" if meta.get("cap_mib")
                   else "on the device (no OOM)") + ":", "",
                "| model | variant | largest rows | x naive | exact? |", "|---|---|---:|---:|---|"]
        for size in meta["sizes"]:
            fs = {f["variant"]: f for f in fits if f.get("size") == size}
            base = fs.get("naive", {}).get("largest_rows_per_role")
            for v in VARIANTS:
                f = fs.get(v)
                if f is None:
                    continue
                lo, hi = f["largest_rows_per_role"], f["upper_bound_tried"]
                ratio = f"{lo / base:.1f}" if base else "—"
                if hi is None:
                    exact = "lower bound: fits at the search limit, not searched further"
                    ratio = f">= {ratio}"
                elif hi - lo <= 1:
                    exact = "yes"
                else:
                    exact = f"lower bound (probe limit; failed at {hi})"
                out.append(f"| {size} | {v} | {f['largest_rows_per_role']} | {ratio} | {exact} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--sizes", default=None, help=f"comma-separated of {','.join(SIZES)}")
    p.add_argument("--dtype", default=None, choices=sorted(bc.DTYPES))
    p.add_argument("--rows", type=int, default=None, help="rows per role (forget and retain) in the timed step")
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fit", action="store_true", help="also search the largest batch that fits")
    p.add_argument("--cap-mib", type=int, default=None, help="CPU memory budget for --fit (RSS above baseline)")
    p.add_argument("--fit-limit", type=int, default=None, help="stop doubling at this many rows per role")
    p.add_argument("--fit-probes", type=int, default=8)
    p.add_argument("--out", default=None)
    p.add_argument("--from-json", help="re-render the markdown from an earlier JSON, no measuring")
    args = p.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        md = markdown(result)
        Path(args.from_json).with_suffix(".md").write_text(md)
        print(md)
        return
    cpu = args.device == "cpu"
    sizes = (args.sizes or ("cpu-5m" if cpu else "125m,1b")).split(",")
    dtype = args.dtype or ("fp32" if cpu else "bf16")
    rows = args.rows or (4 if cpu else 8)
    seq = args.seq or (128 if cpu else 512)
    t0 = time.time()
    result_rows, fits, params = [], [], {}
    for size in sizes:
        h, layers, _, inter, vocab = SIZES[base_size(size)]
        params[size] = f"{(2 * vocab * h + layers * (4 * h * h + 3 * h * inter)) / 1e6:,.1f}M"
        for v in VARIANTS:
            kw = dict(variant=v, size=size, rows=rows, seq=seq, dtype_name=dtype, device=args.device,
                      steps=args.steps, threads=args.threads)
            r = measure_isolated(**kw) if cpu else measure(**kw)
            if not cpu:
                gc.collect()
                torch.cuda.empty_cache()
            result_rows.append(r)
            print(f"[{time.time() - t0:6.0f}s] {size} {v:12s} " + (
                f"{r['step_s']:.3f} s/step {r['tokens_per_s']:,.0f} tok/s peak {r['peak_bytes'] / 2**20:,.0f} MiB"
                if r["status"] == "ok" else f"{r['status']}: {r.get('reason')}"), flush=True)
        if args.fit:
            cap = args.cap_mib * 2**20 if (cpu and args.cap_mib) else None
            if cpu and cap is None:
                print("--fit on CPU needs --cap-mib; skipped")
            else:
                for v in VARIANTS:
                    f = largest_batch(v, size, seq, dtype, args.device, args.threads, cap, start=max(1, rows // 2),
                                      limit=args.fit_limit or (64 if cpu else 4096), probes=args.fit_probes)
                    f["size"] = size
                    fits.append(f)
                    print(f"[{time.time() - t0:6.0f}s] {size} {v:12s} largest rows/role {f['largest_rows_per_role']} "
                          f"(probes {f['probes']})", flush=True)
    meta = dict(device=args.device, device_name=bc.device_name(args.device), dtype=dtype, seq=seq, rows=rows,
                steps=args.steps, threads=args.threads if cpu else None, sizes=sizes, params=params,
                cap_mib=args.cap_mib if cpu else None, torch=torch.__version__, wall_s=time.time() - t0,
                memory_method=("torch.cuda.max_memory_allocated over the timed steps (everything on the device)"
                               if not cpu else "peak RSS over the timed steps minus the RSS of the fresh interpreter "
                               "after imports, before building anything (one subprocess per variant)"))
    result = dict(meta=meta, rows=result_rows, largest_batch=fits)
    prefix = Path(args.out) if args.out else HERE / "results" / f"step-{args.device}-{dtype}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    prefix.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {prefix}.json, {prefix}.md")


if __name__ == "__main__":
    main()
