"""Tiny random models of the Hugging Face causal-LM families rklu is checked on (transformers 5.25
config classes; 1-2 layers, hidden size 16, vocab 96), each with the logit transform its forward applies.

The lm_head is scaled x100 (:func:`build`) so the logits reach the size of a trained model's (tens), where a
softcap or a logit scale changes the softmax a lot: an ignored transform then moves every loss far beyond
the tolerances of the tests.
"""
from __future__ import annotations

import torch

VOCAB, HIDDEN = 96, 16
HEAD_GAIN = 100.0
_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
               max_position_embeddings=64, **_IDS)
_LLAMA_LIKE = dict(_COMMON, intermediate_size=32, num_key_value_heads=1)

# name -> (config class, model class, config kwargs, expected (scale, softcap))
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _LLAMA_LIKE, (1.0, None)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(_LLAMA_LIKE, tie_word_embeddings=True), (1.0, None)),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(_COMMON, intermediate_size=32), (1.0, None)),  # lm_head bias
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(_COMMON, intermediate_size=32), (1.0, None)),
    # word_embed_proj_dim < hidden_size: the decoder's project_out runs before the head
    "opt": ("OPTConfig", "OPTForCausalLM", dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1,
                                                num_attention_heads=2, ffn_dim=32, word_embed_proj_dim=8,
                                                max_position_embeddings=64, **_IDS), (1.0, None)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=2,
                                                   n_positions=64, **_IDS), (1.0, None)),
    "mistral": ("MistralConfig", "MistralForCausalLM", _LLAMA_LIKE, (1.0, None)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(_LLAMA_LIKE, head_dim=8), (1.0, None)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(_LLAMA_LIKE, head_dim=8, final_logit_softcapping=5.0),
               (1.0, 5.0)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(_LLAMA_LIKE, head_dim=8, final_logit_softcapping=5.0),
               (1.0, 5.0)),
    "gemma3_nocap": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(_LLAMA_LIKE, head_dim=8), (1.0, None)),
    "vaultgemma": ("VaultGemmaConfig", "VaultGemmaForCausalLM",
                   dict(_LLAMA_LIKE, head_dim=8, final_logit_softcapping=5.0), (1.0, 5.0)),
    "cohere": ("CohereConfig", "CohereForCausalLM", dict(_LLAMA_LIKE, logit_scale=0.0625), (0.0625, None)),
    "cohere2": ("Cohere2Config", "Cohere2ForCausalLM", dict(_LLAMA_LIKE, logit_scale=0.0625), (0.0625, None)),
    "granite": ("GraniteConfig", "GraniteForCausalLM", dict(_LLAMA_LIKE, logits_scaling=8.0), (0.125, None)),
    "falcon_h1": ("FalconH1Config", "FalconH1ForCausalLM",
                  dict(_LLAMA_LIKE, lm_head_multiplier=0.125, mamba_d_ssm=16, mamba_n_heads=2, mamba_d_head=8,
                       mamba_d_state=8, mamba_chunk_size=8), (0.125, None)),
    "hyperclovax": ("HyperCLOVAXConfig", "HyperCLOVAXForCausalLM", dict(_LLAMA_LIKE, logits_scaling=0.125),
                    (0.125, None)),
    # two layers: a recurrent-only stack has no attention layer for its mask code
    "recurrent_gemma": ("RecurrentGemmaConfig", "RecurrentGemmaForCausalLM",
                        dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=32, lru_width=HIDDEN, attention_window_size=16,
                             logits_soft_cap=5.0, block_types=["recurrent", "attention"], **_IDS), (1.0, 5.0)),
    "nanochat": ("NanoChatConfig", "NanoChatForCausalLM", dict(_LLAMA_LIKE, final_logit_softcapping=5.0),
                 (1.0, 5.0)),
}


def build(family: str, seed: int = 0):
    """A tiny fp32 model of ``family`` in eval mode (no dropout), its lm_head x :data:`HEAD_GAIN`."""
    import transformers

    config_name, model_name, kwargs, _ = FAMILIES[family]
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).float().eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(HEAD_GAIN)
    return model


def batch(seed: int = 0, rows: int = 2, tokens: int = 7) -> dict:
    """Right-padded ids with a prompt (2 masked labels) and padding (masked) in the second row."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (rows, tokens), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -2:] = 0
    input_ids[1, -2:] = 0
    labels = input_ids.clone()
    labels[:, :2] = -100
    labels[attention_mask == 0] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
