"""Aggregation of TOFU logs into forget quality, model utility and their components, as locuslab/tofu's
``aggregate_eval_stat.py`` aggregates (the math: ``rklu.eval.tofu_metrics``; which numbers: the metric
registry, ``rklu.eval.metrics``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from rklu.eval.metrics import EvalContext, compute_metrics
from rklu.eval.tofu_logs import (EVAL_FILES, FORGET_FILE, REAL_AUTHORS_FILE, RETAIN_FILE, SET_NAMES, WORLD_FACTS_FILE,
                                 load_eval_logs, per_sample)
from rklu.io import atomic_write_json


def tofu_names(result: Mapping) -> dict:
    """The same numbers under the column names of TOFU's ``aggregate_eval_stat.py`` CSV."""
    names = {"prob": "Prob.", "rouge_l": "ROUGE", "truth_ratio": "Truth Ratio"}
    out = {}
    for filename in (REAL_AUTHORS_FILE, WORLD_FACTS_FILE, RETAIN_FILE, FORGET_FILE):
        short, display = SET_NAMES[filename]
        for metric, label in names.items():
            if f"{short}_{metric}" in result:
                out[f"{label} {display}"] = result[f"{short}_{metric}"]
    out["Model Utility"] = result.get("model_utility")
    out["Forget Quality"] = result.get("forget_quality")
    if result.get("ks_statistic") is not None:
        out["KS Test PVal Forget"] = result.get("forget_quality")
        out["KS Test Forget"] = result["ks_statistic"]
    return out


def aggregate(eval_dir, retain_eval_dir) -> dict:
    """Forget quality, model utility and their components, exactly as TOFU's ``aggregate_eval_stat.py``.

    ``eval_dir``: the evaluated model's logs (folder of the four files, or ``eval_log_aggregated.json``);
    ``retain_eval_dir``: the retain model's logs (ours or TOFU's published retain90/95/99 logs; only its
    ``eval_log_forget.json`` is used, and its ``eval_privacy.json`` if any), or ``None`` to skip forget quality.

    The numbers are the registered metrics' (``rklu.eval.metrics``); the built-in ones give the keys
    ``forget_quality``, ``ks_statistic``, ``model_utility``, ``{retain,real_authors,world_facts,forget}_
    {prob,rouge_l,truth_ratio}``, ``forget_truth_ratio_mean`` (mean raw R on the forget set), sample counts,
    and ``tofu`` (the same values under TOFU's CSV column names). With ``eval_privacy.json`` in ``eval_dir``
    also ``forget_exact_memorization``, ``forget_extraction_strength``, ``mia_min_k_auc``,
    ``mia_min_k_plus_plus_auc``, ``privleak``, ``privleak_min_k_plus_plus`` (``rklu.eval.privacy``).
    """
    logs = load_eval_logs(eval_dir)
    retain_logs = None if retain_eval_dir is None else load_eval_logs(retain_eval_dir, required=(FORGET_FILE,))
    context = EvalContext(logs, retain_logs, Path(eval_dir), None if retain_eval_dir is None else Path(retain_eval_dir))
    result: dict = {"eval_dir": str(eval_dir), "retain_eval_dir": None if retain_eval_dir is None else str(retain_eval_dir)}
    result.update(compute_metrics(context))
    result["num_samples"] = {SET_NAMES[f][0]: len(per_sample(logs[f], "avg_gt_loss", f)) for f in EVAL_FILES}
    result["tofu"] = tofu_names(result)
    return result


def write_aggregate(eval_dir, retain_eval_dir, out: str | os.PathLike | None = None) -> dict:
    """``aggregate`` and write it as JSON (default ``EVAL_DIR/aggregate.json``)."""
    result = aggregate(eval_dir, retain_eval_dir)
    target = Path(out) if out is not None else (Path(eval_dir) if Path(eval_dir).is_dir() else Path(eval_dir).parent) / "aggregate.json"
    atomic_write_json(target, result)
    return result
