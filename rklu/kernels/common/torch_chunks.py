"""What the torch backends of both ops share: their compute dtype and the size of a chunk of tokens.

They build one float32 [chunk, V] working set at a time instead of [N, V] logits; float64 inputs stay
float64 (the gradcheck path).
"""
from __future__ import annotations

import torch

# One float32 [chunk, V] buffer holds about this many elements (16 MiB); a handful are alive at once.
CHUNK_ELEMENTS = 1 << 22


def torch_chunk_tokens(vocab: int) -> int:
    """Tokens per chunk of the torch backends (and of ``unlearning_kl_from_logits``) at vocabulary ``vocab``."""
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


def compute_dtype(*tensors) -> torch.dtype:
    """float64 when any given tensor is float64, else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
