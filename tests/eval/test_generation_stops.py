"""Generation stops where TOFU's stops: TOFU's ``run_generation`` calls ``model.generate`` without
``eos_token_id`` (locuslab/tofu ``evaluate_util.py``), so the model's ``generation_config.eos_token_id``
decides — a list of stop ids for Llama-3 or Qwen2.5-Instruct, not only the tokenizer's EOS."""
import pytest
import torch

from rklu.data.qa import load_qa
from rklu.eval.scoring import generate_greedy, stop_token_ids
from rklu.models.tiny import build_tiny_llama, qa_texts, train_bpe_tokenizer

PROMPT = "Q: Who wrote the book? A:"


@pytest.fixture(scope="module")
def tiny():
    tokenizer = train_bpe_tokenizer(qa_texts(load_qa("tofu:full[3950:]")), vocab_size=300)
    return build_tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0).eval(), tokenizer


def _tofu_generate(model, tokenizer, new_tokens):
    """TOFU's call: no eos_token_id, pad = EOS."""
    batch = tokenizer([PROMPT], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=new_tokens,
                             do_sample=False, use_cache=True, pad_token_id=tokenizer.eos_token_id)
    return out[0, batch["input_ids"].shape[1]:].tolist()


def test_generation_config_stop_ids_are_used(tiny):
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id
    model.generation_config.eos_token_id = eos
    free = _tofu_generate(model, tokenizer, 10)
    assert eos not in free  # the tiny model does not stop on its own within 10 tokens
    # a second stop id, first generated at position k >= 1 (so the stop is visible)
    k, stop = next((i, t) for i, t in enumerate(free) if i >= 1 and t not in free[:i])
    model.generation_config.eos_token_id = [eos, stop]
    try:
        assert stop_token_ids(model, tokenizer) == [eos, stop]
        ours = generate_greedy(model, tokenizer, [PROMPT], max_new_tokens=10)[0]
        tofu = _tofu_generate(model, tokenizer, 10)
        assert tofu[:k + 1] == free[:k + 1] and tofu[k + 1:] == [eos] * (len(tofu) - k - 1)  # stopped, then padding
        assert ours == tokenizer.decode(free[:k + 1], skip_special_tokens=True)
        assert ours != tokenizer.decode(free, skip_special_tokens=True)
    finally:
        model.generation_config.eos_token_id = eos


def test_tokenizer_eos_when_the_generation_config_has_none(tiny):
    model, tokenizer = tiny
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        assert stop_token_ids(model, tokenizer) == tokenizer.eos_token_id
    finally:
        model.generation_config.eos_token_id = saved
