"""The method registry: each unlearning method is one :class:`MethodSpec` that says what it needs, and
everything else (method names, the CLI's ``--method`` choices, which teachers are loaded and which data
the teacher cache covers, config validation) is derived from it.

A spec declares its forget loss, its teachers and the data roles each teacher is run on, the data roles
its loss reads, its hyperparameters with defaults and bounds, which retain terms it combines with
(``name+rt``, ``name+kl``) and whether it trains at all. Adding a method = one module that defines
``METHOD = MethodSpec(...)`` plus its name in ``rklu.methods.BUILTIN`` (the shape of open-unlearning's
method registry); :func:`register` adds one from anywhere else (a plugin, a test).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from .common import LossContext

TEACHERS = ("original", "augmented")  # the LossContext attributes a teacher can fill
DATA_ROLES = ("forget", "retain", "idk")  # the paired batch's sub-batches (idk = forget questions, refusal answers)


@dataclass(frozen=True)
class Hyperparameter:
    """A method's scalar setting, declared only here: RunConfig takes it as an option (keyword, YAML key,
    ``--name`` flag with this default and bound, checked by validate) and the loss reads it with
    ``ctx.hp(name)``. ``strict`` makes the bound exclusive."""
    name: str
    default: float
    minimum: float = 0.0
    strict: bool = False
    label: str | None = None  # how errors name it, when the field name alone is unclear
    help: str | None = None   # the flag's help text

    def problem(self, value) -> str | None:
        """The error message for ``value``, or None when it is allowed."""
        ok = value > self.minimum if self.strict else value >= self.minimum
        if ok:
            return None
        bound = f"{'>' if self.strict else '>='} {self.minimum:g}"
        return f"{self.label or self.name} must be {bound}, got {value}"


ALPHA = Hyperparameter("alpha", 8.0, help="unlearning-teacher strength in l_o - alpha * relu(l_aug - l_o)")
RETAIN_WEIGHT = Hyperparameter("retain_weight", 1.0, label="retain_weight (lambda)",
                               help="lambda, the weight of the +rt/+kl/+jsd retain term")


@dataclass(frozen=True)
class RetainTerm:
    """A term added as ``lambda * term`` to a forget loss (``rklu+kl``); it reads the ``retain`` role."""
    name: str
    loss: Callable
    teachers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    hyperparameters: tuple[Hyperparameter, ...] = (RETAIN_WEIGHT,)


@dataclass(frozen=True)
class MethodSpec:
    """One unlearning method. ``teachers`` maps a teacher to the data roles it is run on (the teacher cache
    precomputes exactly those); a teacher with no roles is loaded but never run on data (task arithmetic
    reads its weights). ``data`` are the roles the forget loss reads."""
    name: str
    loss: Callable | None
    teachers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    data: tuple[str, ...] = ("forget",)
    hyperparameters: tuple[Hyperparameter, ...] = ()
    retain_terms: tuple[str, ...] = ("rt", "kl")
    trains: bool = True

    def check(self) -> None:
        """ValueError naming what is inconsistent: checked once, when the method is registered."""
        where = f"method {self.name!r}"
        if not self.name or "+" in self.name or self.name != self.name.strip().lower():
            raise ValueError(f"{where}: a name is lower case, without '+' (which joins a retain term)")
        if self.trains != (self.loss is not None):
            raise ValueError(f"{where}: a method that trains has a loss, one that does not has none")
        if not self.trains and self.retain_terms:
            raise ValueError(f"{where}: a method that does not train takes no retain term")
        unknown = set(self.retain_terms) - set(RETAIN_TERMS)
        if unknown:
            raise ValueError(f"{where}: unknown retain term(s) {sorted(unknown)}; known: {sorted(RETAIN_TERMS)}")
        if set(self.data) - set(DATA_ROLES):
            raise ValueError(f"{where}: data roles must be among {DATA_ROLES}, got {self.data}")
        for teacher, roles in self.teachers.items():
            if teacher not in TEACHERS:
                raise ValueError(f"{where}: unknown teacher {teacher!r}; expected one of {TEACHERS}")
            if set(roles) - set(self.data):
                raise ValueError(f"{where}: teacher {teacher} runs on {roles}, but the loss reads only {self.data}")


@dataclass(frozen=True)
class MethodAlias:
    """Another name for a registered method, e.g. the field's name for one of ours (``gradiff`` is
    ``ga+rt``): it resolves to that method, so nothing is duplicated."""
    name: str
    target: str


@dataclass(frozen=True)
class Method:
    """A method as training runs it: the forget loss, optionally plus ``retain_weight`` times a retain term
    (paper eq. 4). ``teacher_roles``: teacher -> the data roles it is run on (forget loss and retain term
    together); ``data_roles``: the sub-batches the loss reads."""
    name: str
    forget_loss: Callable | None
    retain_term: str | None = None       # "rt", "kl" or None
    teacher_roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    data_roles: tuple[str, ...] = ("forget",)
    hyperparameters: tuple[Hyperparameter, ...] = ()
    trains: bool = True                   # task-arithmetic edits weights, no training loop

    @property
    def needs_original(self) -> bool:
        return "original" in self.teacher_roles

    @property
    def needs_augmented(self) -> bool:
        return "augmented" in self.teacher_roles

    @property
    def needs_idk(self) -> bool:
        return "idk" in self.data_roles

    @property
    def needs_retain(self) -> bool:
        return self.retain_term is not None or "retain" in self.data_roles

    def loss(self, ctx: LossContext, batch) -> tuple[torch.Tensor, dict]:
        ctx.cache.clear()  # student passes are memoized within one batch only
        try:
            loss, metrics = self.forget_loss(ctx, batch)
            if self.name != "finetune":
                metrics = {"forget_loss": loss.detach(), **metrics}
            if self.retain_term is not None:
                retain, retain_metrics = RETAIN_TERMS[self.retain_term].loss(ctx, batch)
                loss = loss + ctx.hp("retain_weight") * retain
                metrics.update(retain_loss=retain.detach(), **retain_metrics)
            return loss, metrics
        finally:
            ctx.cache.clear()


RETAIN_TERMS: dict[str, RetainTerm] = {}
_METHODS: dict[str, MethodSpec] = {}
_ALIASES: dict[str, MethodAlias] = {}


def register_retain_term(term: RetainTerm) -> RetainTerm:
    RETAIN_TERMS[term.name] = term
    return term


def register(spec: MethodSpec | MethodAlias) -> MethodSpec | MethodAlias:
    """Add ``spec`` (or an alias) to the registry (checked first); ValueError if its name is taken."""
    if isinstance(spec, MethodAlias):
        if spec.name in method_names() or spec.name in _METHODS:
            raise ValueError(f"method {spec.name!r} is already registered")
        get_method(spec.target)  # ValueError naming the valid ones when the target is unknown
        _ALIASES[spec.name] = spec
        return spec
    spec.check()
    if spec.name in _METHODS or spec.name in _ALIASES:
        raise ValueError(f"method {spec.name!r} is already registered")
    _METHODS[spec.name] = spec
    return spec


def unregister(name: str) -> MethodSpec | MethodAlias:
    return _ALIASES.pop(name) if name in _ALIASES else _METHODS.pop(name)


def aliases() -> tuple[MethodAlias, ...]:
    return tuple(_ALIASES.values())


def specs() -> tuple[MethodSpec, ...]:
    return tuple(_METHODS.values())


def method_names() -> tuple[str, ...]:
    """Every ``--method`` value: each method, then each of its retain combinations; then the aliases."""
    return (*(name for spec in _METHODS.values()
              for name in (spec.name, *(f"{spec.name}+{term}" for term in spec.retain_terms))), *_ALIASES)


def hyperparameters() -> tuple[Hyperparameter, ...]:
    """Every registered hyperparameter once (the config validates them all, whatever the method)."""
    seen: dict[str, Hyperparameter] = {}
    for owner in (*_METHODS.values(), *RETAIN_TERMS.values()):
        for hp in owner.hyperparameters:
            seen.setdefault(hp.name, hp)
    return tuple(seen.values())


def get_method(name: str) -> Method:
    """The method for a name in :func:`method_names` (case and surrounding spaces ignored); ValueError
    naming the valid ones otherwise."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key in _ALIASES:
        key = _ALIASES[key].target
    if key not in method_names():
        raise ValueError(f"unknown unlearning method {name!r}; expected one of: {', '.join(method_names())}")
    base, _, retain = key.partition("+")
    spec = _METHODS[base]
    teachers = {teacher: tuple(roles) for teacher, roles in spec.teachers.items()}
    data, hps = spec.data, spec.hyperparameters
    if retain:
        term = RETAIN_TERMS[retain]
        for teacher, roles in term.teachers.items():
            teachers[teacher] = (*teachers.get(teacher, ()), *roles)
        data, hps = (*data, "retain"), (*hps, *term.hyperparameters)
    return Method(key, spec.loss, retain or None, teachers, tuple(data), tuple(hps), trains=spec.trains)

