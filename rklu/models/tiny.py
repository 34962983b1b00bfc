"""Tiny models for CPU runs and tests: a byte-level BPE tokenizer trained on the data with `tokenizers`,
and a small LlamaForCausalLM built from a LlamaConfig with our own seeded initialization.

Why our own init: the model transformers builds is initialized by its ``_init_weights`` from the global
torch RNG, in whatever module order and with whatever special cases that release has; any change there
changes every number of a run from the same seed. ``init_tiny_weights`` draws every weight from its own
generator, parameter by parameter in name order, so the same seed gives the same model on any
transformers release (the scheme is Llama's: N(0, 0.02) matrices, unit RMSNorm gains, a zero padding
embedding)."""
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
    with torch.random.fork_rng(devices=[]):  # transformers' own init draws from the global RNG: leave it as it was
        model = LlamaForCausalLM(config)
    init_tiny_weights(model, seed, std=config.initializer_range)
    return model


def init_tiny_weights(model, seed: int, std: float = 0.02) -> None:
    """Overwrite every parameter of a (Llama-shaped) model from a generator seeded with ``seed``.

    Matrices (linear and embedding weights) get N(0, std) values, drawn in float64 and rounded to the
    parameter's dtype (torch's float32 normal sampler has a vectorized path whose last bits depend on the
    CPU's instruction set; the float64 one does not), in sorted parameter-name order; norm weights get 1,
    biases 0, and the embedding's padding row 0 (as Llama's init). A parameter that fits none of these
    is an error, not silently left with the library's values."""
    embeddings = {f"{name}.weight": m.padding_idx for name, m in model.named_modules()
                  if isinstance(m, torch.nn.Embedding)}
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            elif param.dim() == 2:
                values = torch.randn(tuple(param.shape), generator=generator, dtype=torch.float64) * std
                param.copy_(values.to(param.dtype))
                if embeddings.get(name) is not None:
                    param[embeddings[name]].zero_()
            else:
                raise ValueError(f"init_tiny_weights: no rule for parameter {name!r} of shape {tuple(param.shape)}")


def qa_texts(rows) -> list[str]:
    """Tokenizer training texts from QA rows (question and answer separately)."""
    out = []
    for row in rows:
        out.append(row["question"])
        if row.get("answer"):
            out.append(row["answer"])
    return out
