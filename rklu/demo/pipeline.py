"""The demo's run: the stages in order, each evaluated, then ``results.json``, ``results.md`` and the plot
(see ``rklu.demo`` for what is run and how it is evaluated)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rklu.demo.report import markdown, record
from rklu.demo.rows import demo_eval_sets
from rklu.demo.settings import ALL_METHODS, FULL_START, MODELS, common_overrides, run_name, slices, takes_alpha
from rklu.demo.stages import drop_checkpoints, eval_cached, finished, load_model_dir, metrics_complete, run_stage
from rklu.eval.evaluator import Evaluator, PrivacySets
from rklu.eval.tofu_logs import FORGET_FILE, RETAIN_FILE, load_eval_logs


def run_demo(s: dict, out: Path, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    from rklu.environment import software_versions
    from rklu.eval.plots import plot_fq_vs_mu
    from rklu.eval.report import summarize
    from rklu.io import atomic_write_json, atomic_write_text
    from rklu.training import augment, finetune, unlearn

    start = time.time()
    out = Path(out).resolve()
    s = {"model": "tiny", "preset": "tiny-cpu", "full_start": FULL_START, "prompt_format": "plain",
         "eval_utility_rows": 0, "eval_dtype": "float32", "privacy": False, **s}
    s.setdefault("alphas", [float(s["alpha"])])
    preset, base = s["preset"], s["model"]
    sl = slices(s["split"], s["full_start"])
    common = common_overrides(s)
    timings: dict = {}
    trained = [m for m in s["methods"] if m != "task-arithmetic"]
    # (method, alpha) pairs: a method that reads alpha runs once per swept value, the others once
    variants = [(m, a) for m in trained for a in (s["alphas"] if takes_alpha(m) else [s["alpha"]])]
    n_stages = 5 + len(variants) * s["seeds"] + ("task-arithmetic" in s["methods"])
    bar = tqdm(total=n_stages, desc="demo", disable=not progress, unit="stage", file=sys.stderr)

    def step(name):
        bar.set_description(f"demo: {name}")
        bar.refresh()
        return time.time()

    def done(name, t0, reused=False):
        timings[name] = {"seconds": round(time.time() - t0, 1), "reused": reused}
        bar.update(1)

    batch = 64 if base == "tiny" else 16  # a 135M model's [batch x len x 49152] logits: keep batches small
    evaluator = Evaluator(demo_eval_sets(s["split"], s["eval_retain_rows"], s["full_start"], s["eval_utility_rows"]),
                          max_new_tokens=s["max_new_tokens"], batch_size=batch, prompt_format=s["prompt_format"],
                          dtype=s["eval_dtype"], privacy=PrivacySets.tofu(s["split"]) if s["privacy"] else None)
    metric_keys = ("forget_quality", "privleak") if s["privacy"] else ("forget_quality",)
    models = out / "models"
    ft = dict(epochs=s["finetune_epochs"], learning_rate=s["finetune_lr"], **common)

    t0 = step("original (finetune)")
    original, reused = run_stage(finetune, "finetune", models / "original", dict(model=base, data=sl["full"], **ft),
                                 progress=progress, preset=preset)
    done("original", t0, reused)
    orig_model = str((original / "model").resolve())

    t0 = step("retain oracle (finetune)")
    # the tiny oracle reuses the original's trained tokenizer; a pretrained model has its own
    oracle_tok = dict(tokenizer=orig_model) if base == "tiny" else {}
    retain, r_reused = run_stage(finetune, "finetune", models / "retain",
                                 dict(model=base, data=sl["retain"], **oracle_tok, **ft), progress=progress, preset=preset)
    done("retain", t0, r_reused)

    t0 = step("augmented")
    augmented, a_reused = run_stage(augment, "augment", models / "augmented",
                                    dict(model=orig_model, forget=sl["forget"], epochs=s["augment_epochs"], **common),
                                    progress=progress, preset=preset)
    done("augmented", t0, a_reused)

    t0 = step("evaluate retain oracle + original")
    eval_cached(evaluator, retain / "model", out / "eval" / "retain", r_reused)  # writes the oracle's logs
    oracle_logs = load_eval_logs(out / "eval" / "retain", required=evaluator.files)
    evaluator.retain_forget_log = oracle_logs[FORGET_FILE]
    evaluator.retain_eval_dir = out / "eval" / "retain"
    # forget quality 1 and privleak 0 by construction (the oracle compared with itself)
    oracle = evaluator.metrics(oracle_logs, out / "eval" / "retain")
    baseline = eval_cached(evaluator, original / "model", out / "eval" / "original", reused and r_reused)
    done("evaluate_baselines", t0)

    tokenizer = load_model_dir(Path(orig_model))[1]
    records = []
    run_dirs = {}
    components = {"original": baseline, "retain oracle": oracle}
    unlearn_common = dict(model=orig_model, augmented=str(augmented / "model"), forget=sl["forget"],
                          retain=sl["retain"], learning_rate=s["unlearn_lr"], retain_weight=s["retain_weight"],
                          **common)
    if s["warmup_epochs"] > 0:  # the paper's schedule: linear warmup, then linear decay to 0
        unlearn_common.update(warmup_epochs=s["warmup_epochs"], lr_schedule="linear")
    for method, alpha in variants:
        for seed in range(1, s["seeds"] + 1):
            name = run_name(method, seed, alpha, s["alpha"])
            t0 = step(f"unlearn {name}")
            run_dir = out / "runs" / name
            overrides = dict(unlearn_common, method=method, seed=seed, epochs=s["unlearn_epochs"], alpha=alpha)
            reuse = (finished(run_dir, "unlearn", overrides, preset)
                     and metrics_complete(run_dir, s["unlearn_epochs"], metric_keys))
            if not reuse:
                unlearn(preset=preset, output_dir=str(run_dir), overwrite=True, progress=progress,
                        evaluate=evaluator.callback(tokenizer, run_dir), **overrides)
                drop_checkpoints(run_dir)
            run_dirs[name] = run_dir.relative_to(out).as_posix()
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
            for r in metrics:
                records.append(record(method, seed, alpha if takes_alpha(method) else None, r["epoch"], r))
            components[name] = metrics[-1]
            done(name, t0, reuse)
    if "task-arithmetic" in s["methods"]:
        t0 = step("task-arithmetic")
        run_dir = out / "runs" / "task-arithmetic"
        overrides = dict(unlearn_common, method="task-arithmetic")
        reuse = finished(run_dir, "unlearn", overrides, preset) and metrics_complete(run_dir, 1, metric_keys)
        if not reuse:
            unlearn(preset=preset, output_dir=str(run_dir), overwrite=True, progress=progress, **overrides)
            model, tok = load_model_dir(run_dir / "model")
            m = evaluator.evaluate(model, tok, run_dir / "eval" / "epoch_1")
            atomic_write_json(run_dir / "metrics.json", [{"epoch": 1, **m}])
        run_dirs["task-arithmetic"] = run_dir.relative_to(out).as_posix()
        r = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))[0]
        components["task-arithmetic"] = r
        records.append(record("task-arithmetic", 0, None, 1, r))
        done("task-arithmetic", t0, reuse)
    bar.set_description("demo: results")

    summary = summarize(records)
    for g in summary["groups"]:
        g["_records"] = [r for r in records if (r["method"], r["alpha"]) == (g["method"], g["alpha"])]
    order = {m: i for i, m in enumerate(ALL_METHODS)}
    summary["groups"].sort(key=lambda g: order.get(g["method"], 99))
    wall = time.time() - start
    md = markdown(s, summary, baseline, oracle, wall, components if s["eval_utility_rows"] else None)
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
        "eval": {"forget_set": f"{s['split']}_perturbed ({len(evaluator.rows(FORGET_FILE))} rows)",
                 "retain_set": f"{len(evaluator.rows(RETAIN_FILE))} trained-on retain rows from forget10_perturbed",
                 "model_utility": ("TOFU's hmean of the 9 retain / real-authors / world-facts values "
                                   f"(first {s['eval_utility_rows']} rows of each TOFU set)" if s["eval_utility_rows"]
                                   else "hmean(retain prob, retain ROUGE-L recall, retain truth-ratio score)")},
        "original": baseline, "retain_oracle": oracle, "summary": summary, "run_dirs": run_dirs,
        "timings": timings, "wall_time_s": round(wall, 1),
        "environment": software_versions(),  # the table is exact only for these releases (rklu.environment)
        # relative to --out (the folder holding results.json): the file stays valid when the folder moves
        "paths_relative_to": "the folder holding this results.json (rklu demo --out)",
        "files": {"markdown": "results.md", "plot": Path(plot).resolve().relative_to(out).as_posix(), "json": "results.json"},
    }
    atomic_write_text(out / "results.md", md)
    atomic_write_json(out / "results.json", results)
    bar.update(n_stages - bar.n)
    bar.close()
    return results
