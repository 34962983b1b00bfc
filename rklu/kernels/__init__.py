"""Fused unlearning-KL and label log-prob kernels (installed as ``rklu.kernels``): teacher construction + RKL/FKL loss and
gradient from hidden states and lm_head weights, without materializing [tokens x vocab] logits."""
from .kl.api import FusedLinearUnlearningKL, fused_linear_unlearning_kl, resolve_backend
from .kl.from_logits import unlearning_kl_from_logits
from .kl.reference import teacher_logits, unlearning_kl_reference
from .logprob.api import fused_linear_token_logprob
from .logprob.reference import token_logprob_reference

__all__ = [
    "fused_linear_unlearning_kl", "FusedLinearUnlearningKL", "unlearning_kl_reference",
    "unlearning_kl_from_logits", "teacher_logits", "resolve_backend",
    "fused_linear_token_logprob", "token_logprob_reference",
]
