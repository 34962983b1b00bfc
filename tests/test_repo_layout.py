"""The repo root as working directory must not shadow installed packages.

`python -m pytest`, notebooks and scripts run from the root put it first on ``sys.path``; a top-level folder
that is an importable package there hides the installed package of the same name. transformers imports Hugging
Face's ``kernels`` package while loading ``PreTrainedModel``, so a top-level ``kernels/`` broke every import of
a model (2026-12-05, transformers 5.25).
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_transformers_and_rklu_kernels_import_from_repo_root():
    code = ("import transformers; from transformers import PreTrainedModel; "
            "import rklu.kernels; print(rklu.kernels.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(proc.stdout.strip()).resolve().is_relative_to(ROOT / "rklu" / "kernels")


def test_rklu_is_the_only_top_level_package():
    packages = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert packages == ["rklu"], f"top-level packages other than rklu shadow installed ones: {packages}"
