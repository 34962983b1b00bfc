"""Unlearning methods: a forget loss optionally plus lambda * a retain term (paper eq. 4).

``get_method("rklu+kl")`` -> :class:`Method`; ``method.loss(ctx, batch)`` -> (loss, metrics) on a paired
batch ``{"forget": ..., "retain": ..., "idk": ...}`` (each a padded sub-batch with labels).

Each method is a :class:`~rklu.methods.registry.MethodSpec` in its own module, registered below: a new
method is one module plus its name in ``BUILTIN``. ``METHOD_NAMES`` is read from the registry.
"""
from __future__ import annotations

import importlib

from . import retain  # noqa: F401  (registers the +rt and +kl retain terms)
from .common import LossContext
from .nll import finetune_loss
from .registry import Method, MethodAlias, MethodSpec, get_method, method_names, register, unregister
from .task_arithmetic import task_arithmetic

# the registry: each module here defines METHOD, a MethodSpec; this order is the order of METHOD_NAMES
BUILTIN = ("rklu", "fklu", "ga", "npo", "idk", "dpo", "task_arithmetic", "simnpo", "wga", "satimp", "gradiff",
           "whp", "undial", "ceu", "unilogit", "jensun", "rmu")
for _module in BUILTIN:
    register(importlib.import_module(f".{_module}", __name__).METHOD)

FINETUNE = Method("finetune", finetune_loss, data_roles=("train",))


def __getattr__(name):
    if name == "METHOD_NAMES":  # computed on access, so a method registered later is listed as well
        return method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Method", "MethodAlias", "MethodSpec", "LossContext", "get_method", "method_names", "register", "unregister",
           "METHOD_NAMES", "FINETUNE", "task_arithmetic"]
