"""The paper's published TOFU numbers (``paper_results.json``, package data) for ``rklu report --paper``:
forget quality, model utility and forget ROUGE-L / probability per method and forget split, typed in from
Wang et al., NAACL 2025 (Appendix D Table 8; Table 3 for FKLU, which has no published model utility).

Only LLaMA2-chat-7B has numbers: the paper shows Phi-1.5 as a plot only (Fig. 4), so ``phi-1.5`` is a
known model with no entries, reported as such rather than drawn.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

PAPER_FILE = "paper_results.json"
MODEL_NAMES = {"llama2-7b": "LLaMA2-chat-7B", "phi-1.5": "Phi-1.5"}
SPLITS = ("forget01", "forget05", "forget10")
_REQUIRED = ("model", "split", "method", "paper_label", "table", "forget_quality", "model_utility")


def load_paper_data(path=None) -> dict:
    """The whole file, checked: a citation and well-formed result records."""
    path = Path(path) if path is not None else Path(str(resources.files("rklu.eval") / PAPER_FILE))
    data = json.loads(path.read_text(encoding="utf-8"))
    if not data.get("citation") or not isinstance(data.get("results"), list):
        raise ValueError(f"{path}: expected a citation and a list of results")
    seen = set()
    for n, row in enumerate(data["results"]):
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise ValueError(f"{path}: result {n} lacks {missing}")
        if row["split"] not in SPLITS or row["model"] not in data.get("models", {}):
            raise ValueError(f"{path}: result {n} has an unknown split or model ({row['split']}, {row['model']})")
        for key in ("forget_quality", "model_utility"):
            value = row[key]
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ValueError(f"{path}: result {n} {key}={value!r} is not a probability")
        key = (row["model"], row["split"], row["method"])
        if key in seen:
            raise ValueError(f"{path}: {key} appears twice")
        seen.add(key)
    return data


def paper_results(model: str, split: str, path=None) -> dict:
    """``{"model", "split", "label", "citation", "rows"}`` for one model and forget split."""
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown paper model {model!r}; expected one of: {', '.join(MODEL_NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown forget split {split!r} for the paper overlay; expected one of: {', '.join(SPLITS)}")
    data = load_paper_data(path)
    rows = [r for r in data["results"] if r["model"] == model and r["split"] == split]
    if not rows:
        raise ValueError(f"the paper publishes no {MODEL_NAMES[model]} numbers for {split} "
                         f"({'; '.join(data.get('notes', [])[:1])})")
    tables = sorted({str(r["table"]) for r in rows}, key=int)
    label = f"Wang et al. (NAACL 2025), {MODEL_NAMES[model]}, {split}, Table {'/'.join(tables)}"
    return {"model": model, "split": split, "label": label, "citation": data["citation"], "rows": rows}
