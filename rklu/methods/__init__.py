"""Unlearning methods: a forget loss optionally plus lambda * a retain term (paper eq. 4).

``get_method("rklu+kl")`` -> :class:`Method`; ``method.loss(ctx, batch)`` -> (loss, metrics) on a paired
batch ``{"forget": ..., "retain": ..., "idk": ...}`` (each a padded sub-batch with labels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .common import LossContext
from .dpo import dpo_loss
from .fklu import fklu_loss
from .ga import ga_loss
from .idk import idk_loss
from .nll import finetune_loss
from .npo import npo_loss
from .retain import RETAIN_TERMS
from .rklu import rklu_loss
from .task_arithmetic import task_arithmetic

# forget loss -> (function, needs original teacher, needs augmented teacher, needs idk data)
FORGET_LOSSES = {
    "rklu": (rklu_loss, True, True, False),
    "fklu": (fklu_loss, True, True, False),
    "ga": (ga_loss, False, False, False),
    "npo": (npo_loss, True, False, False),
    "idk": (idk_loss, False, False, True),
    "dpo": (dpo_loss, True, False, True),
}
METHOD_NAMES = (
    "rklu", "fklu", "ga", "ga+rt", "ga+kl", "npo", "npo+rt", "npo+kl", "idk", "dpo", "dpo+rt", "dpo+kl",
    "rklu+rt", "rklu+kl", "fklu+kl", "task-arithmetic",
)


@dataclass(frozen=True)
class Method:
    name: str
    forget_loss: Callable | None
    retain_term: str | None = None       # "rt", "kl" or None
    needs_original: bool = False
    needs_augmented: bool = False
    needs_idk: bool = False
    trains: bool = True                   # task-arithmetic edits weights, no training loop

    @property
    def needs_retain(self) -> bool:
        return self.retain_term is not None

    def loss(self, ctx: LossContext, batch) -> tuple[torch.Tensor, dict]:
        ctx.cache.clear()  # student passes are memoized within one batch only
        try:
            loss, metrics = self.forget_loss(ctx, batch)
            if self.name != "finetune":
                metrics = {"forget_loss": loss.detach(), **metrics}
            if self.retain_term is not None:
                retain, retain_metrics = RETAIN_TERMS[self.retain_term](ctx, batch)
                loss = loss + ctx.retain_weight * retain
                metrics.update(retain_loss=retain.detach(), **retain_metrics)
            return loss, metrics
        finally:
            ctx.cache.clear()


FINETUNE = Method("finetune", finetune_loss)


def get_method(name: str) -> Method:
    """The method for a name in :data:`METHOD_NAMES`; ValueError naming the valid ones otherwise."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in METHOD_NAMES:
        raise ValueError(f"unknown unlearning method {name!r}; expected one of: {', '.join(METHOD_NAMES)}")
    if key == "task-arithmetic":
        return Method(key, None, needs_original=True, needs_augmented=True, trains=False)
    forget, _, retain = key.partition("+")
    fn, needs_original, needs_augmented, needs_idk = FORGET_LOSSES[forget]
    retain = retain or None
    return Method(key, fn, retain, needs_original=needs_original or retain == "kl",
                  needs_augmented=needs_augmented, needs_idk=needs_idk)


__all__ = ["Method", "LossContext", "get_method", "METHOD_NAMES", "FINETUNE", "task_arithmetic"]
