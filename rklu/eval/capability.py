"""General capability (the paper's Table 1): lm-evaluation-harness (optional extra ``rklu[eval]``) on PIQA,
HellaSwag, ARC-Easy, ARC-Challenge, COPA, Winograd (wsc273) and MathQA; each accuracy and their mean.

Tasks are lm-eval's own names (their data comes from the Hugging Face hub), a local lm-eval task YAML
(``path/to/task.yaml``; a relative ``dataset_kwargs.data_files`` is resolved against the YAML's folder), or
a task bundled with rklu (``rklu/eval/tasks/NAME.yaml``: ``rklu_tiny_mc``, a 12-question multiple-choice
set with ``dataset_path: json`` that runs offline — the tests use it).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

DEFAULT_TASKS = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "copa", "wsc273", "mathqa")
INSTALL_HINT = "lm-evaluation-harness is not installed: pip install 'rklu[eval]' (or pip install lm-eval)"
# the paper's column names (Table 1 lists these benchmarks; its cells are accuracies in percent)
PAPER_NAMES = {"piqa": "PIQA", "hellaswag": "HellaSwag", "arc_easy": "ARC-E", "arc_challenge": "ARC-C",
               "copa": "COPA", "wsc273": "Winograd", "mathqa": "MathQA"}


def bundled_tasks() -> dict[str, Path]:
    """``{task name: YAML path}`` of the task files shipped in ``rklu/eval/tasks``."""
    folder = Path(str(resources.files("rklu.eval") / "tasks"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def task_config(path) -> dict:
    """A local lm-eval task YAML as the dict ``simple_evaluate`` accepts, with relative ``data_files``
    made absolute (lm-eval would resolve them against the current directory)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not a plain YAML task file ({error}); lm-eval tags such as !function need "
                         "the task folder registered with lm-eval instead") from None
    if not isinstance(config, dict) or not config.get("task"):
        raise ValueError(f"{path}: an lm-eval task YAML needs a 'task' name")
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if files is not None:
        def absolute(f):
            return f if "://" in str(f) or Path(f).is_absolute() else str((path.parent / f).resolve())

        if isinstance(files, Mapping):
            files = {split: ([absolute(f) for f in v] if isinstance(v, list) else absolute(v)) for split, v in files.items()}
        else:
            files = [absolute(f) for f in files] if isinstance(files, list) else absolute(files)
        config["dataset_kwargs"] = {**config["dataset_kwargs"], "data_files": files}
    return config


def resolve_tasks(tasks: Sequence[str]) -> tuple[list, list[str]]:
    """(what ``simple_evaluate`` gets: names or config dicts, the task names results come back under)."""
    bundled = bundled_tasks()
    specs, names = [], []
    for task in tasks:
        if task.endswith((".yaml", ".yml")):
            config = task_config(task)
        elif task in bundled:
            config = task_config(bundled[task])
        else:
            if not task or not task.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"invalid task name: {task!r}")
            specs.append(task)
            names.append(task)
            continue
        specs.append(config)
        names.append(str(config["task"]))
    return specs, names


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
    specs, names = resolve_tasks(list(tasks))
    from rklu.models.loading import remote_code_kwargs

    model_args = f"pretrained={model_path},dtype={dtype},trust_remote_code={remote_code_kwargs()['trust_remote_code']}"
    try:
        from lm_eval.tasks import TaskManager

        # lm-eval's own index (thousands of YAMLs, seconds to scan) only when a task is named from it
        manager = TaskManager(include_defaults=any(isinstance(spec, str) for spec in specs))
        out = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=specs, batch_size=batch_size,
                                      limit=limit, device=device, task_manager=manager)
    except Exception as error:  # missing task data (offline), unknown task, ...
        hub = [n for n, s in zip(names, specs) if isinstance(s, str)]
        hint = (f" (the data of {hub} comes from the Hugging Face hub: needs network or a local HF cache; "
                "a local task YAML with dataset_path: json runs offline)") if hub else ""
        raise CapabilityUnavailable(f"lm-eval could not run {names}: {type(error).__name__}: {str(error)[:300]}{hint}") from None
    if not out or "results" not in out:
        raise CapabilityUnavailable("lm-eval returned no results (task data unavailable?)")
    summary = extract_accuracies(out["results"], names)
    summary.update({"model": str(model_path), "tasks": names, "limit": limit})
    return summary


def capability_markdown(summary: Mapping[str, Any]) -> str:
    tasks = list(summary["tasks"])
    head = "| " + " | ".join(tasks) + " | Avg. Acc |"
    sep = "|" + "---|" * (len(tasks) + 1)
    acc = summary["accuracy"]
    cells = [f"{acc[t]:.4f}" if t in acc else "n/a" for t in tasks]
    avg = summary.get("average")
    return "\n".join([head, sep, "| " + " | ".join(cells) + f" | {avg:.4f} |" if avg is not None else "| " + " | ".join(cells) + " | n/a |"]) + "\n"


def table1_markdown(summaries: Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None) -> str:
    """The paper's Table 1 layout: one row per model, accuracies in percent with two decimals
    (``58.27``), the benchmarks under the paper's names, and ``Avg. Acc``, the mean over the tasks run."""
    if not summaries:
        raise ValueError("no capability results to tabulate")
    tasks = list(summaries[0]["tasks"])
    labels = list(labels) if labels is not None else [Path(str(s.get("model", "model"))).name for s in summaries]
    head = "| Method | " + " | ".join(PAPER_NAMES.get(t, t) for t in tasks) + " | Avg. Acc |"
    lines = [head, "|" + "---|" * (len(tasks) + 2)]
    for label, summary in zip(labels, summaries):
        acc = summary["accuracy"]
        cells = [f"{100 * acc[t]:.2f}" if t in acc else "n/a" for t in tasks]
        avg = summary.get("average")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {100 * avg:.2f} |" if avg is not None else
                     f"| {label} | " + " | ".join(cells) + " | n/a |")
    return "\n".join(lines) + "\n"
