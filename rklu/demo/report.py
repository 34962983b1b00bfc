"""The demo's ``results.md``: the peak table with the spread over seeds, the model-utility components and
the per-epoch means."""
from __future__ import annotations

import math

from rklu.demo.settings import MODELS
from rklu.eval.report import PRIVACY_KEYS, format_number


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _table(summary: dict, baseline: dict, oracle: dict, privacy: bool = False) -> str:
    def sd(group, key):
        peak = group.get("peak") or {}
        vals = [r[key] for r in group.get("_records", []) if r["epoch"] == peak.get("epoch") and _finite(r[key])]
        if len(vals) < 2:
            return ""
        m = sum(vals) / len(vals)
        return f" ± {format_number(math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)))}"

    def leak(m):  # privleak's column, when the demo scores it
        return f" {format_number(m.get('privleak'), 2)} |" if privacy else ""

    lines = ["| model | seeds | peak epoch | forget quality | model utility | forget ROUGE-L |" + (" privleak |" if privacy else ""),
             "|---|---|---|---|---|---|" + ("---|" if privacy else ""),
             f"| original (before unlearning) | – | 0 | {format_number(baseline.get('forget_quality'))} | "
             f"{format_number(baseline['model_utility'])} | {format_number(baseline['forget_rouge_l'])} |{leak(baseline)}",
             f"| retain oracle (never saw the forget set) | – | – | 1 (by definition) | "
             f"{format_number(oracle['model_utility'])} | {format_number(oracle['forget_rouge_l'])} |{leak(oracle)}"]
    for g in summary["groups"]:
        p = g["peak"] or {}
        lines.append(f"| {g['label']} | {g['num_seeds']} | {p.get('epoch', 'n/a')} | "
                     f"{format_number(p.get('forget_quality'))}{sd(g, 'forget_quality')} | "
                     f"{format_number(p.get('model_utility'))}{sd(g, 'model_utility')} | {format_number(p.get('forget_rouge_l'))} |"
                     + (f" {format_number(p.get('privleak'), 2)}{sd(g, 'privleak')} |" if privacy else ""))
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
    lines = ["| model | " + " | ".join(label for _, label in _COMPONENTS) + " |",
             "|---|" + "---|" * len(_COMPONENTS)]
    for name, m in components.items():
        lines.append(f"| {name} | " + " | ".join(format_number(m.get(key)) for key, _ in _COMPONENTS) + " |")
    return lines


def markdown(s: dict, summary: dict, baseline: dict, oracle: dict, wall: float, components: dict | None = None) -> str:
    label = MODELS[s.get("model", "tiny")]["label"]
    lines = [f"# rklu demo: TOFU {s['split']}, {label} on CPU", "",
             f"Seeds: {s['seeds']} (unlearning varies; the original, retain oracle and augmented models are "
             f"shared). Wall time: {wall / 60:.1f} min. Peak = the first epoch where the seed-mean forget "
             "quality is highest (the paper's protocol); ± = sample standard deviation over seeds at that epoch.",
             "", _table(summary, baseline, oracle, bool(s.get("privacy"))), "", _utility_text(s), ""]
    if s.get("privacy"):
        lines += ["privleak = open-unlearning's: Min-K% (k = 0.4) membership-inference AUC of the forget answers "
                  "against TOFU's holdout answers, relative to the retain oracle's AUC (0 = as private as the oracle, "
                  "-100 = fully exposed, > 0 = over-unlearned).", ""]
    if components:
        lines += ["## Model-utility components (unlearned models: last epoch)", "", *_components_table(components), ""]
    lines += ["## Per epoch (means over seeds; epoch 0 = the original model)", "",
             "| method | epoch | forget quality | model utility | forget ROUGE-L |", "|---|---|---|---|---|"]
    for g in summary["groups"]:
        lines.append(f"| {g['label']} | 0 | {format_number(baseline.get('forget_quality'))} | {format_number(baseline['model_utility'])} | "
                     f"{format_number(baseline['forget_rouge_l'])} |")
        for e in g["epochs"]:
            lines.append(f"| {g['label']} | {e['epoch']} | {format_number(e['forget_quality'])} | {format_number(e['model_utility'])} | "
                         f"{format_number(e['forget_rouge_l'])} |")
    return "\n".join(lines) + "\n"


def record(method, seed, alpha, epoch, m) -> dict:
    return {"run_dir": None, "method": method, "seed": seed, "alpha": alpha, "forget_split": None, "epoch": epoch,
            "forget_quality": m.get("forget_quality"), "model_utility": m.get("model_utility"),
            "forget_rouge_l": m.get("forget_rouge_l"), **{key: m.get(key) for key in PRIVACY_KEYS}}
