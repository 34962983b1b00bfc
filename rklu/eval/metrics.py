"""The metric registry: every number an aggregate reports comes from a function registered here.

A metric is one function ``(EvalContext) -> {key: value}`` in its own module, and one registration line
at the end of this file (or a ``register_metric`` call in the module that defines it, for a metric
outside rklu). ``compute_metrics`` runs them in registration order and merges their keys, so
``rklu eval aggregate``, ``rklu eval tofu --retain-eval-dir``, the per-epoch evaluation and the demo all
report what is registered, and a metric appears everywhere once it is.

A metric that cannot be computed from what the context holds (no retain-model logs, no folder to find a
privacy log in) returns ``None`` values or no keys; it raises only for logs that are malformed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rklu.eval import privacy, tofu_metrics


@dataclass(frozen=True)
class EvalContext:
    """What a metric may read: ``logs`` (``{file name: metric-major TOFU log}`` of the evaluated model),
    ``retain_logs`` (the retain model's logs, at least ``eval_log_forget.json``; ``None`` when there are
    none), and the folders they came from (``None`` for logs held in memory)."""

    logs: Mapping[str, Mapping]
    retain_logs: Mapping[str, Mapping] | None = None
    eval_dir: Path | None = None
    retain_eval_dir: Path | None = None


MetricFn = Callable[[EvalContext], Mapping[str, Any]]
METRICS: dict[str, MetricFn] = {}


def register_metric(name: str, fn: MetricFn, *, replace: bool = False) -> MetricFn:
    """Add ``fn`` under ``name``; a second registration of a name is an error unless ``replace``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a metric needs a non-empty name, got {name!r}")
    if not callable(fn):
        raise TypeError(f"metric {name!r}: {fn!r} is not callable")
    if name in METRICS and not replace and METRICS[name] is not fn:
        raise ValueError(f"metric {name!r} is already registered ({METRICS[name].__module__}); pass replace=True")
    METRICS[name] = fn
    return fn


def compute_metrics(context: EvalContext, names: Sequence[str] | None = None) -> dict:
    """The merged keys of the registered metrics (all, or ``names`` in registry order)."""
    if names is not None:
        unknown = sorted(set(names) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; registered: {', '.join(METRICS)}")
    result: dict = {}
    for name, fn in METRICS.items():
        if names is None or name in names:
            values = fn(context)
            if not isinstance(values, Mapping):
                raise TypeError(f"metric {name!r} returned {type(values).__name__}, expected a mapping of keys to values")
            result.update(values)
    return result


# ------------------------------------------------------------------------------------------ built-in metrics
# In the order their keys appear in an aggregate.
register_metric("forget_quality", tofu_metrics.forget_quality_metric)
register_metric("model_utility", tofu_metrics.model_utility_metric)
register_metric("forget_truth_ratio_mean", tofu_metrics.forget_truth_ratio_mean_metric)
register_metric("privacy", privacy.privacy_metric)
