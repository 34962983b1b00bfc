"""Models: hub/local loading (bf16, flash-attention-2, LoRA), tiny Llama models for CPU, hidden-state
heads for the fused KL, and the teacher cache."""
