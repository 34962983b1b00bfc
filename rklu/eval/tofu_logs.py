"""TOFU's evaluation logs (Maini et al., 2024): their files and keys, reading and writing them.

Per-sample metrics are written exactly as TOFU's ``evaluate_util.py`` writes them, one JSON file per
evaluation set, *metric-major*: ``{"avg_gt_loss": {"0": 1.23, "1": ...}, "gt_loss": {...}, ...}``.

=========================================  ==================================  ==========================
set                                        file                                "paraphrased" answer key
=========================================  ==================================  ==========================
``forgetXX_perturbed``                     ``eval_log_forget.json``            ``paraphrased_answer``
``retain_perturbed``                       ``eval_log.json``                   ``paraphrased_answer``
``real_authors_perturbed``                 ``eval_real_author_wo_options.json``  ``answer``
``world_facts_perturbed``                  ``eval_real_world_wo_options.json``   ``answer``
=========================================  ==================================  ==========================

Keys per file (as TOFU): ``avg_gt_loss`` (NLL per answer token of the true answer), ``gt_loss`` (summed
NLL), ``num_token_gt``, ``generated_text`` ([prompt, greedy generation, decoded answer segment]), ``rouge1_recall``,
``rougeL_recall``, ``average_perturb_loss`` (list: NLL per token of each perturbed answer),
``avg_paraphrased_loss`` (NLL per token of the paraphrased answer), ``truth_ratio`` (TOFU's per-sample
value ``exp(avg_paraphrased_loss - mean(average_perturb_loss))``), ``paraphrased_loss``, ``perturb_loss``,
``num_token_paraphrased``, ``num_token_perturb``, plus ``normalized_gt_loss`` for real authors/world facts.

Reading accepts TOFU's published logs as well as ours: a folder of the four files, a folder holding only
``eval_log_aggregated.json`` (TOFU's ``{file name: log}`` bundle), or that bundle itself; sample-major logs
(``{index: {metric: value}}``) are transposed to metric-major.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from rklu.io import atomic_write_json

FORGET_FILE = "eval_log_forget.json"
RETAIN_FILE = "eval_log.json"
REAL_AUTHORS_FILE = "eval_real_author_wo_options.json"
WORLD_FACTS_FILE = "eval_real_world_wo_options.json"
AGGREGATED_FILE = "eval_log_aggregated.json"  # TOFU's {file name: log} bundle of the four logs
EVAL_FILES = (RETAIN_FILE, REAL_AUTHORS_FILE, WORLD_FACTS_FILE, FORGET_FILE)

# file -> (short name used in our result keys, TOFU's display name in aggregate_eval_stat.py)
SET_NAMES = {
    RETAIN_FILE: ("retain", "Retain"),
    REAL_AUTHORS_FILE: ("real_authors", "Real Authors"),
    WORLD_FACTS_FILE: ("world_facts", "Real World"),
    FORGET_FILE: ("forget", "Forget"),
}
UTILITY_FILES = (RETAIN_FILE, REAL_AUTHORS_FILE, WORLD_FACTS_FILE)

PER_SAMPLE_KEYS = (
    "avg_gt_loss", "gt_loss", "num_token_gt", "generated_text", "rouge1_recall", "rougeL_recall",
    "average_perturb_loss", "avg_paraphrased_loss", "truth_ratio", "paraphrased_loss", "perturb_loss",
    "num_token_paraphrased", "num_token_perturb",
)


# ------------------------------------------------------------------------------------------ reading
def normalize_log(log: Mapping[str, Any], where: str) -> dict:
    """Metric-major ``{metric: {index: value}}``; a sample-major ``{index: {metric: value}}`` log is transposed."""
    if not isinstance(log, Mapping) or not log:
        raise ValueError(f"{where}: not a TOFU evaluation log (expected a non-empty JSON object)")
    if all(str(k).lstrip("-").isdigit() for k in log) and all(isinstance(v, Mapping) for v in log.values()):
        out: dict = {}
        for index, metrics in log.items():
            for metric, value in metrics.items():
                out.setdefault(metric, {})[str(index)] = value
        return out
    return {metric: ({str(k): v for k, v in values.items()} if isinstance(values, Mapping) else values)
            for metric, values in log.items()}


def load_eval_logs(path, required: Sequence[str] = EVAL_FILES) -> dict:
    """``{file name: metric-major log}`` from a folder with TOFU's per-set files, a folder with only
    ``eval_log_aggregated.json``, or that aggregated file itself (TOFU's published logs or ours)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"evaluation logs not found: {path}")
    logs: dict = {}
    bundle = path if path.is_file() else path / AGGREGATED_FILE
    if path.is_dir():
        for name in required:
            if (path / name).is_file():
                logs[name] = read_json(path / name)
    missing = [name for name in required if name not in logs]
    if missing and bundle.is_file():
        data = read_json(bundle)
        if not isinstance(data, Mapping):
            raise ValueError(f"{bundle}: expected a JSON object of {{file name: log}}")
        if path.is_file() and set(data) & set(PER_SAMPLE_KEYS):  # a single per-set log given as a file
            data = {path.name: data}
        for name in missing:
            if name in data:
                logs[name] = data[name]
    missing = [name for name in required if name not in logs]
    if missing:
        raise FileNotFoundError(f"{path}: missing TOFU log(s) {', '.join(missing)} (run `rklu eval tofu` first)")
    return {name: normalize_log(logs[name], f"{path}/{name}") for name in required}


def read_json(path: Path):
    """A JSON file; invalid JSON is a ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from None


def per_sample(log: Mapping, metric: str, where: str) -> dict:
    """``{index: value}`` of one metric of a log; a clear error when it is missing or empty."""
    if metric not in log:
        raise ValueError(f"{where}: log has no {metric!r} entry")
    values = log[metric]
    if not isinstance(values, Mapping) or not values:
        raise ValueError(f"{where}: {metric!r} is empty or not a per-sample mapping")
    return values


def sorted_indices(values: Mapping) -> list[str]:
    """Sample indices in numeric order ("10" after "2")."""
    return sorted(values, key=lambda k: (int(k) if str(k).lstrip("-").isdigit() else 0, str(k)))


# ------------------------------------------------------------------------------------------ writing
def write_log(out_dir, filename: str, log: Mapping) -> Path:
    """One set's log, written atomically (a cut-off run leaves the previous file or none, never half)."""
    path = Path(out_dir) / filename
    atomic_write_json(path, log)
    return path


def write_bundle(out_dir, logs: Mapping[str, Mapping]) -> Path:
    """TOFU's ``eval_log_aggregated.json``: ``{file name: log}`` of the sets written."""
    path = Path(out_dir) / AGGREGATED_FILE
    atomic_write_json(path, dict(logs))
    return path
