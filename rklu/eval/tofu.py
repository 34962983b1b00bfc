"""TOFU evaluation (Maini et al., 2024), log-compatible with locuslab/tofu: a model scored on TOFU's four
sets, each written as TOFU's ``evaluate_util.py`` writes its per-sample log.

The parts: ``rklu.eval.scoring`` (tokenization, losses and greedy generation as TOFU does them),
``rklu.eval.tofu_logs`` (the files, their keys, reading and writing), ``rklu.eval.tofu_metrics`` (truth
ratio, forget quality, model utility, ROUGE) and ``rklu.eval.aggregate`` (``aggregate``: the registered
metrics of ``rklu.eval.metrics`` over a folder of logs). Their public names are importable from here too.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from rklu.eval import privacy as priv
from rklu.eval.aggregate import aggregate, tofu_names, write_aggregate  # noqa: F401  (re-exported)
from rklu.eval.scoring import (TOFU_BATCH_SIZE, TOFU_MAX_LENGTH, encode_qa, generate_greedy,  # noqa: F401
                               generation_fields, sequence_losses)
from rklu.eval.staging import staged_logs
from rklu.eval.tofu_logs import (AGGREGATED_FILE, EVAL_FILES, FORGET_FILE, PER_SAMPLE_KEYS,  # noqa: F401
                                 REAL_AUTHORS_FILE, RETAIN_FILE, SET_NAMES, UTILITY_FILES, WORLD_FACTS_FILE,
                                 load_eval_logs, write_bundle, write_log)
from rklu.eval.tofu_metrics import (forget_quality, model_utility, normalized_probability,  # noqa: F401
                                    rouge_l_recall, rouge_recalls, set_metrics, truth_ratio, truth_ratio_score,
                                    truth_ratios)

TOFU_DS_SIZE = 300  # TOFU's eval_everything.yaml ds_size: every published log holds at most 300 samples


class EvalSet(NamedTuple):
    """One evaluation set: its rows and how TOFU scores them."""

    name: str              # shown in progress bars and errors
    filename: str          # its log file (``rklu.eval.tofu_logs``)
    rows: Sequence[Mapping[str, Any]]
    base_answer_key: str   # the "paraphrased" answer: ``paraphrased_answer``, or ``answer`` itself
    normalize_gt: bool     # also ``normalized_gt_loss`` (real authors / world facts)


def evaluate_set(model, tokenizer, prompt_format, rows: Sequence[Mapping[str, Any]], *, base_answer_key: str,
                 normalize_gt: bool, batch_size: int = TOFU_BATCH_SIZE, max_new_tokens: int | None = None,
                 max_length: int = TOFU_MAX_LENGTH, progress: bool = False, name: str = "",
                 sort_by_length: bool = False) -> dict:
    """TOFU's per-sample log of one evaluation set (metric-major, string indices).

    ``generated_text[k]`` is ``[generation prompt, generation, reference answer]`` with the reference the
    decoded answer segment (as TOFU stores it); ROUGE is scored against that segment."""
    questions = [r["question"] for r in rows]
    answers = [r["answer"] for r in rows]
    bases = [r[base_answer_key] for r in rows]
    perturbed = [list(r["perturbed_answer"]) if not isinstance(r["perturbed_answer"], str) else [r["perturbed_answer"]]
                 for r in rows]
    if any(len(p) == 0 for p in perturbed):
        raise ValueError(f"{name}: a row has no perturbed answers")
    special = getattr(prompt_format, "add_special_tokens", True)
    prompts = [prompt_format.prompt(q) for q in questions]
    keys = [str(i) for i in range(len(rows))]

    fields = [generation_fields(tokenizer, prompt_format, q, a, max_length) for q, a in zip(questions, answers)]
    gen_prompts, references = [f[0] for f in fields], [f[1] for f in fields]
    gens = generate_greedy(model, tokenizer, gen_prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                           max_length=max_length, progress=progress, desc=f"{name} generate",
                           sort_by_length=sort_by_length, add_special_tokens=special)
    # one batched loss pass over the true, paraphrased and all perturbed answers
    flat_prompts = prompts + prompts + [prompts[i] for i, ps in enumerate(perturbed) for _ in ps]
    flat_answers = ([prompt_format.answer(a) for a in answers] + [prompt_format.answer(b) for b in bases]
                    + [prompt_format.answer(p) for ps in perturbed for p in ps])
    sums, counts = sequence_losses(model, tokenizer, flat_prompts, flat_answers, batch_size=batch_size,
                                   max_length=max_length, progress=progress, desc=f"{name} loss",
                                   add_special_tokens=special)
    n = len(rows)
    if any(c == 0 for c in counts):
        raise ValueError(f"{name}: an answer has no tokens left after the prompt (prompt longer than max_length={max_length}?)")
    gt_sum, gt_n = sums[:n], counts[:n]
    para_sum, para_n = sums[n:2 * n], counts[n:2 * n]
    pert_sum, pert_n, pos = [], [], 2 * n
    for ps in perturbed:
        pert_sum.append(sums[pos:pos + len(ps)])
        pert_n.append(counts[pos:pos + len(ps)])
        pos += len(ps)

    r1, rl = rouge_recalls(gens, references)
    avg_gt = [s / c for s, c in zip(gt_sum, gt_n)]
    avg_para = [s / c for s, c in zip(para_sum, para_n)]
    avg_pert = [[s / c for s, c in zip(ss, cs)] for ss, cs in zip(pert_sum, pert_n)]
    logs = {
        "avg_gt_loss": dict(zip(keys, avg_gt)),
        "gt_loss": dict(zip(keys, gt_sum)),
        "num_token_gt": dict(zip(keys, gt_n)),
        "generated_text": {k: [p, g, a] for k, p, g, a in zip(keys, gen_prompts, gens, references)},
        "rouge1_recall": dict(zip(keys, r1)),
        "rougeL_recall": dict(zip(keys, rl)),
        "average_perturb_loss": dict(zip(keys, avg_pert)),
        "avg_paraphrased_loss": dict(zip(keys, avg_para)),
        "truth_ratio": {k: math.exp(p - float(np.mean(q))) for k, p, q in zip(keys, avg_para, avg_pert)},
        "paraphrased_loss": dict(zip(keys, para_sum)),
        "perturb_loss": dict(zip(keys, pert_sum)),
        "num_token_paraphrased": dict(zip(keys, para_n)),
        "num_token_perturb": dict(zip(keys, pert_n)),
    }
    if normalize_gt:
        logs["normalized_gt_loss"] = {k: -math.log(normalized_probability(g, q)) for k, g, q in zip(keys, avg_gt, avg_pert)}
    return logs


def eval_sets(forget_split: str) -> list[tuple[str, str, str, bool]]:
    """(TOFU config, output file, paraphrased-answer key, normalize_gt) for the four sets, in TOFU's order."""
    if forget_split.endswith("_perturbed"):
        forget_split = forget_split[: -len("_perturbed")]
    if forget_split not in ("forget01", "forget05", "forget10"):
        raise ValueError(f"unknown forget split {forget_split!r}; expected forget01, forget05 or forget10")
    return [
        ("retain_perturbed", RETAIN_FILE, "paraphrased_answer", False),
        ("real_authors_perturbed", REAL_AUTHORS_FILE, "answer", True),
        ("world_facts_perturbed", WORLD_FACTS_FILE, "answer", True),
        (f"{forget_split}_perturbed", FORGET_FILE, "paraphrased_answer", False),
    ]


def evaluate_sets(model, tokenizer, prompt_format, sets: Sequence[EvalSet], out_dir, **evaluate_kwargs) -> dict:
    """``evaluate_set`` on each set, each log written as soon as it is done; ``{file name: log}``."""
    results = {}
    for s in sets:
        logs = evaluate_set(model, tokenizer, prompt_format, s.rows, base_answer_key=s.base_answer_key,
                            normalize_gt=s.normalize_gt, name=s.name, **evaluate_kwargs)
        write_log(out_dir, s.filename, logs)
        results[s.filename] = logs
    return results


def evaluate_tofu(model, tokenizer, prompt_format, forget_split: str, out_dir, *, batch_size: int = TOFU_BATCH_SIZE,
                  max_new_tokens: int | None = None, max_samples: int | None = None, source: str = "bundled",
                  ds_size: int | None = TOFU_DS_SIZE, max_length: int = TOFU_MAX_LENGTH,
                  progress: bool = True, sort_by_length: bool = False, privacy: bool = True) -> dict:
    """Evaluate ``model`` on the four TOFU sets and write TOFU's four log files (+ ``eval_log_aggregated.json``).

    Each set holds its first ``min(ds_size, max_samples)``
    rows: ``ds_size=300`` is TOFU's own cap (so logs compare with the published ones; ``None`` = all rows),
    ``max_samples`` a further limit for quick CPU runs. Generation is batched as TOFU batches it (index
    order, ``batch_size`` 30, ``max_length`` 200 including left padding) unless ``sort_by_length`` (faster;
    see :func:`generate_greedy`). ``prompt_format``: a ``PromptFormat``, or its name (``chat`` is built
    from ``tokenizer``). Returns ``{file name: log}`` as written.
    ``privacy``: also write ``eval_privacy.json`` (``rklu.eval.privacy``: exact memorization, extraction
    strength, Min-K%/Min-K%++ on the forget set vs TOFU's holdout set of the same size); it is not part of
    TOFU's four logs nor of ``eval_log_aggregated.json``.
    """
    from rklu.data.formatting import get_prompt_format
    from rklu.data.tofu import load_tofu

    if isinstance(prompt_format, str):
        prompt_format = get_prompt_format(prompt_format, tokenizer)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    limit = min(x for x in (ds_size, max_samples, 10 ** 12) if x is not None)
    if privacy:  # its token statistics read the head path: refuse a model it misreads before any log is written
        from rklu.models.head_check import check_head_path

        check_head_path(model, f"evaluated ({getattr(getattr(model, 'config', None), '_name_or_path', '') or 'model'})")
    out_dir = Path(out_dir)
    sets = []
    for config, filename, base_key, normalize in eval_sets(forget_split):
        dataset = load_tofu(config, source=source)
        rows = [dataset[i] for i in range(min(limit, len(dataset)))]
        if not rows:
            raise ValueError(f"TOFU set {config} is empty")
        sets.append(EvalSet(config, filename, rows, base_key, normalize))
    # the logs land in out_dir together once every set is done (a Ctrl-C leaves the earlier set whole);
    # the earlier privacy log and aggregate go with the earlier set
    with staged_logs(out_dir, replaced=(*EVAL_FILES, AGGREGATED_FILE, priv.PRIVACY_FILE, "aggregate.json")) as staging:
        results = evaluate_sets(model, tokenizer, prompt_format, sets, staging, batch_size=batch_size,
                                max_new_tokens=max_new_tokens, max_length=max_length, progress=progress,
                                sort_by_length=sort_by_length)
        write_bundle(staging, results)
        if privacy:
            forget_rows, holdout_rows, holdout_split = priv.privacy_rows(forget_split, source, limit)
            log = priv.evaluate_privacy(model, tokenizer, prompt_format, forget_rows, holdout_rows,
                                        forget_split=forget_split.replace("_perturbed", ""),
                                        holdout_split=holdout_split, batch_size=batch_size, max_length=max_length,
                                        progress=progress)
            priv.write_privacy(staging, log)
    return results
