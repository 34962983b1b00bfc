"""Unlearning methods: a forget loss optionally plus lambda * a retain term (paper eq. 4).

``get_method("rklu+kl")`` -> :class:`Method`; ``method.loss(ctx, batch)`` -> (loss, metrics) on a paired
batch ``{"forget": ..., "retain": ..., "idk": ...}`` (each a padded sub-batch with labels).

Each method is a :class:`~rklu.methods.registry.MethodSpec` in its own module, registered below: a new
method is one module plus one entry in ``BUILTIN``. ``METHOD_NAMES`` is read from the registry.
"""
from __future__ import annotations

from . import retain  # noqa: F401  (registers the +rt and +kl retain terms)
from .common import LossContext
from .dpo import METHOD as DPO
from .fklu import METHOD as FKLU
from .ga import METHOD as GA
from .idk import METHOD as IDK
from .nll import finetune_loss
from .npo import METHOD as NPO
from .registry import Method, MethodSpec, get_method, method_names, register, unregister
from .rklu import METHOD as RKLU
from .task_arithmetic import METHOD as TASK_ARITHMETIC, task_arithmetic

BUILTIN = (RKLU, FKLU, GA, NPO, IDK, DPO, TASK_ARITHMETIC)
for _spec in BUILTIN:
    register(_spec)

FINETUNE = Method("finetune", finetune_loss, data_roles=("train",))


def __getattr__(name):
    if name == "METHOD_NAMES":  # computed on access, so a method registered later is listed as well
        return method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Method", "MethodSpec", "LossContext", "get_method", "method_names", "register", "unregister",
           "METHOD_NAMES", "FINETUNE", "task_arithmetic"]
