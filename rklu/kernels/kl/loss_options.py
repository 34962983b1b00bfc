"""The loss keyword arguments shared by every entry point of the KL op (``fused_linear_unlearning_kl``,
``FusedLinearUnlearningKL``, ``unlearning_kl_from_logits``, ``unlearning_kl_reference``): declared once here, so
the entry points cannot drift apart, and checked once, before any work.

    alpha                    the augmented edit's strength: l_o - alpha * relu(l_aug - l_o)
    direction                "reverse" (RKLU) or "forward" (FKLU, the "+KL" retain term)
    divergence, jsd_beta, teacher, target_edit, target_shift, temperature
                             the objective (objective.py): divergence None takes ``direction``
    <model>_scale, <model>_softcap   each model's logit transform (common/logit_transform.py), model in
                             student / original / augmented
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..common import logit_transform as lt
from ..common.validation import check_alpha, check_direction_reduction
from . import objective_inputs as oi
from .objective import KLObjective


@dataclass(frozen=True)
class LossOptions:
    alpha: float = 8.0
    direction: str = "reverse"
    divergence: str | None = None
    jsd_beta: float = 0.5
    teacher: str = "models"
    target_edit: str = "none"
    target_shift: float = 0.0
    temperature: float = 1.0
    student_scale: float = 1.0
    student_softcap: float | None = None
    original_scale: float = 1.0
    original_softcap: float | None = None
    augmented_scale: float = 1.0
    augmented_softcap: float | None = None

    @classmethod
    def of(cls, entry: str, options: dict) -> "LossOptions":
        """The options an entry point received as ``**options``; TypeError naming an unknown one."""
        unknown = sorted(set(options) - NAMES)
        if unknown:
            raise TypeError(f"{entry}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                            f"its loss options are {', '.join(f.name for f in fields(cls))}")
        return cls(**options)

    def resolve(self, reduction: str, *, augmented: bool, labels: bool) -> tuple[KLObjective, tuple]:
        """(checked objective, the three models' logit transforms as the backends take them): the self / labels
        teacher takes the student's transform in the original's place, and the temperature is folded into all
        three. ValueError naming the problem."""
        check_direction_reduction(self.direction if self.divergence is None else "reverse", reduction)
        check_alpha(self.alpha)
        objective = oi.objective_from_arguments(self.direction, self.divergence, self.jsd_beta, self.teacher,
                                                self.target_edit, self.target_shift, self.temperature,
                                                augmented=augmented, labels=labels)
        transforms = lt.model_transforms(self.student_scale, self.student_softcap, self.original_scale,
                                         self.original_softcap, self.augmented_scale, self.augmented_softcap)
        if objective.teacher != "models":
            transforms = (transforms[0], transforms[0], lt.IDENTITY)
        return objective, oi.fold_temperature(transforms, objective.temperature)

    def changed(self) -> dict:
        """The options that differ from their defaults (for a module's repr)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


NAMES = frozenset(f.name for f in fields(LossOptions))
