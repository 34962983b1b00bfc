"""The output of one decoder layer (the residual stream after block k), without running the blocks above
it or the lm_head: activation-level unlearning (RMU) reads a middle layer and needs nothing past it."""
from __future__ import annotations

import torch

from .heads import base_transformer, is_distributed_wrapper, unwrap


class _StopAfterLayer(Exception):
    """Raised by the hook once the layer's output is captured: the rest of the forward is skipped."""


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of transformer blocks of a Hugging Face causal LM (``.layers`` of Llama-style bases,
    ``.h`` of GPT-2-style ones); ValueError for a model without one."""
    base = base_transformer(unwrap(model))
    for name in ("layers", "h", "blocks"):
        layers = getattr(base, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ValueError(f"{type(unwrap(model)).__name__}: no list of decoder layers found (.layers, .h or .blocks of "
                     f"its base transformer), so a layer's activations cannot be read")


def layer_output(model, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T, H] output of decoder layer ``layer`` (0-based; what a forward hook on ``model.layers[layer]``
    sees, as open-unlearning's RMU reads it). Gradients flow when grad mode is on."""
    if is_distributed_wrapper(model):
        # the early stop would leave the blocks above the layer without gradients, which DDP's reducer refuses
        raise ValueError("a layer's activations are read from an unwrapped model; DDP/FSDP-wrapped students "
                         "are not supported by activation-level methods (rmu)")
    layers = decoder_layers(model)
    if isinstance(layer, bool) or int(layer) != layer or not 0 <= layer < len(layers):
        raise ValueError(f"layer must be a whole number in [0, {len(layers) - 1}] for this model "
                         f"({len(layers)} decoder layers), got {layer}")
    captured = []

    def hook(module, inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _StopAfterLayer

    handle = layers[int(layer)].register_forward_hook(hook)
    try:
        base_transformer(unwrap(model))(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopAfterLayer:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"decoder layer {layer} did not run in the forward of {type(unwrap(model)).__name__}")
    return captured[0]
