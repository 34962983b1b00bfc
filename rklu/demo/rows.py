"""The rows the demo evaluates, and why (the evaluation itself is ``rklu.eval.evaluator``):

* forget quality: TOFU's KS-test p-value between the truth ratios of the model and of the retain oracle
  on ``forgetXX_perturbed`` (paraphrased + 5 perturbed answers per question), exactly as TOFU;
* model utility: TOFU's harmonic mean of probability, ROUGE-L recall and truth-ratio score on the
  *retain rows the model was trained on* (their paraphrased/perturbed answers come from
  ``forget10_perturbed``, which covers ``full[3600:4000]``), spread evenly over the retain authors. TOFU's
  own ``retain_perturbed`` (``full[0:440]``), real authors and world facts are about people and facts a
  tiny model trained from scratch never saw, so their scores would be noise; a pretrained model adds the
  first ``utility_rows`` rows of the real-authors and world-facts sets (as TOFU's ``ds_size`` cap takes
  them). The numbers are therefore comparable with each other, not with the paper's model utility.
"""
from __future__ import annotations

from rklu.demo.settings import FULL_START, slices
from rklu.eval.tofu import EvalSet
from rklu.eval.tofu_logs import FORGET_FILE, REAL_AUTHORS_FILE, RETAIN_FILE, WORLD_FACTS_FILE


def demo_eval_sets(split: str, retain_rows: int, full_start: int = FULL_START, utility_rows: int = 0) -> list[EvalSet]:
    """The forget split, ``retain_rows`` trained-on retain rows and, with ``utility_rows``, TOFU's
    real-authors / world-facts sets, scored as TOFU's ``eval_everything`` scores them."""
    from rklu.data.tofu import load_tofu

    forget_rows = [dict(r) for r in load_tofu(f"{split}_perturbed")]
    lo, hi = slices(split, full_start)["retain_range"]
    full = load_tofu("full")
    wanted = {full[i]["question"]: i for i in range(lo, hi)}
    pool = [dict(r) for r in load_tofu("forget10_perturbed") if r["question"] in wanted]  # full[3600:4000]
    if len(pool) != hi - lo:
        raise ValueError(f"expected {hi - lo} retain rows with perturbed answers, found {len(pool)}")
    n = min(retain_rows, len(pool))
    step = len(pool) / n
    retain = [pool[int(i * step)] for i in range(n)]  # evenly spread over the retain authors
    sets = [EvalSet(FORGET_FILE, FORGET_FILE, forget_rows, "paraphrased_answer", False),
            EvalSet(RETAIN_FILE, RETAIN_FILE, retain, "paraphrased_answer", False)]
    if utility_rows > 0:
        for filename, config in ((REAL_AUTHORS_FILE, "real_authors_perturbed"), (WORLD_FACTS_FILE, "world_facts_perturbed")):
            ds = load_tofu(config)
            sets.append(EvalSet(filename, filename, [dict(ds[i]) for i in range(min(utility_rows, len(ds)))], "answer", True))
    return sets
