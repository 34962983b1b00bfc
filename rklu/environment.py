"""The software a run's numbers depend on, recorded next to them.

A training run on a CPU is deterministic for one set of releases and one machine, but a tiny model
trained for hundreds of steps amplifies last-bit differences (another reduction order in a kernel,
another BLAS) into different models, so a table is reproducible exactly only with the releases that
made it. Results files carry these versions so a reader can tell which ones."""
from __future__ import annotations

import platform
import sys
from importlib import metadata

# the packages whose code runs in training and evaluation (torch's kernels, transformers' model and
# Trainer, tokenizers' BPE trainer, accelerate's data loading, datasets' tables, numpy, and scipy's KS
# test and rouge-score's ROUGE-L in the metrics)
PACKAGES = ("torch", "triton", "transformers", "tokenizers", "accelerate", "datasets", "numpy", "scipy", "rouge-score")


def software_versions() -> dict:
    """{package: version or None if not installed} for PACKAGES, plus python, platform and machine."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    versions["platform"] = platform.platform()
    versions["machine"] = platform.machine()
    return versions


def versions_line(versions: dict) -> str:
    """One line for logs: 'torch 2.13.0, triton 3.9.0, ..., Python 3.11.7 (Linux-...)'."""
    packages = ", ".join(f"{name} {versions.get(name) or 'not installed'}" for name in PACKAGES)
    return f"{packages}; Python {versions.get('python')} ({versions.get('platform')})"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(versions_line(software_versions()) + "\n")
