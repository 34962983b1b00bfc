"""What the KL op distils toward: the teacher (its source and its edits) and the divergence.

The logit-distillation unlearning methods differ only in these choices (issue 22; each method's file cites its
paper):

    teacher source   "models": l_o, or l_o - alpha * relu(l_aug - l_o) with an augmented model (RKLU, WHP)
                     "self":   the student's own logits, detached (CE-U, Unilogit): no teacher model
                     "labels": one-hot on the label, l_i = -inf for i != y and 0 at y (JensUn's forget term)
    target edit      on the label's entry y of the teacher logits, after the source:
                     "none"
                     "subtract": l_y -= target_shift                 (UNDIAL, target_shift = its beta)
                     "uniform":  l_y set so that p_teacher(y) = 1/V  (Unilogit)
                     "exclude":  l_y = -inf                          (CE-U)
    divergence       "reverse":   KL(p_s || p_t)                     (RKLU)
                     "forward":   KL(p_t || p_s)                     (FKLU, UNDIAL, CE-U, the "+KL" retain term)
                     "jsd":       beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s
                                  (Liger-Kernel's generalized JSD, ``jsd_beta``; beta = 0 / 1 are taken as
                                  the forward / reverse KL, as Liger does)
                     "argmax_ce": -log p_s(argmax_i l_t,i)            (WHP's generic labels; ties: lowest index)
    temperature      every model's logits divided by T before the softmaxes (no T^2 factor)

Every backend implements every combination; ``KLObjective.kernel_arguments`` says what a backend's op function
receives. The temperature never reaches a backend: it folds exactly into each model's logit transform
(``c tanh(s l / c) / T = (c/T) tanh((s/T) l / (c/T))``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

DIVERGENCES = ("reverse", "forward", "jsd", "argmax_ce")
TEACHER_SOURCES = ("models", "self", "labels")
TARGET_EDITS = ("none", "subtract", "uniform", "exclude")


@dataclass(frozen=True)
class KLObjective:
    divergence: str = "reverse"
    jsd_beta: float = 0.5
    teacher: str = "models"
    target_edit: str = "none"
    target_shift: float = 0.0
    temperature: float = 1.0

    def check(self, augmented: bool = False, labels: bool = True) -> None:
        """ValueError naming the problem: unknown names, values out of range, or a combination whose loss is
        infinite or undefined (a reverse KL or JSD-free hard target against a teacher with zeros)."""
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {self.divergence!r}; expected one of {DIVERGENCES}")
        if self.teacher not in TEACHER_SOURCES:
            raise ValueError(f"unknown teacher source {self.teacher!r}; expected one of {TEACHER_SOURCES}")
        if self.target_edit not in TARGET_EDITS:
            raise ValueError(f"unknown target edit {self.target_edit!r}; expected one of {TARGET_EDITS}")
        if not _finite(self.jsd_beta) or not 0.0 <= self.jsd_beta <= 1.0:
            raise ValueError(f"jsd_beta must be in [0, 1], got {self.jsd_beta!r}")
        if not _finite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if not _finite(self.target_shift) or self.target_shift < 0:
            raise ValueError(f"target_shift must be a finite number >= 0, got {self.target_shift!r}")
        if self.teacher != "models" and augmented:
            raise ValueError(f"teacher={self.teacher!r} takes no augmented model (the augmented edit acts on l_o)")
        if (self.target_edit != "none" or self.teacher == "labels") and not labels:
            raise ValueError(f"target_edit={self.target_edit!r} / teacher={self.teacher!r} need labels (the target y)")
        if self.target_edit == "uniform" and augmented:
            raise ValueError("target_edit='uniform' is defined on an unedited teacher; it takes no augmented model")
        if self.teacher == "labels" and self.target_edit != "none":
            raise ValueError("teacher='labels' is one-hot on the label already: it takes no target edit")
        zeros = self.target_edit == "exclude" or self.teacher == "labels"
        if zeros and self.kernel_divergence == "reverse":
            raise ValueError(f"the reverse KL is infinite against a teacher with zero probabilities "
                             f"(target_edit={self.target_edit!r}, teacher={self.teacher!r}): use the forward KL or jsd")
        if self.teacher == "labels" and self.kernel_divergence == "argmax_ce":
            raise ValueError("teacher='labels' with divergence='argmax_ce' is the plain NLL: use the log-prob op")

    @property
    def kernel_divergence(self) -> str:
        """The divergence a backend computes: jsd at beta 0 / 1 is the forward / reverse KL (Liger's convention)."""
        if self.divergence == "jsd" and self.jsd_beta in (0.0, 1.0):
            return "forward" if self.jsd_beta == 0.0 else "reverse"
        return self.divergence

    @property
    def has_target_edit(self) -> bool:
        return self.target_edit != "none" or self.teacher == "labels"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


DEFAULT = KLObjective()
