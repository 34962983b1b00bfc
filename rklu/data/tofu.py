"""TOFU (Maini et al., 2024): the bundled copy of locuslab/TOFU, or the hub dataset when reachable."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import datasets

HUB_NAME = "locuslab/TOFU"
FORGET_SPLITS = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
CONFIGS = (
    "full", "forget01", "forget05", "forget10", "retain99", "retain95", "retain90",
    "forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed",
    "real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed",
    "holdout01", "holdout05", "holdout10",
)


def bundled_tofu_dir() -> Path:
    return Path(str(resources.files("rklu.data") / "tofu"))


def retain_split_for(forget_split: str) -> str:
    if forget_split not in FORGET_SPLITS:
        raise ValueError(f"unknown forget split {forget_split!r}; expected one of {sorted(FORGET_SPLITS)}")
    return FORGET_SPLITS[forget_split]


def load_tofu(config: str, source: str = "bundled") -> datasets.Dataset:
    """One TOFU configuration as a ``datasets.Dataset`` (same rows from either source).

    source: "bundled" (the package's copy, offline), "hub" (``load_dataset("locuslab/TOFU", config)``),
    or "auto" (hub, falling back to the bundled copy when the hub is unreachable).
    """
    if config not in CONFIGS:
        raise ValueError(f"unknown TOFU config {config!r}; expected one of {CONFIGS}")
    if source not in ("bundled", "hub", "auto"):
        raise ValueError(f"unknown TOFU source {source!r}; expected 'bundled', 'hub' or 'auto'")
    if source in ("hub", "auto"):
        try:
            return datasets.load_dataset(HUB_NAME, config, split="train")
        except Exception:
            if source == "hub":
                raise
    path = bundled_tofu_dir() / f"{config}.json"
    if not path.is_file():
        raise FileNotFoundError(f"bundled TOFU file missing: {path}")
    return datasets.load_dataset("json", data_files=str(path), split="train")


def idk_answers() -> list[str]:
    """The refusal answers used by the IDK and DPO baselines."""
    text = (bundled_tofu_dir() / "idontknow.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
