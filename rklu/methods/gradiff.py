"""GradDiff, the field's name (open-unlearning's src/trainer/unlearn/grad_diff.py with its default
retain_loss_type NLL, gamma = alpha = 1 in configs/trainer/GradDiff.yaml) for gradient ascent on the
forget set plus the retain NLL: exactly ``ga+rt`` (lambda = retain_weight = 1), so an alias of it."""
from __future__ import annotations

from .registry import MethodAlias

METHOD = MethodAlias("gradiff", "ga+rt")
