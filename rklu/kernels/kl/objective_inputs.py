"""What the KL entry points derive from the objective keyword arguments before any work: the checked
``KLObjective`` (objective.py), the targets (labels of the counted tokens, range-checked), the per-token target
shifts of the "subtract" / "exclude" / "uniform" edits, and the temperature folded into the logit transforms."""
from __future__ import annotations

import math

import torch

from ..common import logit_transform as lt
from .objective import KLObjective


def objective_from_arguments(direction, divergence, jsd_beta, teacher, target_edit, target_shift, temperature, *,
                             augmented: bool, labels: bool) -> KLObjective:
    """The checked objective (ValueError naming the problem). ``divergence=None`` takes ``direction`` (the
    "reverse" / "forward" of the original API); a ``divergence`` contradicting a non-default ``direction``
    is refused rather than silently preferred."""
    if divergence is None:
        divergence = direction
    elif direction not in ("reverse", divergence):
        raise ValueError(f"divergence={divergence!r} contradicts direction={direction!r}: pass one of them")
    objective = KLObjective(divergence=divergence, jsd_beta=jsd_beta, teacher=teacher, target_edit=target_edit,
                            target_shift=target_shift, temperature=temperature)
    objective.check(augmented=augmented, labels=labels)
    return objective


def check_teacher_inputs(objective: KLObjective, original: dict) -> None:
    """The "models" teacher needs the original model's tensors (``original``: name -> tensor or None, the
    optional ones left out); "self" and "labels" take none, which would otherwise be silently unused."""
    given = [name for name, t in original.items() if t is not None]
    if objective.teacher == "models":
        missing = [name for name, t in original.items() if t is None]
        if missing:
            raise ValueError(f"teacher='models' needs {' and '.join(missing)}")
    elif given:
        source = "student's logits" if objective.teacher == "self" else "labels"
        raise ValueError(f"teacher={objective.teacher!r} builds its teacher from the {source}: pass "
                         f"{', '.join(given)} as None")


def checked_targets(labels_counted: torch.Tensor, vocab: int) -> torch.Tensor:
    """The counted tokens' labels as int64 token ids, each in [0, V) (ValueError naming a bad one): a target
    edit or a one-hot teacher indexes the vocabulary with them."""
    if labels_counted.is_floating_point() or labels_counted.is_complex() or labels_counted.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of token ids, got dtype {labels_counted.dtype}")
    if vocab < 2:
        raise ValueError(f"a target edit or a labels teacher needs a vocabulary of at least 2 tokens, got V={vocab}")
    bad = (labels_counted < 0) | (labels_counted >= vocab)
    if labels_counted.numel() and bool(bad.any()):
        raise ValueError(f"labels out of range: found {labels_counted[bad][0].item()}, expected token ids in "
                         f"[0, {vocab}) or ignore_index for the target edit / labels teacher")
    return labels_counted.reshape(-1).long()


def fixed_target_shift(objective: KLObjective, n: int, dtype: torch.dtype, device) -> torch.Tensor | None:
    """[n] shifts of the "subtract" (``target_shift``) and "exclude" (+inf) edits; None for the others."""
    if objective.target_edit == "subtract":
        return torch.full((n,), float(objective.target_shift), dtype=dtype, device=device)
    if objective.target_edit == "exclude":
        return torch.full((n,), math.inf, dtype=dtype, device=device)
    return None


def fold_temperature(transforms, temperature: float):
    """Each model's transform divided by the temperature (``logit_transform.with_temperature``)."""
    return tuple(lt.with_temperature(t, temperature) for t in transforms)


def kernel_objective_kwargs(objective: KLObjective, targets, target_shift) -> dict:
    """The op function's objective keyword arguments, given only when the objective needs them: the default
    teacher with the reverse / forward KL calls every backend exactly as before."""
    if objective.teacher == "models" and targets is None and objective.kernel_divergence in ("reverse", "forward"):
        return {}
    return dict(teacher_source=objective.teacher, jsd_beta=float(objective.jsd_beta), targets=targets,
                target_shift=target_shift)
