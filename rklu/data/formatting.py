"""Prompt formats per model family, modelled the way TOFU models them (locuslab/tofu
``config/model_config.yaml`` + ``data_module.convert_raw_data_to_model_format``):

* the text is ``question_start_tag + question + question_end_tag`` (the *prompt*, masked out of the loss;
  generation starts from it) followed by ``answer_tag + answer`` (every token of it is scored, the answer
  tag included);
* the prompt length is measured by tokenizing the prompt alone, with special tokens.

``chat`` builds the prompt with the tokenizer's chat template instead (instruction-tuned models such as
SmolLM2-Instruct or Llama-3-Instruct): everything up to the assistant's answer is the prompt; the answer
follows it, then EOS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PromptFormat:
    name: str
    question_start_tag: str = ""
    question_end_tag: str = ""
    answer_tag: str = ""
    # TOFU's run_generation rebuilds the generation prompt and the reference answer by decoding the scored
    # text and splitting it at this string (" [/INST]" for llama2, "Answer: " for every other TOFU family);
    # None = split at the prompt's token boundary instead.
    generation_split: str | None = None
    add_special_tokens: bool = True  # chat templates write their own BOS

    def prompt(self, question: str) -> str:
        """The masked part; generation starts from it."""
        return self.question_start_tag + question + self.question_end_tag

    def answer(self, answer: str) -> str:
        """The scored part (answer tag included, as TOFU scores it)."""
        return self.answer_tag + answer

    def full(self, question: str, answer: str) -> str:
        return self.prompt(question) + self.answer(answer)

    def split_decoded(self, decoded: str) -> tuple[str, str] | None:
        """(generation prompt, reference answer) from the decoded scored text, as TOFU's ``run_generation``
        derives them; None when this format has no split string or the text does not contain it."""
        if not self.generation_split or self.generation_split not in decoded:
            return None
        parts = decoded.split(self.generation_split)
        if self.answer_tag:  # phi & co: the split string is the answer tag; the prompt ends before it
            return parts[0], parts[1]
        return parts[0] + self.generation_split, parts[1]  # llama2: the prompt keeps " [/INST]"


@dataclass(frozen=True)
class ChatPromptFormat(PromptFormat):
    """The tokenizer's chat template: a user turn with the question, then the assistant's generation prompt."""

    tokenizer: Any = field(default=None, compare=False, repr=False)

    def prompt(self, question: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                  add_generation_prompt=True)


# TOFU's model_config.yaml, tag for tag
TOFU_TAGS = {
    "llama2-7b": {"question_start_tag": "[INST] ", "question_end_tag": " [/INST]", "answer_tag": ""},
    "phi": {"question_start_tag": "Question: ", "question_end_tag": "\n", "answer_tag": "Answer: "},
}

PROMPT_FORMATS = {
    # TOFU's Llama-2-7b-chat format: the answer follows "[/INST]" directly, as in TOFU's published logs
    "llama2": PromptFormat("llama2", **TOFU_TAGS["llama2-7b"], generation_split=" [/INST]"),
    # TOFU's Phi-1.5 format (also its StableLM and Pythia formats): "Question: {q}\n" is masked, the
    # "Answer: " tag is scored, and generation starts after the "\n"
    "phi": PromptFormat("phi", **TOFU_TAGS["phi"], generation_split="Answer: "),
    # the tiny CPU models (not a TOFU family)
    "plain": PromptFormat("plain", "Q: ", " A:", " "),
}
CHAT = "chat"


def get_prompt_format(name: str, tokenizer=None) -> PromptFormat:
    """A format by name (``llama2``, ``phi``, ``plain``, ``chat``) or guessed from a model name/path.

    ``chat`` needs the ``tokenizer`` (with a chat template)."""
    if name == CHAT:
        if tokenizer is None:
            raise ValueError("prompt format 'chat' needs the tokenizer (its chat template)")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt format 'chat': the tokenizer has no chat template "
                             "(use llama2, phi or plain, or set tokenizer.chat_template)")
        return ChatPromptFormat(CHAT, add_special_tokens=False, tokenizer=tokenizer)
    if name in PROMPT_FORMATS:
        return PROMPT_FORMATS[name]
    return guess_prompt_format(name)


# model_type -> format, for a model folder whose name says nothing (e.g. runs/original/model)
MODEL_TYPE_FORMATS = {"phi": "phi", "phi3": "phi", "phimoe": "phi", "llama": "llama2"}


def _from_name(name: str) -> PromptFormat | None:
    lowered = name.lower()
    if "phi" in lowered:
        return PROMPT_FORMATS["phi"]
    if "llama" in lowered:
        return PROMPT_FORMATS["llama2"]
    return None


def _last_component(path: str) -> str:
    return str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _local_config(model: str):
    from pathlib import Path

    if not Path(model).is_dir() or not (Path(model) / "config.json").is_file():
        return None  # a hub id or an adapter folder: no hub access just to guess a prompt format
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model, trust_remote_code=False)
    except (OSError, ValueError):
        return None


def guess_prompt_format(model: str, config=None) -> PromptFormat:
    """The prompt format of a model, guessed from the last component of its name or path, then from its
    config (the last component of ``_name_or_path``, then ``model_type``; the config is read from a local
    model folder when not given). Only the last path component is a name: the folders above it say nothing
    about the model ("/home/sophia/models/llama2-7b" is llama2)."""
    names = [_last_component(model)]
    config = config if config is not None else _local_config(model)
    if config is not None:
        names.append(_last_component(getattr(config, "_name_or_path", "") or ""))
    for candidate in names:
        fmt = _from_name(candidate)
        if fmt is not None:
            return fmt
    model_type = getattr(config, "model_type", None) if config is not None else None
    if model_type in MODEL_TYPE_FORMATS:
        return PROMPT_FORMATS[MODEL_TYPE_FORMATS[model_type]]
    raise ValueError(f"unknown prompt format {model!r}; expected one of {sorted([*PROMPT_FORMATS, CHAT])} "
                     "or a model whose name (last path component) contains 'llama'/'phi' or whose config's "
                     f"model_type is one of {sorted(MODEL_TYPE_FORMATS)}")
