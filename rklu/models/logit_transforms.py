"""What a Hugging Face causal LM does to ``hidden @ lm_head.T + b`` before it returns ``.logits``.

The fused kernels compute ``softcap * tanh(scale * (h @ W.T + b) / softcap)`` (``softcap=None``: no cap)
from the final hidden states, so every family that rescales or caps its logits after the lm_head must say
so here, or every loss is computed on the wrong logits without any error. The rules below are read from
each family's ``*ForCausalLM.forward`` (``transformers/models/<family>/modeling_<family>.py``, 5.25):

* Gemma2/Gemma3/Gemma3n/Gemma4, VaultGemma, NanoChat, Beam:
  ``logits = tanh(logits / final_logit_softcapping) * final_logit_softcapping`` when the attribute is set;
* RecurrentGemma: ``tanh(logits / logits_soft_cap) * logits_soft_cap`` always;
* Cohere/Cohere2/Cohere2-MoE/CohereCompass: ``logits * logit_scale``;
* Granite and its MoE/SWA/hybrid variants: ``logits / logits_scaling``;
* HyperCLOVAX: ``logits * logits_scaling`` (the same attribute name as Granite, the opposite operation);
* FalconH1: ``lm_head(h) * lm_head_multiplier``;
* MuseGlimmer/MuseSpark: ``* output_multiplier`` then the Gemma softcap (the scale comes first).

Rules are keyed by class, not by ``model_type``: Gemma3ForConditionalGeneration shares Gemma3's text
config but does not cap its logits. A subclass (FSDP2's ``FSDPGemma2ForCausalLM``, a user's own) gets the
rule of the nearest listed class in its MRO. A class not listed gets the identity transform; the start-up check
(:mod:`rklu.models.head_check`) compares that against the model's own logits, so a family nobody listed
fails there with the attribute it probably forgot, not silently.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogitTransform:
    """``logits = softcap * tanh(scale * z / softcap)`` of the head's output ``z`` (softcap None: ``scale * z``)."""
    scale: float = 1.0
    softcap: float | None = None
    source: str = ""   # which config attributes these came from, for error messages

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """The transform in fp32 (as the kernels apply it)."""
        z = logits.float()
        if self.scale != 1.0:
            z = z * self.scale
        if self.softcap is not None:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z

    def kernel_kwargs(self, prefix: str = "") -> dict:
        """The ``{prefix}scale`` / ``{prefix}softcap`` arguments of the fused ops; empty for the identity (the
        ops' defaults), so a plain head's call is unchanged."""
        kwargs = {}
        if self.scale != 1.0:
            kwargs[prefix + "scale"] = self.scale
        if self.softcap is not None:
            kwargs[prefix + "softcap"] = self.softcap
        return kwargs


@dataclass(frozen=True)
class _Rule:
    scale: str | None = None          # config attribute of the scale
    divide: bool = False              # the model divides by the attribute (Granite's logits_scaling)
    softcap: str | None = None        # config attribute of the softcap
    always_capped: bool = False       # the forward caps unconditionally (None would crash it)
    text_config: bool = False         # the attributes live in config.get_text_config()


_GEMMA_CAP = _Rule(softcap="final_logit_softcapping")
_GEMMA_CAP_TEXT = _Rule(softcap="final_logit_softcapping", text_config=True)
_COHERE = _Rule(scale="logit_scale")
_GRANITE = _Rule(scale="logits_scaling", divide=True)

RULES: dict[str, _Rule] = {
    **dict.fromkeys(("Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3nForCausalLM", "Gemma4ForCausalLM",
                     "VaultGemmaForCausalLM", "NanoChatForCausalLM", "BeamForCausalLM"), _GEMMA_CAP),
    **dict.fromkeys(("Gemma3nForConditionalGeneration", "Gemma4ForConditionalGeneration",
                     "PaliGemmaForConditionalGeneration"), _GEMMA_CAP_TEXT),
    "Inkling2ForCausalLM": _Rule(softcap="final_logit_softcapping", always_capped=True),
    "MistralLarge4ForConditionalGeneration": _Rule(softcap="final_logit_softcapping", always_capped=True,
                                                   text_config=True),
    "RecurrentGemmaForCausalLM": _Rule(softcap="logits_soft_cap", always_capped=True),
    **dict.fromkeys(("CohereForCausalLM", "Cohere2ForCausalLM", "Cohere2MoeForCausalLM",
                     "CohereCompassForCausalLM"), _COHERE),
    "AyaVisionForConditionalGeneration": _Rule(scale="logit_scale", text_config=True),
    **dict.fromkeys(("GraniteForCausalLM", "GraniteMoeForCausalLM", "GraniteMoeSharedForCausalLM",
                     "GraniteMoeHybridForCausalLM", "GraniteSWAForCausalLM", "GraniteMoeSWAForCausalLM"), _GRANITE),
    **dict.fromkeys(("Granite4VisionForConditionalGeneration", "GraniteDoclingForConditionalGeneration"),
                    _Rule(scale="logits_scaling", divide=True, text_config=True)),
    "HyperCLOVAXForCausalLM": _Rule(scale="logits_scaling"),
    "HyperCLOVAXVisionV2ForConditionalGeneration": _Rule(scale="logits_scaling", text_config=True),
    "FalconH1ForCausalLM": _Rule(scale="lm_head_multiplier"),
    **dict.fromkeys(("MuseGlimmerForConditionalGeneration", "MuseSparkForConditionalGeneration"),
                    _Rule(scale="output_multiplier", softcap="final_logit_softcapping", always_capped=True,
                          text_config=True)),
}

# Config attributes that transform logits in some family: named in the start-up check's error when a model
# whose class has no rule fails it.
KNOWN_ATTRIBUTES = ("final_logit_softcapping", "logits_soft_cap", "logit_scale", "logits_scaling",
                    "lm_head_multiplier", "output_multiplier")


def _number(value, model_name: str, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{model_name}: config.{where} = {value!r} is not a number") from None
    if not torch.isfinite(torch.tensor(number)) or number == 0.0:
        raise ValueError(f"{model_name}: config.{where} = {value!r} must be finite and non-zero")
    return number


def logit_transform(model) -> LogitTransform:
    """The scale and softcap ``model``'s forward applies after its lm_head (see the module docstring).

    ``model``: a Hugging Face PreTrainedModel (already unwrapped from DDP/peft)."""
    _check_plain_head(model)
    listed = next((cls.__name__ for cls in type(model).__mro__ if cls.__name__ in RULES), None)
    if listed is None:
        return LogitTransform()
    name, rule = listed, RULES[listed]
    config = model.config.get_text_config() if rule.text_config else model.config
    prefix = "text_config." if rule.text_config else ""
    scale, sources = 1.0, []
    if rule.scale is not None:
        value = getattr(config, rule.scale, None)
        if value is None:
            raise ValueError(f"{name}: config.{prefix}{rule.scale} is missing; its forward multiplies the logits by it")
        value = _number(value, name, prefix + rule.scale)
        scale = 1.0 / value if rule.divide else value
        sources.append(f"config.{prefix}{rule.scale}={value:g} ({'divides' if rule.divide else 'multiplies'})")
    softcap = None
    if rule.softcap is not None:
        value = getattr(config, rule.softcap, None)
        if value is None and rule.always_capped:
            raise ValueError(f"{name}: config.{prefix}{rule.softcap} is missing; its forward always caps the logits")
        if value is not None:
            softcap = abs(_number(value, name, prefix + rule.softcap))
            sources.append(f"config.{prefix}{rule.softcap}={value:g} (softcap)")
    return LogitTransform(scale, softcap, f"{name}: " + ", ".join(sources) if sources else "")


def _check_plain_head(model) -> None:
    """A BERT-style head (``cls.predictions`` / ``lm_head`` = dense + activation + LayerNorm + decoder) applies
    layers between the final hidden states and the vocabulary projection; the kernels take the projection
    only, so such a model is refused by name instead of trained on the wrong logits."""
    head = model.get_output_embeddings()
    if head is None:
        return
    for path, module in model.named_modules():
        children = dict(module.named_children())
        if head not in children.values() or module is model:
            continue
        if hasattr(module, "config") and hasattr(module, "base_model_prefix"):
            continue  # a nested PreTrainedModel (e.g. a language model inside a multimodal one) owns the head
        others = [child for child, sub in children.items() if sub is not head and any(True for _ in sub.parameters())]
        if others:
            projection = next(child for child, sub in children.items() if sub is head)
            raise ValueError(
                f"{type(model).__name__} (model_type {getattr(model.config, 'model_type', '?')!r}) is not supported: "
                f"its output head {path} applies {', '.join(others)} before the vocabulary projection "
                f"{path}.{projection} (a prediction-head transform); the fused kernels take the projection of the "
                "final hidden states only")
