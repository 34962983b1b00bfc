"""``rklu eval tofu|aggregate|case-study|copyright|capability`` and ``rklu report``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rklu.io import atomic_write_json, atomic_write_text


def _user_error(message: str) -> Exception:
    from rklu.cli import UserError

    return UserError(message)


def load_model(path: str, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer) in eval mode from a local directory or a hub id (e.g. TOFU's released
    ``locuslab/tofu_ft_llama2-7b``), through the library's loaders; pad token defaults to EOS."""
    import torch

    from rklu.models import loading

    if loading.looks_like_path(path) and not Path(path).is_dir():
        raise FileNotFoundError(f"model directory not found: {path}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = loading.default_dtype(device) if dtype == "auto" else loading.resolve_dtype(dtype)
    model = loading.load_model(path, dtype=torch_dtype, flash_attention="no", trainable=False)
    return model.to(device).eval(), loading.load_tokenizer(path)


def _prompt_format(name: str | None, model_path: str, tokenizer=None, config=None):
    """``--prompt-format``, or guessed from the model's name (last path component) and config."""
    from rklu.data.formatting import get_prompt_format, guess_prompt_format

    return get_prompt_format(name, tokenizer) if name else guess_prompt_format(model_path, config)


def _add_model_args(p: argparse.ArgumentParser):
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow Python code shipped in the model folder (auto_map) to run; off by default")


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


# ----------------------------------------------------------------------------------------------- eval tofu
def cmd_tofu(args) -> int:
    from rklu.eval.aggregate import aggregate
    from rklu.eval.tofu import evaluate_tofu

    out_dir = Path(args.out) if args.out else Path(args.model) / "eval_results"
    if args.retain_eval_dir and not Path(args.retain_eval_dir).exists():
        raise FileNotFoundError(f"retain eval dir not found: {args.retain_eval_dir}")
    model, tokenizer = load_model(args.model, args.device, args.dtype)
    evaluate_tofu(model, tokenizer, _prompt_format(args.prompt_format, args.model, tokenizer, model.config), args.forget_split,
                  out_dir, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, max_samples=args.max_samples,
                  source=args.source, ds_size=args.ds_size or None, sort_by_length=args.sort_by_length,
                  privacy=not args.no_privacy)
    print(f"wrote TOFU logs to {out_dir}")
    if args.retain_eval_dir:
        result = aggregate(out_dir, args.retain_eval_dir)
        if args.epoch is not None:
            result["epoch"] = args.epoch
        atomic_write_json(out_dir / "aggregate.json", result)
        _print_aggregate(result)
    return 0


def _print_aggregate(result) -> None:
    fq = result.get("forget_quality")
    print(f"forget quality: {fq:.4g}" if fq is not None else "forget quality: n/a (no retain logs)")
    print(f"model utility:  {result['model_utility']:.4f}")
    for key in ("retain", "real_authors", "world_facts", "forget"):
        print(f"  {key:<13} prob {result[key + '_prob']:.4f}  rougeL {result[key + '_rouge_l']:.4f}  "
              f"truth-ratio {result[key + '_truth_ratio']:.4f}")
    if result.get("privleak") is not None:
        print(f"forget memorization: exact {result['forget_exact_memorization']:.4f}  "
              f"extraction strength {result['forget_extraction_strength']:.4f}")
        print(f"privleak (Min-K%): {result['privleak']:.2f}  (Min-K%++): {result['privleak_min_k_plus_plus']:.2f}  "
              f"[MIA AUC {result['mia_min_k_auc']:.4f} / {result['mia_min_k_plus_plus_auc']:.4f}; "
              f"reference: {result['privleak_reference']}]")


def cmd_aggregate(args) -> int:
    from rklu.eval.aggregate import aggregate

    result = aggregate(args.eval_dir, args.retain_eval_dir)
    if args.epoch is not None:
        result["epoch"] = args.epoch
    eval_dir = Path(args.eval_dir)
    out = Path(args.out) if args.out else (eval_dir if eval_dir.is_dir() else eval_dir.parent) / "aggregate.json"
    atomic_write_json(out, result)
    _print_aggregate(result)
    print(f"wrote {out}")
    return 0


# ------------------------------------------------------------------------------------------ eval case-study
def cmd_case_study(args) -> int:
    from rklu.eval.case_study import case_study, case_study_markdown, load_items

    specs = []
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        if not Path(path).is_dir():
            raise FileNotFoundError(f"model directory not found: {path}")
        specs.append((name, path))
    items = load_items(args.questions, forget_split=args.forget_split, indices=args.indices, source=args.source,
                       blanks=args.blank)
    models = {name: load_model(path, args.device, args.dtype) for name, path in specs}
    fmt = _prompt_format(args.prompt_format, specs[0][1], models[specs[0][0]][1], models[specs[0][0]][0].config)
    result = case_study(models, fmt, items, top_k=args.top_k, max_new_tokens=args.max_new_tokens)
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    markdown = case_study_markdown(result)
    atomic_write_text(out.with_suffix(".md"), markdown)
    print(markdown)
    return 0


# ------------------------------------------------------------------------------------------- eval copyright
def cmd_copyright(args) -> int:
    from rklu.eval.copyright import copyright_eval, load_wikitext, perplexity, read_text

    text = read_text(args.text)
    ppl_text = read_text(args.ppl_file) if args.ppl_file else None
    model, tokenizer = load_model(args.model, args.device, args.dtype)
    result = copyright_eval(model, tokenizer, text, prompt_tokens=args.prompt_tokens, max_new_tokens=args.max_new_tokens,
                            max_passages=args.max_passages, batch_size=args.batch_size)
    if ppl_text is None and args.wikitext:
        ppl_text = load_wikitext()
    if ppl_text is not None:
        result["perplexity"] = perplexity(model, tokenizer, ppl_text, segment_tokens=args.segment_tokens,
                                          num_segments=args.ppl_segments, progress=True)
        result["perplexity"]["source"] = str(args.ppl_file) if args.ppl_file else "wikitext-2-raw-v1"
    out = Path(args.out) if args.out else Path(args.model) / "copyright_eval.json"
    atomic_write_json(out, result)
    ppl = result.get("perplexity", {}).get("perplexity")
    print(f"passages {result['num_passages']}  BLEU {result['bleu']:.2f}  ROUGE-L F1 {result['rouge_l_f1']:.4f}  "
          f"recall {result['rouge_l_recall']:.4f}" + (f"  PPL {ppl:.2f}" if ppl is not None else ""))
    print(f"wrote {out}")
    return 0


# ------------------------------------------------------------------------------------------ eval capability
def cmd_capability(args) -> int:
    from rklu.eval.capability import CapabilityUnavailable, run_capability, table1_markdown

    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"model directory not found: {args.model}")
    try:
        summary = run_capability(args.model, args.tasks, batch_size=args.batch_size, limit=args.limit,
                                 device=None if args.device == "auto" else args.device)
    except CapabilityUnavailable as error:
        raise _user_error(str(error)) from None
    out = Path(args.out) if args.out else Path(args.model) / "capability_eval.json"
    summary["table1"] = table1_markdown([summary], [args.label or Path(args.model).name])
    atomic_write_json(out, summary)
    print(summary["table1"])
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------------------------- report
def cmd_report(args) -> int:
    from rklu.eval.report import report_markdown, write_report

    for run_dir in args.run_dirs:
        if not Path(run_dir).is_dir():
            raise FileNotFoundError(f"run directory not found: {run_dir}")
    if args.retain_eval_dir and not Path(args.retain_eval_dir).exists():
        raise FileNotFoundError(f"retain eval dir not found: {args.retain_eval_dir}")
    summary = write_report(args.run_dirs, args.out, retain_eval_dir=args.retain_eval_dir, plots=not args.no_plots,
                           paper=args.paper, paper_split=args.paper_split)
    print(report_markdown(summary))
    print("wrote " + ", ".join(summary["files"].values()))
    return 0


def register(subparsers) -> None:
    from rklu.eval.capability import DEFAULT_TASKS

    ev = subparsers.add_parser("eval", help="evaluate models (TOFU, case study, copyright, capability)")
    sub = ev.add_subparsers(dest="eval_command", required=True)

    p = sub.add_parser("tofu", help="TOFU evaluation: write TOFU's four log files")
    p.add_argument("--model", required=True, help="model directory (save_pretrained layout)")
    p.add_argument("--forget-split", default="forget10", choices=["forget01", "forget05", "forget10"])
    p.add_argument("--prompt-format", default=None,
                   help="llama2, phi (TOFU's tags), plain, or chat (the tokenizer's chat template, for instruction-"
                        "tuned models) (default: guessed from the model folder's name, then its config)")
    p.add_argument("--out", default=None, help="output directory (default: MODEL/eval_results)")
    p.add_argument("--batch-size", type=_positive, default=30,
                   help="generation/loss batch size (default 30, TOFU's: with index-ordered batches the "
                        "200-token generation budget, which includes left padding, is TOFU's)")
    p.add_argument("--sort-by-length", action="store_true",
                   help="batch prompts of similar length together: faster, but a generation that does not stop "
                        "at EOS gets a different budget than in TOFU's index-ordered batches, so logs can differ "
                        "from TOFU's (and published ones)")
    p.add_argument("--max-new-tokens", type=_positive, default=None, help="default: up to 200 tokens in total, as TOFU")
    p.add_argument("--max-samples", type=_positive, default=None, help="at most this many rows per set (quick runs)")
    p.add_argument("--ds-size", type=int, default=300, help="TOFU's per-set cap (300, as the published logs); 0 = all rows")
    p.add_argument("--source", default="bundled", choices=["bundled", "hub", "auto"])
    p.add_argument("--retain-eval-dir", default=None, help="also aggregate against this retain model's logs")
    p.add_argument("--epoch", type=int, default=None, help="epoch number stored in aggregate.json (for reports)")
    p.add_argument("--no-privacy", action="store_true",
                   help="skip eval_privacy.json (exact memorization, extraction strength, Min-K%%/Min-K%%++ MIA "
                        "on forget vs TOFU's holdout set)")
    _add_model_args(p)
    p.set_defaults(func=cmd_tofu)

    p = sub.add_parser("aggregate", help="forget quality + model utility from TOFU logs")
    p.add_argument("--eval-dir", required=True, help="the evaluated model's logs (folder or eval_log_aggregated.json)")
    p.add_argument("--retain-eval-dir", required=True, help="the retain model's logs (ours or TOFU's published)")
    p.add_argument("--out", default=None, help="output JSON (default: EVAL_DIR/aggregate.json)")
    p.add_argument("--epoch", type=int, default=None, help="epoch number stored in the output (for reports)")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("case-study", help="direct answers + top-k fill-in-the-blank tokens, models side by side")
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="repeat: original=DIR unlearned=DIR ...")
    p.add_argument("--questions", default=None, help="JSON/JSONL file with question, answer, optional blank")
    p.add_argument("--forget-split", default="forget10", choices=["forget01", "forget05", "forget10"])
    p.add_argument("--indices", type=int, nargs="+", default=[0], help="rows of the forget split (without --questions)")
    p.add_argument("--blank", action="append", default=None, help="entity to blank, per index (default: last word)")
    p.add_argument("--prompt-format", default=None)
    p.add_argument("--top-k", type=_positive, default=5)
    p.add_argument("--max-new-tokens", type=_positive, default=64)
    p.add_argument("--source", default="bundled", choices=["bundled", "hub", "auto"])
    p.add_argument("--out", default="case_study.json", help="output path; .json and .md are written")
    _add_model_args(p)
    p.set_defaults(func=cmd_case_study)

    p = sub.add_parser("copyright", help="BLEU/ROUGE-L of continuations of a user text, perplexity")
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True, help="plain-text file whose passages are continued (none is shipped)")
    p.add_argument("--prompt-tokens", type=_positive, default=200)
    p.add_argument("--max-new-tokens", type=_positive, default=200)
    p.add_argument("--max-passages", type=_positive, default=None)
    p.add_argument("--batch-size", type=_positive, default=8)
    p.add_argument("--ppl-file", default=None, help="local text file for perplexity")
    p.add_argument("--wikitext", action="store_true", help="perplexity on WikiText-2 via datasets (needs the hub or cache)")
    p.add_argument("--ppl-segments", type=_positive, default=200)
    p.add_argument("--segment-tokens", type=_positive, default=512)
    p.add_argument("--out", default=None, help="output JSON (default: MODEL/copyright_eval.json)")
    _add_model_args(p)
    p.set_defaults(func=cmd_copyright)

    p = sub.add_parser("capability", help="lm-eval-harness accuracy on the paper's general benchmarks")
    p.add_argument("--model", required=True)
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS),
                   help="lm-eval task names (hub data), local task YAML files, or bundled tasks (rklu_tiny_mc)")
    p.add_argument("--label", default=None, help="row name in the Table 1 style output (default: model folder name)")
    p.add_argument("--batch-size", default="8")
    p.add_argument("--limit", type=float, default=None, help="examples per task (or fraction), for quick runs")
    p.add_argument("--out", default=None, help="output JSON (default: MODEL/capability_eval.json)")
    _add_model_args(p)
    p.set_defaults(func=cmd_capability)

    p = subparsers.add_parser("report", help="tables and plots over unlearning runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="report", help="output folder (report.md, report.json, PNGs)")
    p.add_argument("--retain-eval-dir", default=None, help="retain model logs, to aggregate raw TOFU logs on the fly")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--paper", choices=["llama2-7b", "phi-1.5"], default=None,
                   help="overlay the paper's published numbers (Wang et al., NAACL 2025, Table 8) on the table and plot")
    p.add_argument("--paper-split", choices=["forget01", "forget05", "forget10"], default=None,
                   help="the paper's forget split to show (default: the runs' own)")
    p.set_defaults(func=cmd_report)
