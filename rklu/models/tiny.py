"""Tiny models for CPU runs and tests: a byte-level BPE tokenizer trained on the data with `tokenizers`,
and a small LlamaForCausalLM built from a LlamaConfig (random init)."""
from __future__ import annotations

from typing import Iterable

import torch

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2):
    """A byte-level BPE tokenizer (GPT-2 style, so any text round-trips) with pad/bos/eos/unk; the BOS
    token is prepended by the post-processor like Llama's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("no texts to train the tokenizer on")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", padding_side="right")
    return fast


def build_tiny_llama(tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                     intermediate_size: int | None = None, max_position_embeddings: int = 512,
                     seed: int = 0, tie_word_embeddings: bool = False):
    """A randomly initialised LlamaForCausalLM sized to ``tokenizer``. Untied embeddings by default, so
    the lm_head is a separate weight like Llama-2-7B's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size or 3 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=tie_word_embeddings, attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model


def qa_texts(rows) -> list[str]:
    """Tokenizer training texts from QA rows (question and answer separately)."""
    out = []
    for row in rows:
        out.append(row["question"])
        if row.get("answer"):
            out.append(row["answer"])
    return out
