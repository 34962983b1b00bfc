"""rklu: reverse-KL knowledge-distillation unlearning (RKLU/RKLD, Wang et al., NAACL 2025) for LLMs."""

__version__ = "0.1.0"
