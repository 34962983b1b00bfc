"""Final hidden states and the lm_head of a causal LM, without computing logits.

The fused KL kernel takes ``hidden @ lm_head.T`` itself in chunks, so no [tokens x vocab] tensor is built.
We run the model's base transformer (``getattr(model, model.base_model_prefix)``, e.g. ``model.model``
for Llama) and take ``get_output_embeddings()`` for the head, with the scale and softcap the family applies
after it (:mod:`rklu.models.logit_transforms`). Also: the teachers used by the methods — a separate frozen
model, or the student's own base with LoRA adapters disabled / switched.

Several processes: under DDP the student's pass goes through the wrapper's forward (its gradient
all-reduce is armed there); under FSDP2 the whole loss runs in :func:`managed_call`, a forward of the
sharded root, so ``output_head`` returns the gathered weight there.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .logit_transforms import LogitTransform, logit_transform

# Name of the forward method registered on an FSDP2 root (rklu.training.distributed.shard_fsdp2)
MANAGED_METHOD = "rklu_managed_forward"


def managed_call(model, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` inside a forward that FSDP2 manages when ``model`` is a sharded root: the
    root's parameters (embeddings, final norm, lm_head) are all-gathered before ``fn`` runs, so the fused
    kernels read the whole head weight, and the head's gradient is reduce-scattered in backward like any
    other. Unsharded models: a plain call."""
    method = getattr(model, "__dict__", {}).get(MANAGED_METHOD)
    return fn(*args, **kwargs) if method is None else method(fn, *args, **kwargs)


def unwrap(model):
    """The Hugging Face ``PreTrainedModel`` inside DDP/FSDP wrappers and peft's PeftModel/LoraModel
    (LoRA layers stay injected in it, so running it still applies the active adapter)."""
    while hasattr(model, "module") and isinstance(model, torch.nn.Module) and not hasattr(model, "base_model_prefix"):
        model = model.module  # DDP / accelerate wrappers
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        model = model.get_base_model()
    return model


def output_head(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [V, H], bias [V] or None) of the lm_head."""
    head = unwrap(model).get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(unwrap(model)).__name__} has no output embeddings (lm_head)")
    # a LoRA-wrapped lm_head keeps the real Linear in .base_layer
    head = getattr(head, "base_layer", head)
    return head.weight, getattr(head, "bias", None)


def head_transform(model) -> LogitTransform:
    """The scale/softcap ``model`` applies to its lm_head's output (memoized on the model: it depends on
    the class and config only)."""
    inner = unwrap(model)
    cached = inner.__dict__.get("_rklu_logit_transform")
    if cached is None:
        cached = logit_transform(inner)
        inner.__dict__["_rklu_logit_transform"] = cached
    return cached


def is_distributed_wrapper(model) -> bool:
    return isinstance(model, torch.nn.Module) and hasattr(model, "module") and not hasattr(model, "base_model_prefix")


def final_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T, H] hidden states after the final norm (what lm_head is applied to)."""
    if is_distributed_wrapper(model):
        # DDP must see its own forward() each step (it arms gradient all-reduce there), so go through the
        # wrapper: logits_to_keep=1 keeps the logits to one position per row; the last entry of
        # hidden_states is the post-norm state for HF decoder models.
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                    output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[-1]
    inner = unwrap(model)
    out = base_transformer(inner)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        raise ValueError(f"{type(inner).__name__}: its base transformer returned no last_hidden_state; "
                         "rklu needs the final hidden states the lm_head is applied to")
    return hidden


def base_transformer(inner) -> torch.nn.Module:
    """The module whose ``last_hidden_state`` the lm_head reads: ``getattr(model, base_model_prefix)``, or
    ``model.model`` where the prefix names no attribute (Llama4ForCausalLM's prefix is ``language_model``,
    its decoder ``.model``)."""
    prefix = getattr(inner, "base_model_prefix", "")
    for name in (prefix, "model"):
        base = getattr(inner, name, None) if name else None
        if isinstance(base, torch.nn.Module) and base is not inner:
            return base
    raise ValueError(f"{type(inner).__name__} is not supported: neither .{prefix or '<base_model_prefix>'} nor .model "
                     "is its base transformer, so its final hidden states cannot be computed without the logits")


@dataclass
class HeadOutput:
    """Final hidden states and the head that turns them into the model's logits:
    ``softcap * tanh(scale * (hidden @ weight.T + bias) / softcap)`` (softcap None: no cap)."""
    hidden: torch.Tensor            # [B, T, H]
    weight: torch.Tensor            # [V, H]
    bias: torch.Tensor | None
    scale: float = 1.0
    softcap: float | None = None

    @property
    def transform(self) -> LogitTransform:
        return LogitTransform(self.scale, self.softcap)

    def logits(self) -> torch.Tensor:
        """Materialized logits — only for NLL-type losses and tests, never for the KL losses. With a scale
        or softcap they are float32 (the transform is applied in float32, as in the kernels)."""
        logits = torch.nn.functional.linear(self.hidden, self.weight, self.bias)
        return logits if self.transform.is_identity else self.transform.apply(logits)

    def kernel_kwargs(self, prefix: str = "") -> dict:
        """The ``{prefix}scale`` / ``{prefix}softcap`` arguments of the fused ops (empty for a plain head)."""
        return self.transform.kernel_kwargs(prefix)


def head_output(model, hidden: torch.Tensor, detach: bool = False) -> HeadOutput:
    """``hidden`` with ``model``'s lm_head weight, bias, scale and softcap."""
    weight, bias = output_head(model)
    if detach:
        weight, bias = weight.detach(), None if bias is None else bias.detach()
    transform = head_transform(model)
    return HeadOutput(hidden, weight, bias, transform.scale, transform.softcap)


def student_forward(model, batch) -> HeadOutput:
    return head_output(model, final_hidden_states(model, batch["input_ids"], batch.get("attention_mask")))


class Teacher:
    """A frozen model whose final hidden states on a batch role ("forget", "retain", "idk") feed a loss."""

    def __call__(self, role: str, batch) -> HeadOutput:
        raise NotImplementedError


class ModelTeacher(Teacher):
    """A separate frozen model (the paper's setting: two extra model copies)."""

    def __init__(self, model):
        self.model = model
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, role, batch):
        # under FSDP2 the teacher's blocks are sharded and its lm_head replicated (shard_fsdp2(frozen=True)),
        # so the head read after its managed forward is whole
        hidden = managed_call(self.model, final_hidden_states, self.model, batch["input_ids"], batch.get("attention_mask"))
        return head_output(self.model, hidden)


@contextlib.contextmanager
def adapter_state(peft_model, adapter_name: str | None):
    """Run the shared base with adapters disabled (``None``) or with another adapter active, then restore
    the trainable adapter. peft's ``set_adapter`` flips requires_grad; the optimizer was built before, so
    only the student's adapter is ever updated, and restoring the student's adapter re-freezes the other."""
    if adapter_name is None:
        with peft_model.disable_adapter():
            yield
        return
    active = peft_model.active_adapter
    peft_model.set_adapter(adapter_name)
    try:
        yield
    finally:
        peft_model.set_adapter(active)


class AdapterTeacher(Teacher):
    """One copy of the weights: the original teacher is the student's base with adapters disabled, the
    augmented teacher a second (frozen) adapter on that base."""

    def __init__(self, peft_model, adapter_name: str | None):
        self.model, self.adapter_name = peft_model, adapter_name

    @torch.no_grad()
    def __call__(self, role, batch):
        was_training = self.model.training
        self.model.eval()  # no LoRA dropout in a teacher
        try:
            with adapter_state(self.model, self.adapter_name):
                hidden = final_hidden_states(self.model, batch["input_ids"], batch.get("attention_mask"))
        finally:
            self.model.train(was_training)
        # the lm_head is not LoRA-targeted by default: the same weight serves every adapter state
        return head_output(self.model, hidden, detach=True)
