"""Question/answer files (JSON or JSONL) -> ``datasets.Dataset`` with ``question``/``answer`` columns.

Also resolves the data *specs* used in configs and on the command line:
``tofu:forget01`` (a bundled/hub TOFU config), ``tofu:full[3600:]`` (a row slice), or a file path
(``.json``/``.jsonl`` QA file; plain-text corpora are handled by :mod:`rklu.data.text`).
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import datasets

_SLICE = re.compile(r"^(?P<base>.*?)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


def _rows_from_json_text(text: str, path: Path) -> list:
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"QA file {path} is empty")
    if stripped[0] in "[{":
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as error:
            if stripped[0] == "[":
                raise ValueError(f"QA file {path} is not valid JSON: {error}") from None
            obj = None  # a '{' start may be JSON Lines; parse line by line below
        if isinstance(obj, list):
            return obj
        if isinstance(obj, dict):
            # {"data": [...]} style wrappers are common
            for key in ("data", "rows", "examples"):
                if isinstance(obj.get(key), list):
                    return obj[key]
            return [obj]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"QA file {path}, line {number}: not valid JSON ({error.msg})") from None
    return rows


def load_qa_file(path, question_key: str = "question", answer_key: str = "answer",
                 require_answers: bool = True) -> datasets.Dataset:
    """Read a JSON list / JSON Lines QA file. Every row needs a non-empty question and (unless
    ``require_answers=False``) a non-empty string answer; other fields are kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"QA file not found: {path}")
    rows = _rows_from_json_text(path.read_text(encoding="utf-8"), path)
    if not rows:
        raise ValueError(f"QA file {path} has no rows")
    clean = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"QA file {path}, row {index}: expected an object, got {type(row).__name__}")
        question = row.get(question_key)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"QA file {path}, row {index}: missing or empty {question_key!r} field")
        answer = row.get(answer_key)
        if require_answers and (not isinstance(answer, str) or not answer.strip()):
            raise ValueError(f"QA file {path}, row {index}: missing or empty {answer_key!r} field")
        out = dict(row)
        out["question"], out["answer"] = question, answer if isinstance(answer, str) else ""
        clean.append(out)
    return datasets.Dataset.from_list(clean)


def check_qa_dataset(ds: datasets.Dataset, name: str = "dataset", require_answers: bool = True) -> None:
    """Raise a clear ValueError for empty data or rows without a question/answer."""
    if len(ds) == 0:
        raise ValueError(f"{name} is empty")
    for column in ("question", "answer"):
        if column not in ds.column_names:
            raise ValueError(f"{name} has no {column!r} column (columns: {ds.column_names})")
    for index, row in enumerate(ds):
        if not isinstance(row["question"], str) or not row["question"].strip():
            raise ValueError(f"{name}, row {index}: missing or empty question")
        if require_answers and (not isinstance(row["answer"], str) or not row["answer"].strip()):
            raise ValueError(f"{name}, row {index}: missing or empty answer")


def split_slice(spec: str) -> tuple[str, slice | None]:
    """``"tofu:full[3600:]"`` -> (``"tofu:full"``, slice(3600, None))."""
    match = _SLICE.match(spec)
    if not match:
        return spec, None
    to_int = lambda s: int(s) if s not in ("", "-") else None  # noqa: E731
    return match["base"], slice(to_int(match["start"]), to_int(match["stop"]))


def apply_slice(ds: datasets.Dataset, rows: slice | None) -> datasets.Dataset:
    if rows is None:
        return ds
    return ds.select(range(len(ds))[rows])


def load_qa(spec: str, tofu_source: str = "bundled", name: str | None = None) -> datasets.Dataset:
    """A QA dataset from a spec (``tofu:<config>[a:b]`` or a JSON/JSONL path), checked for empty data and
    rows without answers."""
    from .tofu import load_tofu

    base, rows = split_slice(spec)
    if base.startswith("tofu:"):
        ds = load_tofu(base.split(":", 1)[1], source=tofu_source)
    else:
        ds = load_qa_file(base)
    ds = apply_slice(ds, rows)
    check_qa_dataset(ds, name or spec)
    return ds


def check_overlap(forget: datasets.Dataset, retain: datasets.Dataset, warn: bool = True) -> list[str]:
    """Questions present in both forget and retain data (a retain term would then fight the forget term).
    Returns them, and emits a UserWarning when there are any."""
    normalize = lambda q: " ".join(q.lower().split())  # noqa: E731
    retained = {normalize(q) for q in retain["question"]}
    shared = [q for q in forget["question"] if normalize(q) in retained]
    if shared and warn:
        warnings.warn(f"{len(shared)} of {len(forget)} forget questions also appear in the retain data, "
                      f"e.g. {shared[0]!r}", UserWarning, stacklevel=2)
    return shared
