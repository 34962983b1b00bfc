"""The demo's settings: models, methods, the TOFU slice and the (default, --quick) values of every
option."""
from __future__ import annotations

DEFAULT_OUT = "runs/demo"  # runs/demo-smollm2 for --model smollm2-135m
TRAINED_METHODS = ("rklu+kl", "fklu+kl", "ga+rt", "npo+rt")
ALL_METHODS = (*TRAINED_METHODS, "task-arithmetic")  # the default set; --methods takes any registered method
FULL_START = 3600  # the demo's slice of TOFU full: rows 3600..3999 (20 authors)
SPLIT_ROWS = {"forget01": 40, "forget05": 200}

# per model: preset, label, first row of the TOFU full slice, prompt format, default seeds, and the
# (default, quick) settings that differ from the tiny model's
MODELS = {
    "tiny": {"preset": "tiny-cpu", "label": "tiny Llama", "full_start": FULL_START, "prompt_format": "plain",
             "seeds": 3, "eval_dtype": "float32", "privacy": False, "settings": {}},
    "smollm2-135m": {
        "preset": "smollm2-135m-cpu", "label": "SmolLM2-135M-Instruct", "full_start": 3940,
        # TOFU's Phi/StableLM/Pythia tags ("Question: {q}\n" masked, "Answer: {a}" scored): shorter rows than
        # SmolLM2's chat template, which adds a default system prompt to every row
        "prompt_format": "phi", "seeds": 1,
        # evaluation in bf16, as TOFU evaluates (training stays fp32): faster matmuls on a CPU
        "eval_dtype": "bfloat16",
        # privleak (Min-K% MIA, forget vs TOFU's holdout set) beside the TOFU metrics: forward passes only
        "privacy": True,
        # sized for a shared 2-core CPU: one unlearning step runs the student and two teachers over 8 forget
        # + 8 retain rows, so epochs, rows and generated tokens are kept few
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
    known = demo_method_names()
    for m in s["methods"]:
        if m not in known:
            raise ValueError(f"unknown demo method {m!r}; expected some of {', '.join(known)}")
    if len(set(s["methods"])) != len(s["methods"]):
        raise ValueError(f"--methods names a method twice: {' '.join(s['methods'])}")
    alphas = getattr(args, "alphas", None)
    s["alphas"] = [float(a) for a in alphas] if alphas else [float(s["alpha"])]
    if any(a < 0 for a in s["alphas"]) or len(set(s["alphas"])) != len(s["alphas"]):
        raise ValueError(f"--alphas must be distinct values >= 0, got {alphas}")
    s["privacy"] = spec.get("privacy", False) if getattr(args, "privacy", None) is None else bool(args.privacy)
    s["quick"] = quick
    return s


def demo_method_names() -> tuple[str, ...]:
    """Every registered method (rklu.methods) the demo can run: all of them, ``task-arithmetic`` included."""
    from rklu.methods import method_names

    return method_names()


def takes_alpha(method: str) -> bool:
    """Whether ``method`` reads alpha (the augmented teacher's edit strength), so --alphas sweeps it."""
    from rklu.methods import get_method

    return any(hp.name == "alpha" for hp in get_method(method).hyperparameters)


def run_name(method: str, seed: int, alpha: float, default_alpha: float) -> str:
    """A run's folder name: ``rklu+kl_seed1``; a swept alpha other than the default adds ``_alpha2``."""
    if takes_alpha(method) and alpha != default_alpha:
        return f"{method}_alpha{alpha:g}_seed{seed}"
    return f"{method}_seed{seed}"


def common_overrides(s: dict) -> dict:
    if s.get("model", "tiny") != "tiny":
        return dict(prompt_format=s["prompt_format"], seed=0, save_total_limit=1)
    return dict(tiny_vocab_size=s["vocab_size"], tiny_hidden_size=s["hidden_size"], tiny_layers=s["layers"],
                tiny_heads=s["heads"], tiny_intermediate_size=3 * s["hidden_size"], seed=0,
                save_total_limit=1)


def slices(split: str, start: int = FULL_START) -> dict:
    n_forget = SPLIT_ROWS[split]
    cut = 4000 - n_forget
    if start >= cut:
        raise ValueError(f"the TOFU slice full[{start}:] holds no retain rows for {split}")
    return {"full": f"tofu:full[{start}:]", "forget": f"tofu:{split}",
            "retain": f"tofu:full[{start}:{cut}]", "retain_range": (start, cut)}
