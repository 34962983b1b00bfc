"""The paper's privacy case study (Table 9): for chosen forget questions, show side by side for several
models (original, augmented, unlearned...) (a) the direct greedy answer and (b) fill-in-the-blank: the
golden answer cut before its key entity, and the model's top-k next tokens with probabilities there."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from rklu.eval.scoring import generate_greedy


def split_blank(answer: str, blank: str | None = None) -> tuple[str, str]:
    """(prefix before the blank, the blanked entity). Default entity: the answer's last word, without
    trailing punctuation (the paper picks cases whose key answer is at the end)."""
    answer = answer.rstrip()
    if blank:
        pos = answer.rfind(blank)
        if pos < 0:
            raise ValueError(f"blank {blank!r} does not occur in the answer {answer!r}")
        return answer[:pos].rstrip(), blank
    match = re.search(r"(\S+?)[\s.,;:!?\"')\]]*$", answer)
    if not match or match.start(1) == 0:
        raise ValueError(f"cannot pick a blank in the answer {answer!r}: give one explicitly")
    return answer[:match.start(1)].rstrip(), match.group(1)


def top_next_tokens(model, tokenizer, text: str, k: int = 5) -> list[dict]:
    """The ``k`` most probable next tokens after ``text`` with their probabilities."""
    import torch

    device = next(model.parameters()).device
    ids = tokenizer(text, add_special_tokens=True, return_tensors="pt")["input_ids"].to(device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].float()
    probs = torch.softmax(logits, dim=-1)
    values, indices = probs.topk(min(k, probs.numel()))
    return [{"token": tokenizer.decode([int(i)]), "prob": float(v)} for v, i in zip(values.tolist(), indices.tolist())]


def case_study(models: Mapping[str, tuple[Any, Any]], prompt_format, items: Sequence[Mapping[str, Any]], *,
               top_k: int = 5, max_new_tokens: int = 64, batch_size: int = 8) -> dict:
    """``models``: name -> (model, tokenizer); ``items``: dicts with question, answer and optional blank."""
    from rklu.data.formatting import get_prompt_format

    if isinstance(prompt_format, str):
        prompt_format = get_prompt_format(prompt_format)
    if not models:
        raise ValueError("case study needs at least one model")
    if not items:
        raise ValueError("case study needs at least one question")
    cases = []
    for item in items:
        prefix, blank = split_blank(item["answer"], item.get("blank"))
        cases.append({"question": item["question"], "answer": item["answer"], "blank": blank,
                      "fill_in_blank": prompt_format.answer(prefix).lstrip() + " ___", "models": {}})
    prompts = [prompt_format.prompt(item["question"]) for item in items]
    for name, (model, tokenizer) in models.items():
        answers = generate_greedy(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens)
        for case, prompt, direct in zip(cases, prompts, answers):
            prefix, _ = split_blank(case["answer"], case["blank"])
            top = top_next_tokens(model, tokenizer, prompt + prompt_format.answer(prefix), k=top_k)
            case["models"][name] = {"direct_answer": direct.strip(), "top_tokens": top}
    return {"prompt_format": prompt_format.name, "top_k": top_k, "cases": cases}


def case_study_markdown(result: Mapping[str, Any]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["# Case study", ""]
    for n, case in enumerate(result["cases"], 1):
        lines += [f"## Example {n}", "", f"**Question:** {cell(case['question'])}  ",
                  f"**Golden answer:** {cell(case['answer'])}  ",
                  f"**Fill-in-blank:** {cell(case['fill_in_blank'])} (blank: *{cell(case['blank'])}*)", "",
                  "| model | direct answer | top next tokens at the blank |", "|---|---|---|"]
        for name, out in case["models"].items():
            tops = ", ".join(f"{cell(t['token']).strip() or repr(t['token'])} ({t['prob']:.3f})" for t in out["top_tokens"])
            lines.append(f"| {cell(name)} | {cell(out['direct_answer'])} | {tops} |")
        lines.append("")
    return "\n".join(lines)


def load_items(path=None, *, forget_split: str | None = None, indices: Sequence[int] = (0,), source: str = "bundled",
               blanks: Sequence[str] | None = None) -> list[dict]:
    """Questions from a JSON/JSONL file (question, answer, optional blank) or from a TOFU forget split."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"case-study questions file not found: {path}")
        text = path.read_text(encoding="utf-8").strip()
        rows = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
        for row in rows:
            if not isinstance(row, dict) or "question" not in row or "answer" not in row:
                raise ValueError(f"{path}: every row needs 'question' and 'answer'")
        return [dict(row) for row in rows]
    from rklu.data.tofu import load_tofu

    dataset = load_tofu(forget_split or "forget10", source=source)
    items = []
    for n, i in enumerate(indices):
        if not 0 <= i < len(dataset):
            raise ValueError(f"index {i} out of range for {forget_split} ({len(dataset)} rows)")
        row = {"question": dataset[i]["question"], "answer": dataset[i]["answer"], "index": i}
        if blanks and n < len(blanks) and blanks[n]:
            row["blank"] = blanks[n]
        items.append(row)
    return items
