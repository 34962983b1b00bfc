"""Start-up check that the head path reproduces a model's logits.

Every loss and eval statistic of rklu reads ``final_hidden_states`` and the head description
(:func:`rklu.models.heads.head_output`: lm_head weight, bias, logit scale, softcap), never ``.logits``.
A family whose forward does something else after the lm_head (a logit transform nobody listed, a
prediction-head transform, a sliced vocabulary) would be trained or scored on the wrong logits without
any error. One short forward per model, before any run folder, cache or training step, compares the two
and refuses the run with the difference and the config attribute that probably explains it.
"""
from __future__ import annotations

import torch

from .heads import final_hidden_states, head_output, head_transform, unwrap
from .logit_transforms import KNOWN_ATTRIBUTES, RULES

CHECK_TOKENS = 8
# max |head path - model logits| allowed, relative to max(1, max |model logits|). The model rounds its logits
# (and, for a softcap, each step of it) to its own dtype while the head path applies the transform in fp32;
# a missed scale or cap moves the logits by a large fraction of their size.
RELATIVE_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def _model_name(inner) -> str:
    return f"{type(inner).__name__} (model_type {getattr(inner.config, 'model_type', '?')!r})"


def _likely_attributes(inner) -> str:
    """The logit-transform config attributes this model sets, as a hint for the error message."""
    configs = [("config.", inner.config)]
    text = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    if text is not inner.config:
        configs.append(("config.text_config.", text))
    found = []
    for prefix, config in configs:
        for name in KNOWN_ATTRIBUTES:
            value = getattr(config, name, None)
            if value is not None and value != 1 and value != 1.0:
                found.append(f"{prefix}{name}={value!r}")
    if found:
        return "likely config attribute: " + ", ".join(found)
    return ("no known logit-scaling attribute is set: compare the family's forward() after its lm_head with "
            "rklu.models.logit_transforms")


def _special_ids(config) -> set[int]:
    """Token ids the config names (image/audio placeholders, BOS/EOS/pad): a text-only forward of a
    multimodal model must not contain a placeholder it would try to fill with image features."""
    ids: set[int] = set()

    def collect(d):
        for key, value in d.items():
            if isinstance(value, dict):
                collect(value)
            elif isinstance(key, str) and key.endswith(("token_id", "token_index", "token_ids")):
                for v in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(v, int):
                        ids.add(v)
    collect(config.to_dict())
    return ids


@torch.no_grad()
def check_head_path(model, name: str, tokens: int = CHECK_TOKENS) -> float:
    """Compare ``model(...).logits`` with the head path on ``tokens`` fixed token ids; return the max
    absolute difference. ValueError naming ``name``, the difference and the likely config attribute when it
    exceeds the dtype's tolerance (:data:`RELATIVE_TOLERANCE`), or when the head path cannot be built."""
    inner = unwrap(model)
    label = f"{name} model {_model_name(inner)}"
    try:
        transform = head_transform(inner)
    except ValueError as error:
        raise ValueError(f"{name} model: {error}") from None
    vocab = inner.get_input_embeddings().weight.shape[0]
    device = inner.get_input_embeddings().weight.device
    special = _special_ids(inner.config)
    allowed = torch.tensor([i for i in range(vocab) if i not in special] or list(range(vocab)))
    generator = torch.Generator().manual_seed(0)
    input_ids = allowed[torch.randint(0, len(allowed), (1, tokens), generator=generator)].to(device)
    attention_mask = torch.ones_like(input_ids)
    was_training = inner.training
    inner.eval()  # no dropout in either pass
    try:
        reference = inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        try:
            hidden = final_hidden_states(inner, input_ids, attention_mask)
        except ValueError as error:
            raise ValueError(f"{name} model: {error}") from None
        head = head_output(inner, hidden)
        ours = head.logits()
    finally:
        inner.train(was_training)
    if ours.shape != reference.shape:
        raise ValueError(f"{label}: the head path gives logits of shape {tuple(ours.shape)}, the model "
                         f"{tuple(reference.shape)}; its forward changes the vocabulary after the lm_head, which "
                         "rklu's kernels do not support")
    reference = reference.float()
    diff = float((ours.float() - reference).abs().max())
    dtype = head.weight.dtype
    tolerance = RELATIVE_TOLERANCE.get(dtype, 3e-2) * max(1.0, float(reference.abs().max()))
    if not diff <= tolerance:  # NaN fails too
        applied = transform.source or "none (hidden @ lm_head.T + bias)"
        known = "" if type(inner).__name__ in RULES else f"; {type(inner).__name__} has no rule in rklu"
        raise ValueError(
            f"{label}: the logits rklu computes from the final hidden states and the lm_head differ from the "
            f"model's own logits by up to {diff:.4g} (tolerance {tolerance:.3g} for {str(dtype).replace('torch.', '')}; "
            f"logit transform applied: {applied}{known}); {_likely_attributes(inner)}. Training or scoring "
            "this model would use the wrong logits")
    return diff


def check_models(models: dict) -> None:
    """:func:`check_head_path` for each ``{name: model}`` (None entries are skipped)."""
    for name, model in models.items():
        if model is not None:
            check_head_path(model, name)
