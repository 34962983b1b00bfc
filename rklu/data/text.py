"""Plain-text corpora -> fixed-length token windows (copyright-style unlearning, e.g. the paper's Harry
Potter setting). Every token of a window is a target: there is no prompt to mask."""
from __future__ import annotations

from pathlib import Path

import datasets


def read_text_corpus(path) -> str:
    """A UTF-8 text file, or every ``*.txt`` file of a folder (sorted, joined by blank lines)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"no .txt files in {path}")
        text = "\n\n".join(f.read_text(encoding="utf-8") for f in files)
    elif path.is_file():
        text = path.read_text(encoding="utf-8")
    else:
        raise FileNotFoundError(f"text corpus not found: {path}")
    if not text.strip():
        raise ValueError(f"text corpus {path} is empty")
    return text


def text_windows(text: str, tokenizer, window: int, stride: int | None = None,
                 min_tokens: int = 2, add_bos: bool = True) -> datasets.Dataset:
    """Tokenize ``text`` once and cut it into windows of ``window`` tokens (a BOS token, when the tokenizer
    has one, counts toward the window). ``stride`` < window gives overlapping windows; the last partial
    window is kept when it has at least ``min_tokens`` tokens. Columns: input_ids, labels (= input_ids)."""
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    body = window - len(bos)
    stride = stride or body
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = []
    for start in range(0, max(len(ids), 1), stride):
        chunk = ids[start:start + body]
        if len(chunk) < min_tokens:
            break
        full = bos + chunk
        rows.append({"input_ids": full, "labels": list(full), "example_id": len(rows)})
        if start + body >= len(ids):
            break
    if not rows:
        raise ValueError(f"text has {len(ids)} tokens: too short for one window")
    return datasets.Dataset.from_list(rows)


def load_text_windows(path, tokenizer, window: int, stride: int | None = None) -> datasets.Dataset:
    return text_windows(read_text_corpus(path), tokenizer, window, stride)
