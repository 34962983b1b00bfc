"""Evaluate after every training epoch (the paper's protocol): TOFU logs into ``OUT/epoch_N/``, aggregated
against the retain oracle's logs, and the headline numbers returned for the run's ``metrics.json``."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

HEADLINE_KEYS = ("forget_quality", "model_utility", "forget_rouge_l", "ks_statistic",
                 "forget_exact_memorization", "forget_extraction_strength", "privleak", "privleak_min_k_plus_plus")


def tofu_epoch_evaluator(tokenizer, prompt_format, forget_split: str, out_dir, *, retain_eval_dir=None,
                         **evaluate_kwargs) -> Callable:
    """An ``evaluate(model, epoch) -> dict`` callback for the training stages."""
    from .aggregate import write_aggregate
    from .tofu import evaluate_tofu

    def evaluate(model, epoch: int) -> dict:
        eval_dir = Path(out_dir) / f"epoch_{epoch}"
        evaluate_tofu(model, tokenizer, prompt_format, forget_split, eval_dir, **evaluate_kwargs)
        result = write_aggregate(eval_dir, retain_eval_dir)
        return {key: result[key] for key in HEADLINE_KEYS if result.get(key) is not None}

    return evaluate
