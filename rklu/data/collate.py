"""Tokenization of QA rows (loss on answer tokens only), padding collators, and the paired forget/retain
dataset the unlearning methods train on."""
from __future__ import annotations

import random
import warnings
from typing import Mapping, Sequence

import datasets
import torch

from .formatting import PromptFormat

IGNORE_INDEX = -100


def tokenize_qa(question: str, answer: str, tokenizer, fmt: PromptFormat, max_length: int) -> dict:
    """``input_ids`` for prompt+answer(+EOS) and ``labels`` with -100 on the prompt tokens.

    The prompt length is measured by tokenizing the prompt alone (as TOFU's
    ``convert_raw_data_to_model_format`` does): the prompt is ``start tag + question + end tag``, the
    answer tag is scored with the answer. Returns also ``truncated`` (bool) so callers can warn once for a
    whole dataset.
    """
    special = getattr(fmt, "add_special_tokens", True)
    prompt_ids = tokenizer(fmt.prompt(question), add_special_tokens=special)["input_ids"]
    full_ids = tokenizer(fmt.full(question, answer), add_special_tokens=special)["input_ids"]
    if tokenizer.eos_token_id is not None and (not full_ids or full_ids[-1] != tokenizer.eos_token_id):
        full_ids = full_ids + [tokenizer.eos_token_id]  # the model learns to stop after the answer
    n_prompt = min(len(prompt_ids), len(full_ids))
    labels = [IGNORE_INDEX] * n_prompt + full_ids[n_prompt:]
    truncated = len(full_ids) > max_length
    return {"input_ids": full_ids[:max_length], "labels": labels[:max_length], "truncated": truncated}


def tokenize_qa_dataset(ds: datasets.Dataset, tokenizer, fmt: PromptFormat, max_length: int,
                        name: str = "dataset") -> datasets.Dataset:
    """Tokenize every row; warn (once) about rows cut to the model context and rows left with no answer
    token at all (their prompt alone fills the context, so they contribute nothing to the loss)."""
    rows = []
    n_truncated = n_empty = 0
    for index, row in enumerate(ds):
        item = tokenize_qa(row["question"], row["answer"], tokenizer, fmt, max_length)
        n_truncated += item.pop("truncated")
        if all(label == IGNORE_INDEX for label in item["labels"]):
            n_empty += 1
        item["example_id"] = index
        rows.append(item)
    if n_truncated:
        warnings.warn(f"{name}: {n_truncated} of {len(ds)} rows truncated to max_length={max_length} tokens",
                      UserWarning, stacklevel=2)
    if n_empty:
        warnings.warn(f"{name}: {n_empty} rows have no answer token left after truncation", UserWarning,
                      stacklevel=2)
    return datasets.Dataset.from_list(rows)


def idk_dataset(forget: datasets.Dataset, refusals: Sequence[str], seed: int = 0) -> datasets.Dataset:
    """The forget questions answered with a refusal (the IDK and DPO baselines' preferred answers);
    one refusal per question, drawn with a fixed seed so runs and resumes agree."""
    if not refusals:
        raise ValueError("no refusal answers given for the IDK/DPO data")
    rng = random.Random(seed)
    return datasets.Dataset.from_dict({
        "question": list(forget["question"]),
        "answer": [rng.choice(list(refusals)) for _ in range(len(forget))],
    })


def pad_batch(features: Sequence[Mapping], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` with the pad token, ``labels`` with -100, and build the attention mask.
    Right padding keeps every real token at the same position as when the row is run alone, which the
    teacher cache relies on."""
    if pad_token_id is None:
        raise ValueError("tokenizer has no pad token id")
    length = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(features), length), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[row, :n] = torch.as_tensor(f["input_ids"])
        labels[row, :n] = torch.as_tensor(f.get("labels", f["input_ids"]))
        attention[row, :n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    if all("example_id" in f for f in features):
        batch["example_id"] = torch.as_tensor([int(f["example_id"]) for f in features])
    return batch


class QACollator:
    """Collator for a flat tokenized dataset."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features):
        return pad_batch(features, self.pad_token_id)


class PairedCollator:
    """Collator for :class:`PairedDataset` items: one padded sub-batch per role (``forget``, ``retain``,
    ``idk``, or ``train`` for finetuning). Trainer moves nested dicts to the device as they are."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features):
        return {role: pad_batch([f[role] for f in features], self.pad_token_id) for role in features[0]}


class PairedDataset(torch.utils.data.Dataset):
    """One item per row of the main (forget, or training) data; each carries the matching rows of the
    other roles.

    ``retain``: each forget row is paired with a retain row drawn once, with a fixed seed, without
    replacement while the retain set lasts (so a batch of forget rows comes with as many distinct retain
    rows) — deterministic, so a resumed run sees the same pairs. ``idk``: row-aligned with the forget rows
    (same question, refusal answer).
    """

    def __init__(self, main: datasets.Dataset, retain: datasets.Dataset | None = None,
                 idk: datasets.Dataset | None = None, main_role: str = "forget", seed: int = 0):
        if len(main) == 0:
            raise ValueError(f"{main_role} set is empty")
        if retain is not None and len(retain) == 0:
            raise ValueError("retain set is empty")
        if idk is not None and len(idk) != len(main):
            raise ValueError(f"idk data has {len(idk)} rows, expected one per {main_role} row ({len(main)})")
        self.main, self.retain, self.idk, self.main_role = main, retain, idk, main_role
        self.retain_index = None
        if retain is not None:
            generator = torch.Generator().manual_seed(seed)
            order = []
            while len(order) < len(main):
                order.extend(torch.randperm(len(retain), generator=generator).tolist())
            self.retain_index = order[:len(main)]

    def __len__(self):
        return len(self.main)

    @staticmethod
    def _row(ds, index):
        row = ds[index]
        return {"input_ids": row["input_ids"], "labels": row["labels"],
                "example_id": row.get("example_id", index)}

    def __getitem__(self, index):
        item = {self.main_role: self._row(self.main, index)}
        if self.retain is not None:
            item["retain"] = self._row(self.retain, self.retain_index[index])
        if self.idk is not None:
            item["idk"] = self._row(self.idk, index)
        return item
