"""Copyright-style evaluation (the paper's Harry Potter setting, Tables 6-7): give the model the first
``prompt_tokens`` (200) tokens of each passage of a user-supplied text, generate greedily, and score the
continuation against the true one with BLEU (sacrebleu) and ROUGE-L (rouge-score); plus perplexity over
WikiText segments (via ``datasets`` when reachable) or over any local text file. No text is shipped."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from rklu.eval.scoring import generate_greedy


def split_passages(text: str, tokenizer, *, prompt_tokens: int = 200, continuation_tokens: int = 200,
                   max_passages: int | None = None) -> list[tuple[str, str]]:
    """Consecutive non-overlapping windows of ``prompt_tokens + continuation_tokens`` tokens, each split into
    (prompt text, true continuation text)."""
    if prompt_tokens < 1 or continuation_tokens < 1:
        raise ValueError("prompt_tokens and continuation_tokens must be >= 1")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    window = prompt_tokens + continuation_tokens
    passages = []
    for start in range(0, len(ids) - window + 1, window):
        chunk = ids[start:start + window]
        passages.append((tokenizer.decode(chunk[:prompt_tokens]), tokenizer.decode(chunk[prompt_tokens:])))
        if max_passages is not None and len(passages) >= max_passages:
            break
    if not passages:
        raise ValueError(f"text too short: {len(ids)} tokens, need at least {window} for one passage")
    return passages


def continuation_scores(generations: Sequence[str], references: Sequence[str]) -> dict:
    """Corpus BLEU (sacrebleu, 0-100) and mean ROUGE-L F1 / recall (stemmed) of generations vs references."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(generations) != len(references) or not generations:
        raise ValueError("need as many generations as references, at least one")
    bleu = sacrebleu.corpus_bleu(list(generations), [list(references)])
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, gen)["rougeL"] for gen, ref in zip(generations, references)]
    return {"bleu": float(bleu.score), "rouge_l_f1": sum(s.fmeasure for s in scores) / len(scores),
            "rouge_l_recall": sum(s.recall for s in scores) / len(scores),
            "per_passage_bleu": [float(sacrebleu.sentence_bleu(g, [r]).score) for g, r in zip(generations, references)]}


def copyright_eval(model, tokenizer, text: str, *, prompt_tokens: int = 200, max_new_tokens: int = 200,
                   max_passages: int | None = None, batch_size: int = 8, progress: bool = True) -> dict:
    passages = split_passages(text, tokenizer, prompt_tokens=prompt_tokens, continuation_tokens=max_new_tokens,
                              max_passages=max_passages)
    prompts = [p for p, _ in passages]
    references = [c for _, c in passages]
    generations = generate_greedy(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                  progress=progress, desc="continuations")
    scores = continuation_scores(generations, references)
    return {"num_passages": len(passages), "prompt_tokens": prompt_tokens, "max_new_tokens": max_new_tokens,
            "bleu": scores["bleu"], "rouge_l_f1": scores["rouge_l_f1"], "rouge_l_recall": scores["rouge_l_recall"],
            "samples": [{"prompt": p, "reference": r, "generation": g, "bleu": b}
                        for p, r, g, b in zip(prompts, references, generations, scores["per_passage_bleu"])]}


def perplexity(model, tokenizer, text: str, *, segment_tokens: int = 512, num_segments: int = 200,
               batch_size: int = 4, progress: bool = False) -> dict:
    """exp(mean NLL per predicted token) over the first ``num_segments`` consecutive ``segment_tokens`` windows."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise ValueError("perplexity text has fewer than 2 tokens")
    segments = [ids[s:s + segment_tokens] for s in range(0, len(ids), segment_tokens)][:num_segments]
    segments = [s for s in segments if len(s) >= 2]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model_was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(segments), batch_size), desc="perplexity", disable=not progress, leave=False):
            batch = segments[start:start + batch_size]
            width = max(len(s) for s in batch)
            input_ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, seg in enumerate(batch):
                input_ids[row, :len(seg)] = torch.tensor(seg)
                mask[row, :len(seg)] = 1
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
            labels = input_ids[:, 1:].clone()
            labels[mask[:, 1:] == 0] = -100
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels.to(logits.device), ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((labels != -100).sum())
    finally:
        model.train(model_was_training)
    return {"perplexity": math.exp(total / count), "num_segments": len(segments), "num_tokens": count,
            "segment_tokens": segment_tokens}


def load_wikitext(name: str = "wikitext-2-raw-v1", split: str = "test") -> str:
    """WikiText via ``datasets`` (needs the hub or a local cache); raises ``FileNotFoundError`` with a hint."""
    try:
        import datasets

        data = datasets.load_dataset("wikitext", name, split=split)
    except Exception as error:  # offline, unknown config...
        raise FileNotFoundError(f"WikiText ({name}) is unavailable ({type(error).__name__}: {str(error)[:200]}); "
                                "pass a local text file with --ppl-file instead") from None
    return "".join(data["text"])


def read_text(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"text file is empty: {path}")
    return text
