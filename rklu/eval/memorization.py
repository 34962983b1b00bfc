"""Memorization of the forget answers under teacher forcing, as open-unlearning defines it
(locuslab/open-unlearning, ``src/evals/metrics/memorization.py``: ``exact_memorization``,
``extraction_strength``; Wang et al., 2025, "Towards Effective Evaluations and Comparisons for LLM
Unlearning Methods", ICLR). Both read the greedy prediction at every scored answer position
(``rklu.eval.token_logprobs``: all answer tokens except the final EOS).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def exact_memorization(preds: Sequence[int], labels: Sequence[int]) -> float | None:
    """Fraction of answer tokens whose greedy next-token prediction equals the label (teacher forcing).
    ``None`` for an answer with no scored token (open-unlearning logs it as None and skips it)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.shape} predictions but {labels.shape} labels")
    if labels.size == 0:
        return None
    return float(np.mean(preds == labels))


def extraction_strength(preds: Sequence[int], labels: Sequence[int]) -> float:
    """``1 - k/n`` with ``k`` the shortest prefix (in answer tokens) after which every remaining greedy
    prediction matches the answer: the fraction of the answer the model completes exactly on its own.

    Bug-compatible with open-unlearning's loop (``for k in range(n): if preds[k:] == labels[k:]: break``):
    when not even the last token matches, the loop ends at ``k = n - 1`` and the score is ``1/n``, not 0.
    An answer with no scored token scores 0, as there.
    """
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.shape} predictions but {labels.shape} labels")
    n = int(labels.size)
    if n == 0:
        return 0.0
    wrong = np.nonzero(preds != labels)[0]
    # the first matching suffix starts right after the last mismatch; capped at n - 1 as the loop is
    k = 0 if wrong.size == 0 else min(int(wrong[-1]) + 1, n - 1)
    return 1.0 - k / n


def mean_defined(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None
