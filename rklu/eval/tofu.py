"""TOFU evaluation (Maini et al., 2024), log-compatible with locuslab/tofu.

Per-sample metrics are written exactly as TOFU's ``evaluate_util.py`` writes them, one JSON file per
evaluation set, *metric-major*: ``{"avg_gt_loss": {"0": 1.23, "1": ...}, "gt_loss": {...}, ...}``.

=========================================  ==================================  ==========================
set                                        file                                "paraphrased" answer key
=========================================  ==================================  ==========================
``forgetXX_perturbed``                     ``eval_log_forget.json``            ``paraphrased_answer``
``retain_perturbed``                       ``eval_log.json``                   ``paraphrased_answer``
``real_authors_perturbed``                 ``eval_real_author_wo_options.json``  ``answer``
``world_facts_perturbed``                  ``eval_real_world_wo_options.json``   ``answer``
=========================================  ==================================  ==========================

Keys per file (as TOFU): ``avg_gt_loss`` (NLL per answer token of the true answer), ``gt_loss`` (summed
NLL), ``num_token_gt``, ``generated_text`` ([prompt, greedy generation, decoded answer segment]), ``rouge1_recall``,
``rougeL_recall``, ``average_perturb_loss`` (list: NLL per token of each perturbed answer),
``avg_paraphrased_loss`` (NLL per token of the paraphrased answer), ``truth_ratio`` (TOFU's per-sample
value ``exp(avg_paraphrased_loss - mean(average_perturb_loss))``), ``paraphrased_loss``, ``perturb_loss``,
``num_token_paraphrased``, ``num_token_perturb``, plus ``normalized_gt_loss`` for real authors/world facts.

Losses follow TOFU's ``convert_raw_data_to_model_format``: the text ``prompt + answer`` is tokenized with
special tokens, truncated to ``max_length`` tokens (200, TOFU's ``generation.max_length``), one EOS label
is appended when there is room, and the prompt's tokens are masked.

Aggregation (``aggregate``) follows TOFU's ``aggregate_eval_stat.py``:

* truth ratio ``R = exp(mean(average_perturb_loss) - avg_paraphrased_loss)`` per sample;
* forget quality = ``scipy.stats.ks_2samp(R_model_forget, R_retain_model_forget).pvalue``;
* per set: probability (retain/forget: ``mean(exp(-avg_gt_loss))``; real authors/world facts:
  ``mean(p_true / (p_true + sum(p_perturbed)))`` with ``p = exp(-loss per token)``), ROUGE-L recall mean,
  truth-ratio score (forget: ``mean(min(R, 1/R))``; others: ``mean(max(0, 1 - 1/R))``);
* model utility = ``scipy.stats.hmean`` of the 9 retain/real-authors/world-facts values.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from rklu.io import atomic_write_json

FORGET_FILE = "eval_log_forget.json"
RETAIN_FILE = "eval_log.json"
REAL_AUTHORS_FILE = "eval_real_author_wo_options.json"
WORLD_FACTS_FILE = "eval_real_world_wo_options.json"
AGGREGATED_FILE = "eval_log_aggregated.json"  # TOFU's {file name: log} bundle of the four logs
EVAL_FILES = (RETAIN_FILE, REAL_AUTHORS_FILE, WORLD_FACTS_FILE, FORGET_FILE)

# file -> (short name used in our result keys, TOFU's display name in aggregate_eval_stat.py)
SET_NAMES = {
    RETAIN_FILE: ("retain", "Retain"),
    REAL_AUTHORS_FILE: ("real_authors", "Real Authors"),
    WORLD_FACTS_FILE: ("world_facts", "Real World"),
    FORGET_FILE: ("forget", "Forget"),
}
UTILITY_FILES = (RETAIN_FILE, REAL_AUTHORS_FILE, WORLD_FACTS_FILE)

TOFU_DS_SIZE = 300  # TOFU's eval_everything.yaml ds_size: every published log holds at most 300 samples
TOFU_MAX_LENGTH = 200  # TOFU's generation.max_length: token cap for loss inputs and prompt + generation
TOFU_BATCH_SIZE = 30  # TOFU's eval_everything.yaml batch_size: generation batches of 30, in index order

PER_SAMPLE_KEYS = (
    "avg_gt_loss", "gt_loss", "num_token_gt", "generated_text", "rouge1_recall", "rougeL_recall",
    "average_perturb_loss", "avg_paraphrased_loss", "truth_ratio", "paraphrased_loss", "perturb_loss",
    "num_token_paraphrased", "num_token_perturb",
)


# --------------------------------------------------------------------------------------------- metrics
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


# ------------------------------------------------------------------------------------- model scoring
def _device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        import torch

        return torch.device("cpu")


def _ensure_pad(tokenizer):
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token


def encode_qa(tokenizer, prompt: str, answer: str, max_length: int = TOFU_MAX_LENGTH,
              add_special_tokens: bool = True) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 on the prompt) of ``prompt + answer`` as TOFU's
    ``convert_raw_data_to_model_format`` builds them: truncated to ``max_length``, then (when shorter) one
    EOS label at the first pad position; the prompt's tokens (measured alone, with special tokens) masked."""
    ids = list(tokenizer(prompt + answer, add_special_tokens=add_special_tokens)["input_ids"])[:max_length]
    num_prompt = len(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
    eos = tokenizer.eos_token_id
    if len(ids) < max_length and eos is not None:
        ids = ids + [eos]
    labels = [-100 if i < num_prompt else t for i, t in enumerate(ids)]
    return ids, labels


def sequence_losses(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], *, batch_size: int = 16,
                    max_length: int = TOFU_MAX_LENGTH, progress: bool = False, desc: str = "loss",
                    add_special_tokens: bool = True) -> tuple[list[float], list[int]]:
    """Summed NLL of each answer given its prompt and its number of scored tokens (batched, right padding).

    Rows are batched by length: right padding leaves every real token's logits unchanged, so the values
    equal TOFU's (which pads every row to ``max_length``) up to float rounding."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    _ensure_pad(tokenizer)
    encoded = [encode_qa(tokenizer, p, a, max_length, add_special_tokens) for p, a in zip(prompts, answers)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    losses = [0.0] * len(encoded)
    counts = [0] * len(encoded)
    device = _device(model)
    was_training = model.training
    model.eval()
    starts = range(0, len(order), batch_size)
    try:
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
            idx = order[start:start + batch_size]
            width = max(len(encoded[i][0]) for i in idx)
            input_ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
            labels = torch.full((len(idx), width), -100, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids, lab = encoded[i]
                input_ids[row, :len(ids)] = torch.tensor(ids)
                labels[row, :len(lab)] = torch.tensor(lab)
                attention[row, :len(ids)] = 1
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            shifted = labels[:, 1:].to(logits.device)
            nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), shifted, ignore_index=-100, reduction="none")
            sums = nll.sum(-1).cpu().tolist()
            ns = (shifted != -100).sum(-1).cpu().tolist()
            for row, i in enumerate(idx):
                losses[i], counts[i] = float(sums[row]), int(ns[row])
    finally:
        model.train(was_training)
    return losses, counts


def generate_greedy(model, tokenizer, prompts: Sequence[str], *, batch_size: int = TOFU_BATCH_SIZE,
                    max_new_tokens: int | None = None, max_length: int = TOFU_MAX_LENGTH, progress: bool = False,
                    desc: str = "generate", sort_by_length: bool = False, add_special_tokens: bool = True) -> list[str]:
    """Greedy continuations of ``prompts``, batched with LEFT padding; decoded new tokens only.

    ``max_new_tokens=None`` generates up to ``max_length`` tokens in total *including the batch's left
    padding* (TOFU's ``model.generate(max_length=200)``), so a generation that does not stop at EOS gets a
    budget that depends on the longest prompt of its batch. Default batching is TOFU's (index order,
    batches of ``batch_size`` = 30), which reproduces TOFU's logs; ``sort_by_length=True`` batches prompts
    of similar length together (less padding: faster, and a larger budget for short prompts, so
    non-stopping generations can differ from TOFU's).
    """
    import torch
    from tqdm.auto import tqdm

    _ensure_pad(tokenizer)
    order = list(range(len(prompts)))
    if sort_by_length:
        order.sort(key=lambda i: len(prompts[i]))
    outputs = [""] * len(prompts)
    device = _device(model)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            idx = order[start:start + batch_size]
            batch = tokenizer([prompts[i] for i in idx], add_special_tokens=add_special_tokens, padding=True,
                              return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            width = batch["input_ids"].shape[1]
            budget = max_new_tokens if max_new_tokens is not None else max(1, max_length - width)
            with torch.no_grad():
                out = model.generate(**batch, do_sample=False, num_beams=1, max_new_tokens=budget,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            for row, i in enumerate(idx):
                outputs[i] = texts[row]
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return outputs


def generation_fields(tokenizer, prompt_format, question: str, answer: str, max_length: int = TOFU_MAX_LENGTH) -> tuple[str, str]:
    """(generation prompt, reference answer) of one row, as TOFU's ``run_generation`` derives them: the
    scored text ``prompt + answer`` (truncated to ``max_length`` tokens) is decoded without special tokens
    and split at the format's split string (" [/INST]" for llama2, "Answer: " for phi). Formats without
    one (plain, chat) split at the prompt's token boundary: the raw prompt, and the decoded answer tokens."""
    special = getattr(prompt_format, "add_special_tokens", True)
    prompt = prompt_format.prompt(question)
    ids, labels = encode_qa(tokenizer, prompt, prompt_format.answer(answer), max_length, special)
    split = prompt_format.split_decoded(tokenizer.decode(ids, skip_special_tokens=True)) \
        if hasattr(prompt_format, "split_decoded") else None
    if split is not None:
        return split
    n_prompt = sum(1 for label in labels if label == -100)
    return prompt, tokenizer.decode(ids[n_prompt:], skip_special_tokens=True)


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


def evaluate_tofu(model, tokenizer, prompt_format, forget_split: str, out_dir, *, batch_size: int = TOFU_BATCH_SIZE,
                  max_new_tokens: int | None = None, max_samples: int | None = None, source: str = "bundled",
                  ds_size: int | None = TOFU_DS_SIZE, max_length: int = TOFU_MAX_LENGTH,
                  progress: bool = True, sort_by_length: bool = False, privacy: bool = True) -> dict:
    """Evaluate ``model`` on the four TOFU sets and write TOFU's four log files (+ ``eval_log_aggregated.json``).

    ``prompt_format``: a ``PromptFormat`` or its name. Each set holds its first ``min(ds_size, max_samples)``
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
    out_dir = Path(out_dir)
    results = {}
    for config, filename, base_key, normalize in eval_sets(forget_split):
        dataset = load_tofu(config, source=source)
        rows = [dataset[i] for i in range(min(limit, len(dataset)))]
        if not rows:
            raise ValueError(f"TOFU set {config} is empty")
        logs = evaluate_set(model, tokenizer, prompt_format, rows, base_answer_key=base_key, normalize_gt=normalize,
                            batch_size=batch_size, max_new_tokens=max_new_tokens, max_length=max_length,
                            progress=progress, name=config, sort_by_length=sort_by_length)
        atomic_write_json(out_dir / filename, logs)
        results[filename] = logs
    atomic_write_json(out_dir / AGGREGATED_FILE, results)
    if privacy:
        from rklu.eval import privacy as priv

        forget_rows, holdout_rows, holdout_split = priv.privacy_rows(forget_split, source, limit)
        log = priv.evaluate_privacy(model, tokenizer, prompt_format, forget_rows, holdout_rows,
                                    forget_split=forget_split.replace("_perturbed", ""), holdout_split=holdout_split,
                                    batch_size=batch_size, max_length=max_length, progress=progress)
        priv.write_privacy(out_dir, log)
    elif (out_dir / "eval_privacy.json").is_file():
        (out_dir / "eval_privacy.json").unlink()  # a stale one would be aggregated with these logs
    return results


# ------------------------------------------------------------------------------------------ reading logs
def _normalize_log(log: Mapping[str, Any], where: str) -> dict:
    """Metric-major ``{metric: {index: value}}``; a sample-major ``{index: {metric: value}}`` log is transposed."""
    if not isinstance(log, Mapping) or not log:
        raise ValueError(f"{where}: not a TOFU evaluation log (expected a non-empty JSON object)")
    if all(str(k).lstrip("-").isdigit() for k in log) and all(isinstance(v, Mapping) for v in log.values()):
        out: dict = {}
        for index, metrics in log.items():
            for metric, value in metrics.items():
                out.setdefault(metric, {})[str(index)] = value
        return out
    return {metric: ({str(k): v for k, v in values.items()} if isinstance(values, Mapping) else values)
            for metric, values in log.items()}


def load_eval_logs(path, required: Sequence[str] = EVAL_FILES) -> dict:
    """``{file name: metric-major log}`` from a folder with TOFU's per-set files, a folder with only
    ``eval_log_aggregated.json``, or that aggregated file itself (TOFU's published logs or ours)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"evaluation logs not found: {path}")
    logs: dict = {}
    bundle = path if path.is_file() else path / AGGREGATED_FILE
    if path.is_dir():
        for name in required:
            if (path / name).is_file():
                logs[name] = _read_json(path / name)
    missing = [name for name in required if name not in logs]
    if missing and bundle.is_file():
        data = _read_json(bundle)
        if not isinstance(data, Mapping):
            raise ValueError(f"{bundle}: expected a JSON object of {{file name: log}}")
        if path.is_file() and set(data) & set(PER_SAMPLE_KEYS):  # a single per-set log given as a file
            data = {path.name: data}
        for name in missing:
            if name in data:
                logs[name] = data[name]
    missing = [name for name in required if name not in logs]
    if missing:
        raise FileNotFoundError(f"{path}: missing TOFU log(s) {', '.join(missing)} (run `rklu eval tofu` first)")
    return {name: _normalize_log(logs[name], f"{path}/{name}") for name in required}


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from None


def _metric(log: Mapping, metric: str, where: str) -> dict:
    if metric not in log:
        raise ValueError(f"{where}: log has no {metric!r} entry")
    values = log[metric]
    if not isinstance(values, Mapping) or not values:
        raise ValueError(f"{where}: {metric!r} is empty or not a per-sample mapping")
    return values


def _sorted_keys(values: Mapping) -> list[str]:
    return sorted(values, key=lambda k: (int(k) if str(k).lstrip("-").isdigit() else 0, str(k)))


def truth_ratios(log: Mapping, where: str = "log") -> np.ndarray:
    """Per-sample ``R = exp(mean(average_perturb_loss) - avg_paraphrased_loss)`` of one log, in index order."""
    para = _metric(log, "avg_paraphrased_loss", where)
    pert = _metric(log, "average_perturb_loss", where)
    keys = _sorted_keys(para)
    missing = [k for k in keys if k not in pert]
    if missing:
        raise ValueError(f"{where}: samples {missing[:5]} have avg_paraphrased_loss but no average_perturb_loss")
    return np.array([math.exp(float(np.mean(np.atleast_1d(pert[k]))) - float(para[k])) for k in keys], dtype=np.float64)


def set_metrics(log: Mapping, filename: str, where: str = "log") -> dict:
    """Probability, ROUGE-L recall mean and truth-ratio score of one set, as TOFU's ``get_model_utility``."""
    gt = _metric(log, "avg_gt_loss", where)
    keys = _sorted_keys(gt)
    if "eval_log" in filename:  # retain and forget: plain probability of the true answer
        prob = float(np.mean(np.exp(-np.array([float(gt[k]) for k in keys]))))
    else:
        pert = _metric(log, "average_perturb_loss", where)
        prob = float(np.mean([normalized_probability(float(gt[k]), np.atleast_1d(pert[k])) for k in keys]))
    rouge = float(np.mean([float(v) for v in _metric(log, "rougeL_recall", where).values()]))
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
    """Components per set and their harmonic mean (the 9 retain/real-authors/world-facts values)."""
    from scipy.stats import hmean

    out: dict = {}
    for filename in (*UTILITY_FILES, FORGET_FILE):
        if filename not in logs:
            continue
        short = SET_NAMES[filename][0]
        for metric, value in set_metrics(logs[filename], filename, filename).items():
            out[f"{short}_{metric}"] = value
    values = [out[f"{SET_NAMES[f][0]}_{m}"] for f in UTILITY_FILES for m in ("prob", "rouge_l", "truth_ratio")]
    out["model_utility"] = float(hmean(values))  # scipy: 0.0 when any value is 0, as in TOFU
    return out


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

    Keys: ``forget_quality``, ``ks_statistic``, ``model_utility``, ``{retain,real_authors,world_facts,forget}_
    {prob,rouge_l,truth_ratio}``, ``forget_truth_ratio_mean`` (mean raw R on the forget set), sample counts,
    and ``tofu`` (the same values under TOFU's CSV column names). With ``eval_privacy.json`` in ``eval_dir``
    also ``forget_exact_memorization``, ``forget_extraction_strength``, ``mia_min_k_auc``,
    ``mia_min_k_plus_plus_auc``, ``privleak``, ``privleak_min_k_plus_plus`` (``rklu.eval.privacy``).
    """
    logs = load_eval_logs(eval_dir)
    result: dict = {"eval_dir": str(eval_dir), "retain_eval_dir": None if retain_eval_dir is None else str(retain_eval_dir)}
    if retain_eval_dir is not None:
        retain_logs = load_eval_logs(retain_eval_dir, required=(FORGET_FILE,))
        result.update(forget_quality(logs, retain_logs))
    else:
        result.update({"forget_quality": None, "ks_statistic": None})
    result.update(model_utility(logs))
    result["forget_truth_ratio_mean"] = float(np.mean(truth_ratios(logs[FORGET_FILE], FORGET_FILE)))
    result["num_samples"] = {SET_NAMES[f][0]: len(_metric(logs[f], "avg_gt_loss", f)) for f in EVAL_FILES}
    result["tofu"] = tofu_names(result)
    from rklu.eval.privacy import privacy_aggregate  # our keys beside TOFU's, when eval_privacy.json exists

    result.update(privacy_aggregate(eval_dir, retain_eval_dir))
    return result


def write_aggregate(eval_dir, retain_eval_dir, out: str | os.PathLike | None = None) -> dict:
    """``aggregate`` and write it as JSON (default ``EVAL_DIR/aggregate.json``)."""
    result = aggregate(eval_dir, retain_eval_dir)
    target = Path(out) if out is not None else (Path(eval_dir) if Path(eval_dir).is_dir() else Path(eval_dir).parent) / "aggregate.json"
    atomic_write_json(target, result)
    return result
