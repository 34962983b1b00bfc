"""Prompt formats per model family. The loss is taken on answer tokens only, so a format is split into
the prompt (question part, masked) and the answer that follows it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptFormat:
    name: str
    question_template: str  # contains {question}
    answer_template: str = "{answer}"

    def prompt(self, question: str) -> str:
        return self.question_template.format(question=question)

    def answer(self, answer: str) -> str:
        return self.answer_template.format(answer=answer)

    def full(self, question: str, answer: str) -> str:
        return self.prompt(question) + self.answer(answer)


PROMPT_FORMATS = {
    # TOFU's Llama-2-7b-chat format (question_start_tag "[INST] ", question_end_tag " [/INST]", answer_tag
    # ""): the answer follows "[/INST]" directly, as in TOFU's published evaluation logs.
    "llama2": PromptFormat("llama2", "[INST] {question} [/INST]", "{answer}"),
    # TOFU's Phi-1.5 format (question_end_tag "\n", answer_tag "Answer: ")
    "phi": PromptFormat("phi", "Question: {question}\nAnswer:", " {answer}"),
    # the tiny CPU models
    "plain": PromptFormat("plain", "Q: {question} A:", " {answer}"),
}


def get_prompt_format(name: str) -> PromptFormat:
    """A format by name (``llama2``, ``phi``, ``plain``) or guessed from a model name/path."""
    if name in PROMPT_FORMATS:
        return PROMPT_FORMATS[name]
    lowered = name.lower()
    if "phi" in lowered:
        return PROMPT_FORMATS["phi"]
    if "llama" in lowered:
        return PROMPT_FORMATS["llama2"]
    raise ValueError(f"unknown prompt format {name!r}; expected one of {sorted(PROMPT_FORMATS)} or a model name containing 'llama'/'phi'")
