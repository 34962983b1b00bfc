"""Membership inference on the forget set and privleak, as open-unlearning reports them for TOFU
(locuslab/open-unlearning: ``src/evals/metrics/mia/min_k.py``, ``mia/min_k_plus_plus.py``,
``mia/utils.py::mia_auc``, ``src/evals/metrics/privacy.py::privleak``; configs
``configs/eval/tofu_metrics/mia_min_k*.yaml``, k = 0.4).

* Min-K% (Shi et al., 2024, "Detecting Pretraining Data from Large Language Models"): per answer,
  ``-mean`` of the ``max(1, int(0.4 n))`` lowest token log-probabilities.
* Min-K%++ (Zhang et al., 2025, ICLR): each token's log-probability standardized by the mean and standard
  deviation of ``log p`` under the model's own next-token distribution, ``(log p(y) - mu) / sqrt(var)``
  (var clamped to >= 1e-6), then the same ``-mean`` of the lowest 40%.
* AUC: forget answers labelled 0, holdout answers (TOFU's ``holdout01/05/10``: same kind of fictitious
  authors, never trained on) labelled 1, ROC AUC of the scores — 1 when the forget answers are much more
  likely than the holdout ones (memorized), ~0.5 for a model that never saw either.
* privleak = ``((1 - AUC) - (1 - AUC_ref)) / (1 - AUC_ref + 1e-10) * 100`` with ``AUC_ref`` the retain
  oracle's AUC (MUSE's convention; open-unlearning falls back to AUC_ref = 0.5 without retain-model logs).
  0 = as private as the oracle; -> -100 = the forget set is fully exposed; > 0 = over-unlearned.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rklu.eval.memorization import exact_memorization, extraction_strength, mean_defined
from rklu.eval.tofu_logs import read_json
from rklu.io import atomic_write_json

PRIVACY_FILE = "eval_privacy.json"  # ours, beside TOFU's four logs (TOFU's files stay as TOFU writes them)
MIN_K = 0.4                          # open-unlearning's TOFU configs
DEFAULT_REF_AUC = 0.5                # open-unlearning's privleak ref_value without retain-model logs
HOLDOUT_FOR = {"forget01": "holdout01", "forget05": "holdout05", "forget10": "holdout10"}
ATTACKS = ("min_k", "min_k_plus_plus")


def _bottom_k_mean(values: np.ndarray, k: float) -> float:
    num_k = max(1, int(len(values) * k))
    return float(np.mean(np.sort(values)[:num_k]))


def min_k_score(logprobs: Sequence[float], k: float = MIN_K) -> float:
    """Min-K% attack score of one answer (higher = less likely a member); 0 for an empty answer."""
    lp = np.asarray(logprobs, dtype=np.float64)
    if lp.size == 0:
        return 0.0
    return -_bottom_k_mean(lp, k)


def min_k_plus_plus_score(logprobs: Sequence[float], mu: Sequence[float], var: Sequence[float],
                          k: float = MIN_K) -> float:
    """Min-K%++ attack score of one answer (higher = less likely a member); 0 for an empty answer."""
    lp = np.asarray(logprobs, dtype=np.float64)
    if lp.size == 0:
        return 0.0
    mu, var = np.asarray(mu, dtype=np.float64), np.asarray(var, dtype=np.float64)
    if not (lp.shape == mu.shape == var.shape):
        raise ValueError(f"logprobs {lp.shape}, mu {mu.shape} and var {var.shape} must have one value per token")
    return -_bottom_k_mean((lp - mu) / np.sqrt(np.maximum(var, 1e-6)), k)


def mia_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """ROC AUC with forget = 0 and holdout = 1 (sklearn's ``roc_auc_score(labels, scores)``, ties counted
    half): the probability that a holdout answer scores higher than a forget answer."""
    from scipy.stats import rankdata

    f = np.asarray(forget_scores, dtype=np.float64)
    h = np.asarray(holdout_scores, dtype=np.float64)
    if f.size == 0 or h.size == 0:
        raise ValueError("membership-inference AUC needs at least one forget and one holdout score")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(h))):
        raise ValueError("membership-inference scores contain NaN or inf")
    ranks = rankdata(np.concatenate([f, h]))  # midranks for ties
    return float((ranks[f.size:].sum() - h.size * (h.size + 1) / 2) / (f.size * h.size))


def privleak(auc: float, ref_auc: float) -> float:
    """open-unlearning's privleak: relative gap of ``1 - AUC`` to the reference's, in percent."""
    score, ref = 1.0 - float(auc), 1.0 - float(ref_auc)
    return (score - ref) / (ref + 1e-10) * 100.0


# ------------------------------------------------------------------------------------- model scoring
def _qa(prompt_format, rows):
    return [prompt_format.prompt(r["question"]) for r in rows], [prompt_format.answer(r["answer"]) for r in rows]


def evaluate_privacy(model, tokenizer, prompt_format, forget_rows: Sequence[Mapping], holdout_rows: Sequence[Mapping], *,
                     forget_split: str | None = None, holdout_split: str | None = None, k: float = MIN_K,
                     batch_size: int = 16, max_length: int = 200, progress: bool = False) -> dict:
    """Per-sample exact memorization / extraction strength on the forget answers and Min-K% / Min-K%++
    scores on forget and holdout answers, plus their means and the two AUCs (``summary``)."""
    from rklu.eval.token_logprobs import answer_token_stats

    if not forget_rows or not holdout_rows:
        raise ValueError("privacy evaluation needs non-empty forget and holdout sets")
    log: dict[str, Any] = {"forget_split": forget_split, "holdout_split": holdout_split, "k": k}
    for role, rows in (("forget", forget_rows), ("holdout", holdout_rows)):
        prompts, answers = _qa(prompt_format, rows)
        stats = answer_token_stats(model, tokenizer, prompts, answers, batch_size=batch_size, max_length=max_length,
                                   progress=progress, desc=f"{role} token stats")
        keys = [str(i) for i in range(len(rows))]
        entry = {
            "min_k": {key: min_k_score(s["logprob"], k) for key, s in zip(keys, stats)},
            "min_k_plus_plus": {key: min_k_plus_plus_score(s["logprob"], s["mu"], s["var"], k) for key, s in zip(keys, stats)},
            "num_tokens": {key: int(s["label"].size) for key, s in zip(keys, stats)},
        }
        if role == "forget":
            entry["exact_memorization"] = {key: exact_memorization(s["pred"], s["label"]) for key, s in zip(keys, stats)}
            entry["extraction_strength"] = {key: extraction_strength(s["pred"], s["label"]) for key, s in zip(keys, stats)}
        log[role] = entry
    log["summary"] = summarize_privacy(log)
    return log


def summarize_privacy(log: Mapping) -> dict:
    """Means and AUCs of one privacy log (``evaluate_privacy`` output)."""
    forget, holdout = log["forget"], log["holdout"]
    out = {"forget_exact_memorization": mean_defined(forget["exact_memorization"].values()),
           "forget_extraction_strength": mean_defined(forget["extraction_strength"].values())}
    for attack in ATTACKS:
        out[f"mia_{attack}_auc"] = mia_auc(list(forget[attack].values()), list(holdout[attack].values()))
    out["num_forget"], out["num_holdout"] = len(forget["min_k"]), len(holdout["min_k"])
    return out


def write_privacy(out_dir, log: Mapping) -> Path:
    path = Path(out_dir) / PRIVACY_FILE
    atomic_write_json(path, log)
    return path


def load_privacy(path) -> dict | None:
    """The privacy log in an eval folder (or the file itself); ``None`` when there is none (e.g. TOFU's
    published logs, or an evaluation run with ``--no-privacy``)."""
    path = Path(path)
    target = path if path.is_file() and path.name == PRIVACY_FILE else (path if path.is_dir() else path.parent) / PRIVACY_FILE
    if not target.is_file():
        return None
    data = read_json(target)
    for key in ("forget", "holdout"):
        if not isinstance(data.get(key), Mapping):
            raise ValueError(f"{target}: not a privacy log (no {key!r} section)")
    return data


def privacy_aggregate(eval_dir, retain_eval_dir=None) -> dict:
    """The keys ``rklu eval aggregate`` adds when the evaluated folder has a privacy log: memorization
    means, both AUCs and privleak against the retain oracle's AUC (``privleak`` uses Min-K%, the attack
    open-unlearning's TOFU privleak uses; ``privleak_min_k_plus_plus`` the other one). Empty dict when
    the folder has no privacy log."""
    log = load_privacy(eval_dir)
    if log is None:
        return {}
    result = dict(summarize_privacy(log))
    ref_log = load_privacy(retain_eval_dir) if retain_eval_dir is not None else None
    if ref_log is not None and log.get("forget_split") and ref_log.get("forget_split") not in (None, log["forget_split"]):
        raise ValueError(f"privacy logs of different forget splits: {log['forget_split']} vs the retain "
                         f"oracle's {ref_log['forget_split']}")
    ref = summarize_privacy(ref_log) if ref_log is not None else None
    result["privleak_reference"] = "retain oracle" if ref else f"default AUC {DEFAULT_REF_AUC} (no retain-oracle privacy log)"
    for attack in ATTACKS:
        ref_auc = ref[f"mia_{attack}_auc"] if ref else DEFAULT_REF_AUC
        result[f"retain_mia_{attack}_auc"] = ref_auc if ref else None
        name = "privleak" if attack == "min_k" else f"privleak_{attack}"
        result[name] = privleak(result[f"mia_{attack}_auc"], ref_auc)
    return result


def privacy_metric(context) -> dict:
    """The registered form (``rklu.eval.metrics``): ``privacy_aggregate`` of the context's folders; no keys
    for logs held in memory."""
    if context.eval_dir is None:
        return {}
    return privacy_aggregate(context.eval_dir, context.retain_eval_dir)


def privacy_rows(forget_split: str, source: str, limit: int):
    """(forget rows, holdout rows, holdout split) of the bundled/hub TOFU sets, first ``limit`` rows each."""
    from rklu.data.tofu import load_tofu

    base = forget_split[: -len("_perturbed")] if forget_split.endswith("_perturbed") else forget_split
    if base not in HOLDOUT_FOR:
        raise ValueError(f"unknown forget split {forget_split!r}; expected forget01, forget05 or forget10")
    holdout_split = HOLDOUT_FOR[base]
    # open-unlearning scores the forget side on {split}_perturbed's question/answer (same rows as {split})
    forget = load_tofu(f"{base}_perturbed", source=source)
    holdout = load_tofu(holdout_split, source=source)
    take = lambda ds: [ds[i] for i in range(min(limit, len(ds)))]  # noqa: E731
    return take(forget), take(holdout), holdout_split

