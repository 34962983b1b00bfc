"""``rklu report RUN_DIRS...``: forget quality / model utility / forget ROUGE-L per method and epoch, the
epoch of peak forget quality (the paper's protocol: the first epoch where the seed-averaged forget quality
peaks), means over seeds; markdown + JSON, and the Fig. 3 / Fig. 5 style plots.

What a run directory may hold (all optional, searched in this order; one directory = one run = one seed):

* run metadata: ``config.json|yaml``, ``resolved_config.json|yaml``, ``run_config.json`` or ``run.json`` with
  ``method``, ``seed``, ``alpha``, ``forget_split`` (or ``split``); otherwise parsed from the directory name
  (``rklu+kl_seed1``, ``..._alpha8``) -- method = directory name without ``_seed/_alpha`` parts;
* per-epoch metrics: ``metrics.json`` / ``metrics.jsonl`` / ``results.json`` (a list of records, or
  ``{"epochs": [...]}``), each with ``epoch`` and ``forget_quality``, ``model_utility``, ``forget_rouge_l``
  (``forget_rouge`` accepted), optionally ``privleak``, ``forget_extraction_strength``,
  ``forget_exact_memorization`` (``rklu.eval.privacy``; shown as extra columns when present); a record may
  also carry ``method``/``seed``/``alpha``;
* or ``aggregate.json`` files (``rklu eval aggregate`` output) anywhere below the run directory, the epoch
  taken from the JSON (``epoch``) or from a path part like ``epoch_3`` / ``epoch-3`` / ``epoch3``;
* or raw TOFU logs (``eval_log_forget.json`` + the other three) in such epoch folders, aggregated on the
  fly against ``retain_eval_dir``.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from rklu.io import atomic_write_json, atomic_write_text

CONFIG_NAMES = ("config.json", "config.yaml", "config.yml", "resolved_config.json", "resolved_config.yaml",
                "run_config.json", "run.json")
METRICS_NAMES = ("metrics.json", "metrics.jsonl", "results.json")
AGGREGATE_NAME = "aggregate.json"
# rklu.eval.privacy's keys (aggregate.json / metrics.json); columns appear in the report when a run has them
PRIVACY_KEYS = ("privleak", "forget_extraction_strength", "forget_exact_memorization")
PRIVACY_HEADERS = {"privleak": "privleak", "forget_extraction_strength": "forget extraction strength",
                   "forget_exact_memorization": "forget exact memorization"}
_EPOCH_RE = re.compile(r"(?:^|[_\-/])epoch[_\-]?(\d+)$", re.IGNORECASE)


def _load_any(path: Path):
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def _flat_get(config: Mapping, *keys):
    """First of ``keys`` found at the top level or one level down (e.g. config["unlearn"]["alpha"])."""
    for key in keys:
        if key in config:
            return config[key]
    for value in config.values():
        if isinstance(value, Mapping):
            for key in keys:
                if key in value:
                    return value[key]
    return None


def run_metadata(run_dir: Path) -> dict:
    meta: dict = {}
    for name in CONFIG_NAMES:
        path = run_dir / name
        if path.is_file():
            try:
                config = _load_any(path)
            except Exception as error:
                raise ValueError(f"{path}: unreadable run config ({error})") from None
            if isinstance(config, Mapping):
                for field, keys in (("method", ("method",)), ("seed", ("seed",)), ("alpha", ("alpha",)),
                                    ("forget_split", ("forget_split", "split"))):
                    value = _flat_get(config, *keys)
                    if value is not None and field not in meta:
                        meta[field] = value
                forget = _flat_get(config, "forget")  # our configs: forget: tofu:forget10 (maybe sliced)
                m = re.match(r"tofu:(forget\d\d)\b", str(forget)) if forget else None
                if m and "forget_split" not in meta:
                    meta["forget_split"] = m.group(1)
    name = run_dir.resolve().name
    if "seed" not in meta:
        m = re.search(r"seed[_\-]?(\d+)", name)
        meta["seed"] = int(m.group(1)) if m else None
    if "alpha" not in meta:
        m = re.search(r"alpha[_\-]?(\d+(?:\.\d+)?)", name)
        meta["alpha"] = float(m.group(1)) if m else None
    if "method" not in meta:
        method = re.sub(r"[_\-]?(seed|alpha)[_\-]?\d+(\.\d+)?", "", name).strip("_-")
        meta["method"] = method or name
    return meta


def _epoch_from_path(path: Path, root: Path) -> int | None:
    for part in reversed(path.relative_to(root).parts[:-1] if path.is_file() else path.relative_to(root).parts):
        m = _EPOCH_RE.search(part)
        if m:
            return int(m.group(1))
    return None


def _record(values: Mapping, meta: Mapping, run_dir: Path, epoch) -> dict:
    def num(*keys):
        for key in keys:
            if values.get(key) is not None:
                return float(values[key])
        return None

    return {
        "run_dir": str(run_dir), "method": str(values.get("method", meta.get("method"))),
        "seed": values.get("seed", meta.get("seed")), "alpha": values.get("alpha", meta.get("alpha")),
        "forget_split": values.get("forget_split", meta.get("forget_split")),
        "epoch": None if epoch is None else int(epoch),
        "forget_quality": num("forget_quality", "Forget Quality"),
        "model_utility": num("model_utility", "Model Utility"),
        "forget_rouge_l": num("forget_rouge_l", "forget_rouge", "ROUGE Forget"),
        **{key: num(key) for key in PRIVACY_KEYS},
    }



def _finished(paths):
    """Paths outside an interrupted evaluation's staging folder (``rklu.eval.staging``), sorted."""
    from rklu.eval.staging import STAGING_NAME

    return sorted(p for p in paths if STAGING_NAME not in p.parts)


def collect_run(run_dir, retain_eval_dir=None) -> list[dict]:
    """Per-epoch records of one run directory (see the module docstring for the layouts read)."""
    from rklu.eval.aggregate import aggregate
    from rklu.eval.tofu_logs import FORGET_FILE

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    meta = run_metadata(run_dir)
    for name in METRICS_NAMES:
        path = run_dir / name
        if path.is_file():
            data = _load_any(path)
            rows = data.get("epochs") if isinstance(data, Mapping) else data
            if isinstance(rows, list) and rows and all(isinstance(r, Mapping) for r in rows):
                records = [_record(r, meta, run_dir, r.get("epoch", n)) for n, r in enumerate(rows)]
                records = [r for r in records if r["forget_quality"] is not None or r["model_utility"] is not None]
                if records:
                    return records
    records = []
    seen = set()
    for path in _finished(run_dir.rglob(AGGREGATE_NAME)):
        data = _load_any(path)
        if isinstance(data, Mapping):
            epoch = data.get("epoch", _epoch_from_path(path, run_dir))
            records.append(_record(data, meta, run_dir, epoch))
            seen.add(path.parent.resolve())
    if retain_eval_dir is not None:
        for path in _finished(run_dir.rglob(FORGET_FILE)):
            if path.parent.resolve() in seen:
                continue
            data = aggregate(path.parent, retain_eval_dir)
            records.append(_record(data, meta, run_dir, _epoch_from_path(path, run_dir)))
    if not records:
        hint = "" if retain_eval_dir is not None else " (raw TOFU logs need --retain-eval-dir)"
        raise FileNotFoundError(f"{run_dir}: no per-epoch metrics found ({', '.join(METRICS_NAMES)}, {AGGREGATE_NAME}){hint}")
    if any(r["epoch"] is None for r in records):
        if len(records) == 1:
            records[0]["epoch"] = 0
        else:
            raise ValueError(f"{run_dir}: several results without an epoch (name folders epoch_N or add 'epoch')")
    return sorted(records, key=lambda r: r["epoch"])


def _mean(values: Iterable) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def group_label(method: str, alpha) -> str:
    return method if alpha is None else f"{method} (alpha={alpha:g})" if isinstance(alpha, (int, float)) else f"{method} (alpha={alpha})"


def summarize(records: Sequence[Mapping]) -> dict:
    """Group by (method, alpha): per-epoch means over seeds, the first epoch of peak mean forget quality,
    and per-seed peak epochs."""
    groups: dict = {}
    for r in records:
        key = (r["method"], r["alpha"])
        groups.setdefault(key, []).append(r)
    out_groups = []
    for (method, alpha), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], -math.inf if kv[0][1] is None else float(kv[0][1]))):
        epochs = sorted({r["epoch"] for r in rows})
        per_epoch = []
        for epoch in epochs:
            at = [r for r in rows if r["epoch"] == epoch]
            per_epoch.append({"epoch": epoch, "forget_quality": _mean(r["forget_quality"] for r in at),
                              "model_utility": _mean(r["model_utility"] for r in at),
                              "forget_rouge_l": _mean(r["forget_rouge_l"] for r in at),
                              **{key: _mean(r.get(key) for r in at) for key in PRIVACY_KEYS},
                              "num_seeds": len(at), "seeds": sorted({str(r["seed"]) for r in at})})
        with_fq = [e for e in per_epoch if e["forget_quality"] is not None]
        peak = max(with_fq, key=lambda e: e["forget_quality"]) if with_fq else None  # max() keeps the first maximum
        seeds_peak = {}
        for seed in sorted({str(r["seed"]) for r in rows}):
            mine = [r for r in rows if str(r["seed"]) == seed and r["forget_quality"] is not None]
            if mine:
                seeds_peak[seed] = max(sorted(mine, key=lambda r: r["epoch"]), key=lambda r: r["forget_quality"])["epoch"]
        out_groups.append({"label": group_label(method, alpha), "method": method, "alpha": alpha,
                           "num_seeds": len({str(r["seed"]) for r in rows}), "epochs": per_epoch,
                           "peak": peak, "per_seed_peak_epoch": seeds_peak})
    return {"groups": out_groups, "records": list(records)}


def format_number(value, digits=4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and (value != 0 and abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def report_markdown(summary: Mapping) -> str:
    extra = [k for k in PRIVACY_KEYS if any(e.get(k) is not None for g in summary["groups"] for e in g["epochs"])]
    head = "".join(f" {PRIVACY_HEADERS[k]} |" for k in extra)
    rule = "---|" * len(extra)

    def cells(entry):
        return "".join(f" {format_number(entry.get(k), 2 if k == 'privleak' else 4)} |" for k in extra)

    lines = ["# Unlearning report", "",
             "Peak: the first epoch where the seed-averaged forget quality is highest (the paper's protocol).", "",
             "| method | seeds | peak epoch | forget quality | model utility | forget ROUGE-L |" + head,
             "|---|---|---|---|---|---|" + rule]
    for g in summary["groups"]:
        p = g["peak"] or {}
        lines.append(f"| {g['label']} | {g['num_seeds']} | {p.get('epoch', 'n/a')} | {format_number(p.get('forget_quality'))} | "
                     f"{format_number(p.get('model_utility'))} | {format_number(p.get('forget_rouge_l'))} |" + cells(p))
    lines += ["", "## Per epoch (means over seeds)", "",
              "| method | epoch | seeds | forget quality | model utility | forget ROUGE-L |" + head,
              "|---|---|---|---|---|---|" + rule]
    for g in summary["groups"]:
        for e in g["epochs"]:
            lines.append(f"| {g['label']} | {e['epoch']} | {e['num_seeds']} | {format_number(e['forget_quality'])} | "
                         f"{format_number(e['model_utility'])} | {format_number(e['forget_rouge_l'])} |" + cells(e))
    if summary.get("paper"):
        lines.append(paper_markdown(summary).rstrip("\n"))
    runs = [r for r in summary.get("runs", []) if r.get("status")]
    if runs:
        lines += ["", "## Run status", "", "| run | status |", "|---|---|"]
        lines += [f"| {r['run_dir']} | {r['status']} |" for r in runs]
    return "\n".join(lines) + "\n"


def _paper_split(records: Sequence[Mapping], split: str | None) -> str:
    if split:
        return split
    splits = {str(r["forget_split"]).replace("tofu:", "") for r in records if r.get("forget_split")}
    if len(splits) != 1:
        raise ValueError(f"the runs' forget split is {'unknown' if not splits else 'mixed: ' + ', '.join(sorted(splits))}: "
                         "name the paper's split to compare with (--paper-split forget01|forget05|forget10)")
    return splits.pop()


def paper_markdown(summary: Mapping) -> str:
    """Our peak-epoch numbers beside the paper's, one row per method (ours first, then the paper's others)."""
    paper = summary["paper"]
    rows = {r["method"]: r for r in paper["rows"]}
    lines = ["", f"## Beside the paper: {paper['label']}", "", f"Source: {paper['citation']}", "",
             "| method | forget quality (ours) | forget quality (paper) | model utility (ours) | model utility (paper) | "
             "forget ROUGE-L (ours) | forget ROUGE-L (paper) |", "|---|---|---|---|---|---|---|"]
    shown = set()
    for g in summary["groups"]:
        p, ref = g["peak"] or {}, rows.get(g["method"], {})
        shown.add(g["method"])
        lines.append(f"| {g['label']} | {format_number(p.get('forget_quality'))} | {format_number(ref.get('forget_quality'))} | "
                     f"{format_number(p.get('model_utility'))} | {format_number(ref.get('model_utility'))} | "
                     f"{format_number(p.get('forget_rouge_l'))} | {format_number(ref.get('forget_rouge_l'))} |")
    for method, ref in rows.items():
        if method not in shown:
            lines.append(f"| {method} | | {format_number(ref.get('forget_quality'))} | | {format_number(ref.get('model_utility'))} | | "
                         f"{format_number(ref.get('forget_rouge_l'))} |")
    return "\n".join(lines) + "\n"


def write_report(run_dirs: Sequence, out_dir, *, retain_eval_dir=None, plots: bool = True, paper: str | None = None,
                 paper_split: str | None = None) -> dict:
    """Collect the runs, write ``report.json``, ``report.md`` and the PNG plots into ``out_dir``.
    ``paper="llama2-7b"``: put the paper's published numbers for the runs' forget split (or
    ``paper_split``) beside ours, in the table and on the forget-quality-vs-utility plot."""
    if not run_dirs:
        raise ValueError("no run directories given")
    from rklu.run_record import read_run_json, run_status

    records = []
    for run_dir in run_dirs:
        records.extend(collect_run(run_dir, retain_eval_dir))
    summary = summarize(records)
    # the status of each run folder, "running" checked against its process (a SIGKILLed run is stale)
    summary["runs"] = [{"run_dir": str(d), "status": run_status(read_run_json(d))} for d in run_dirs]
    if paper:
        from rklu.eval.paper import paper_results

        summary["paper"] = paper_results(paper, _paper_split(records, paper_split))
    out_dir = Path(out_dir)
    files = {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md")}
    if plots:
        from rklu.eval.plots import plot_fq_vs_mu, plot_metric_vs_alpha

        files["fq_vs_mu"] = str(plot_fq_vs_mu(summary, out_dir / "fq_vs_mu.png", paper=summary.get("paper")))
        alpha_plot = plot_metric_vs_alpha(summary, out_dir / "metric_vs_alpha.png")
        if alpha_plot is not None:
            files["metric_vs_alpha"] = str(alpha_plot)
    summary["files"] = files
    atomic_write_text(out_dir / "report.md", report_markdown(summary))
    atomic_write_json(out_dir / "report.json", summary)
    return summary
