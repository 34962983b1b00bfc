"""Scoring a causal LM on question/answer text as TOFU scores it (locuslab/tofu ``data_module.py::
convert_raw_data_to_model_format``, ``evaluate_util.py::get_batch_loss`` and ``run_generation``).

* ``encode_qa``: the text ``prompt + answer`` tokenized with special tokens, truncated to ``max_length``
  tokens (200, TOFU's ``generation.max_length``), one EOS label appended when there is room, the prompt's
  tokens masked.
* ``sequence_losses``: summed NLL and token count of each answer given its prompt.
* ``generate_greedy``: greedy continuations, batched with left padding as TOFU batches them.
* ``generation_fields``: the generation prompt and the reference answer of one row.
"""
from __future__ import annotations

from typing import Sequence

TOFU_MAX_LENGTH = 200  # TOFU's generation.max_length: token cap for loss inputs and prompt + generation
TOFU_BATCH_SIZE = 30  # TOFU's eval_everything.yaml batch_size: generation batches of 30, in index order


def model_device(model):
    """The device of the model's first parameter (CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        import torch

        return torch.device("cpu")


def ensure_pad_token(tokenizer):
    """Batched scoring pads: a tokenizer without a pad token pads with EOS (pad positions are masked)."""
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
    ensure_pad_token(tokenizer)
    encoded = [encode_qa(tokenizer, p, a, max_length, add_special_tokens) for p, a in zip(prompts, answers)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    losses = [0.0] * len(encoded)
    counts = [0] * len(encoded)
    device = model_device(model)
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


def stop_token_ids(model, tokenizer) -> int | list[int] | None:
    """The ids generation stops at: the model's generation config's, else the tokenizer's EOS."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    return eos if eos is not None and eos != [] else tokenizer.eos_token_id


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

    Generation stops at the model's ``generation_config.eos_token_id`` (a list of stop ids for Llama-3 or
    Qwen2.5-Instruct), as TOFU's ``run_generation`` stops (it passes no ``eos_token_id`` to ``generate``);
    the tokenizer's EOS only when the generation config has none.
    """
    import torch
    from tqdm.auto import tqdm

    ensure_pad_token(tokenizer)
    eos_token_id = stop_token_ids(model, tokenizer)
    order = list(range(len(prompts)))
    if sort_by_length:
        order.sort(key=lambda i: len(prompts[i]))
    outputs = [""] * len(prompts)
    device = model_device(model)
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
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_token_id)
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
