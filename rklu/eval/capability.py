"""General capability (the paper's Table 1): lm-evaluation-harness (optional extra ``rklu[eval]``) on PIQA,
HellaSwag, ARC-Easy, ARC-Challenge, COPA, Winograd (wsc273) and MathQA; each accuracy and their mean."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

DEFAULT_TASKS = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "copa", "wsc273", "mathqa")
INSTALL_HINT = "lm-evaluation-harness is not installed: pip install 'rklu[eval]' (or pip install lm-eval)"


class CapabilityUnavailable(RuntimeError):
    """lm-eval or a task's data is not available."""


def _import_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise CapabilityUnavailable(INSTALL_HINT) from None
    return lm_eval


def extract_accuracies(results: Mapping[str, Any], tasks: Sequence[str]) -> dict:
    """Per-task accuracy from lm-eval's ``results`` section (``acc,none`` in lm-eval >= 0.4, ``acc`` before)
    and the average over the tasks found."""
    per_task = {}
    for task in tasks:
        entry = results.get(task)
        if not isinstance(entry, Mapping):
            continue
        for key in ("acc,none", "acc"):
            if key in entry and entry[key] is not None:
                per_task[task] = float(entry[key])
                break
    missing = [t for t in tasks if t not in per_task]
    average = sum(per_task.values()) / len(per_task) if per_task else None
    return {"accuracy": per_task, "average": average, "missing": missing}


def run_capability(model_path: str, tasks: Sequence[str] = DEFAULT_TASKS, *, batch_size: int | str = 8,
                   limit: int | float | None = None, device: str | None = None, dtype: str = "auto") -> dict:
    """Run lm-eval's ``simple_evaluate`` with the HF backend on ``model_path``; returns accuracies + average."""
    lm_eval = _import_lm_eval()
    tasks = list(tasks)
    unknown = [t for t in tasks if not t or not t.replace("_", "").isalnum()]
    if unknown:
        raise ValueError(f"invalid task name(s): {unknown}")
    model_args = f"pretrained={model_path},dtype={dtype}"
    try:
        out = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=tasks, batch_size=batch_size,
                                      limit=limit, device=device)
    except Exception as error:  # missing task data (offline), unknown task, ...
        raise CapabilityUnavailable(f"lm-eval could not run {tasks}: {type(error).__name__}: {str(error)[:300]} "
                                    "(task data comes from the Hugging Face hub: needs network or a local HF cache)") from None
    if not out or "results" not in out:
        raise CapabilityUnavailable("lm-eval returned no results (task data unavailable?)")
    summary = extract_accuracies(out["results"], tasks)
    summary.update({"model": str(model_path), "tasks": tasks, "limit": limit})
    return summary


def capability_markdown(summary: Mapping[str, Any]) -> str:
    tasks = list(summary["tasks"])
    head = "| " + " | ".join(tasks) + " | Avg. Acc |"
    sep = "|" + "---|" * (len(tasks) + 1)
    acc = summary["accuracy"]
    cells = [f"{acc[t]:.4f}" if t in acc else "n/a" for t in tasks]
    avg = summary.get("average")
    return "\n".join([head, sep, "| " + " | ".join(cells) + f" | {avg:.4f} |" if avg is not None else "| " + " | ".join(cells) + " | n/a |"]) + "\n"
