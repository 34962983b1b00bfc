"""Fixtures for the eval tests: a tiny random Llama and a byte-level BPE tokenizer (no rklu.models), every
module on one torch thread. The model and tokenizer fixtures are factories (seeds, fresh tokenizers to edit)."""
from __future__ import annotations

from pathlib import Path

import pytest


_CACHE: dict = {}


def _tiny_tokenizer(texts=None, vocab_size: int = 300):
    """A fresh PreTrainedTokenizerFast (pad/bos/eos set); the BPE training on TOFU text is cached per process."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    key = (None if texts is None else tuple(texts), vocab_size)
    if key not in _CACHE:
        _CACHE[key] = _train(texts, vocab_size).to_str()
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_CACHE[key]), pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


def _train(texts, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if texts is None:
        from rklu.data.tofu import load_tofu

        texts = []
        for config in ("forget01_perturbed", "real_authors_perturbed", "world_facts_perturbed"):
            for row in load_tofu(config):
                texts.append(row["question"] + " " + row["answer"])
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def _tiny_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval()


def _save_tiny(directory: Path, seed: int = 0):
    tokenizer = _tiny_tokenizer()
    model = _tiny_model(tokenizer, seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


@pytest.fixture(autouse=True, scope="module")
def _eval_on_one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """``tiny_tokenizer(texts=None, vocab_size=300)``: a fresh tokenizer each call."""
    return _tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(tokenizer, seed=0)``: a random Llama in eval mode."""
    return _tiny_model


@pytest.fixture(scope="session")
def save_tiny():
    """``save_tiny(directory, seed=0)``: saves a tiny model and its tokenizer, returns both."""
    return _save_tiny


@pytest.fixture(scope="module")
def tiny():
    """(model, tokenizer) with seed 0, shared by a module's tests."""
    tok = _tiny_tokenizer()
    return _tiny_model(tok), tok
