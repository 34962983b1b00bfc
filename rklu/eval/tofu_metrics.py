"""TOFU's metric math (Maini et al., 2024), as locuslab/tofu's ``aggregate_eval_stat.py`` and
``evaluate_util.py::eval_rouge_recall`` compute it:

* truth ratio ``R = exp(mean(average_perturb_loss) - avg_paraphrased_loss)`` per sample;
* forget quality = ``scipy.stats.ks_2samp(R_model_forget, R_retain_model_forget).pvalue``;
* per set: probability (retain/forget: ``mean(exp(-avg_gt_loss))``; real authors/world facts:
  ``mean(p_true / (p_true + sum(p_perturbed)))`` with ``p = exp(-loss per token)``), ROUGE-L recall mean,
  truth-ratio score (forget: ``mean(min(R, 1/R))``; others: ``mean(max(0, 1 - 1/R))``);
* model utility = ``scipy.stats.hmean`` of the 9 retain/real-authors/world-facts values (of the utility
  sets a log bundle holds: a subset evaluation, e.g. the retain set alone, gets the mean of its own).

The ``*_metric`` functions at the end are the registered forms (``rklu.eval.metrics``): they read an
``EvalContext`` and return the keys they add to an aggregate.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from rklu.eval.tofu_logs import FORGET_FILE, SET_NAMES, UTILITY_FILES, per_sample, sorted_indices

_SCORER = None


def _rouge_scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    return _SCORER


def rouge_recalls(predictions: Sequence[str], references: Sequence[str]) -> tuple[list[float], list[float]]:
    """(ROUGE-1 recall, ROUGE-L recall) per pair, with stemming, as TOFU's ``eval_rouge_recall``."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = _rouge_scorer()
    r1, rl = [], []
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # score(target, prediction)
        r1.append(float(scores["rouge1"].recall))
        rl.append(float(scores["rougeL"].recall))
    return r1, rl


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L recall (LCS / reference length, Porter stemming) of each prediction against its reference."""
    return rouge_recalls(predictions, references)[1]


def truth_ratio(paraphrased_loss: float, perturbed_losses: Sequence[float]) -> float:
    """TOFU's aggregation truth ratio ``R = exp(mean(perturbed) - paraphrased)`` from per-token losses.

    R > 1: the model prefers the (paraphrased) true answer over the perturbed wrong ones.
    (TOFU's per-sample log key ``truth_ratio`` stores the inverse, ``exp(paraphrased - mean(perturbed))``.)
    """
    return float(math.exp(float(np.mean(perturbed_losses)) - float(paraphrased_loss)))


def truth_ratio_score(ratios: Iterable[float], forget: bool = False) -> float:
    """Mean truth-ratio score: ``mean(max(0, 1 - 1/R))`` (utility sets) or ``mean(min(R, 1/R))`` (forget)."""
    r = np.asarray(list(ratios), dtype=np.float64)
    if forget:
        return float(np.mean(np.minimum(r, 1.0 / r)))
    return float(np.mean(np.maximum(0.0, 1.0 - 1.0 / r)))


def normalized_probability(true_loss: float, perturbed_losses: Sequence[float]) -> float:
    """``p_true / (p_true + sum(p_perturbed))`` with ``p = exp(-loss per token)``."""
    p_true = math.exp(-float(true_loss))
    p_all = p_true + float(np.sum(np.exp(-np.asarray(perturbed_losses, dtype=np.float64))))
    return p_true / p_all


# ------------------------------------------------------------------------------------------ per log
def truth_ratios(log: Mapping, where: str = "log") -> np.ndarray:
    """Per-sample ``R = exp(mean(average_perturb_loss) - avg_paraphrased_loss)`` of one log, in index order."""
    para = per_sample(log, "avg_paraphrased_loss", where)
    pert = per_sample(log, "average_perturb_loss", where)
    keys = sorted_indices(para)
    missing = [k for k in keys if k not in pert]
    if missing:
        raise ValueError(f"{where}: samples {missing[:5]} have avg_paraphrased_loss but no average_perturb_loss")
    return np.array([math.exp(float(np.mean(np.atleast_1d(pert[k]))) - float(para[k])) for k in keys], dtype=np.float64)


def set_metrics(log: Mapping, filename: str, where: str = "log") -> dict:
    """Probability, ROUGE-L recall mean and truth-ratio score of one set, as TOFU's ``get_model_utility``."""
    gt = per_sample(log, "avg_gt_loss", where)
    keys = sorted_indices(gt)
    if "eval_log" in filename:  # retain and forget: plain probability of the true answer
        prob = float(np.mean(np.exp(-np.array([float(gt[k]) for k in keys]))))
    else:
        pert = per_sample(log, "average_perturb_loss", where)
        prob = float(np.mean([normalized_probability(float(gt[k]), np.atleast_1d(pert[k])) for k in keys]))
    rouge = float(np.mean([float(v) for v in per_sample(log, "rougeL_recall", where).values()]))
    ratio = truth_ratio_score(truth_ratios(log, where), forget=(filename == FORGET_FILE))
    return {"prob": prob, "rouge_l": rouge, "truth_ratio": ratio}


def forget_quality(model_logs: Mapping, retain_model_logs: Mapping) -> dict:
    """KS test between the forget-set truth ratios of the evaluated model and of the retain model."""
    from scipy.stats import ks_2samp

    ours = truth_ratios(model_logs[FORGET_FILE], f"evaluated {FORGET_FILE}")
    theirs = truth_ratios(retain_model_logs[FORGET_FILE], f"retain-model {FORGET_FILE}")
    test = ks_2samp(ours, theirs)
    return {"forget_quality": float(test.pvalue), "ks_statistic": float(test.statistic),
            "num_forget_samples": int(ours.size), "num_retain_model_forget_samples": int(theirs.size)}


def model_utility(logs: Mapping) -> dict:
    """Components per set and their harmonic mean (the 9 retain/real-authors/world-facts values, or the 3
    per utility set that ``logs`` holds)."""
    from scipy.stats import hmean

    utility = [f for f in UTILITY_FILES if f in logs]
    if not utility:
        raise ValueError(f"model utility needs at least one of {', '.join(UTILITY_FILES)}; got {', '.join(logs) or 'none'}")
    out: dict = {}
    for filename in (*UTILITY_FILES, FORGET_FILE):
        if filename not in logs:
            continue
        short = SET_NAMES[filename][0]
        for metric, value in set_metrics(logs[filename], filename, filename).items():
            out[f"{short}_{metric}"] = value
    values = [out[f"{SET_NAMES[f][0]}_{m}"] for f in utility for m in ("prob", "rouge_l", "truth_ratio")]
    out["model_utility"] = float(hmean(values))  # scipy: 0.0 when any value is 0, as in TOFU
    return out


# ------------------------------------------------------------------------------ registered metric functions
def forget_quality_metric(context) -> dict:
    """Forget quality against the retain model's forget log; ``None`` values without one."""
    if context.retain_logs is None:
        return {"forget_quality": None, "ks_statistic": None}
    return forget_quality(context.logs, context.retain_logs)


def model_utility_metric(context) -> dict:
    return model_utility(context.logs)


def forget_truth_ratio_mean_metric(context) -> dict:
    """Mean raw truth ratio R on the forget set (how far the model prefers the true answers there)."""
    return {"forget_truth_ratio_mean": float(np.mean(truth_ratios(context.logs[FORGET_FILE], FORGET_FILE)))}
