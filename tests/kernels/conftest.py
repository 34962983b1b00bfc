"""Kernel tests (rklu.kernels): shared builders live in kernel_cases.py next to this file.

After the run, the worst relative error per (backend, dtype) of the seeded random cases
(test_reliability_kernel_random.py's ``WORST``) goes to the terminal summary and to
``<pytest basetemp>/kernel_worst_errors.json``; docs/reliability.md quotes it.
"""
import json
import sys
from pathlib import Path

import pytest

_BASETEMP: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _basetemp(tmp_path_factory):
    _BASETEMP.append(tmp_path_factory.getbasetemp())


def _worst_errors() -> dict:
    for module in list(sys.modules.values()):
        if str(getattr(module, "__file__", "")).endswith("test_reliability_kernel_random.py"):
            return getattr(module, "WORST", {})
    return {}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    worst = _worst_errors()
    if not worst:
        return
    report = {key: worst[key] for key in sorted(worst)}
    path = _BASETEMP[0] / "kernel_worst_errors.json" if _BASETEMP else None
    if path is not None:
        path.write_text(json.dumps(report, indent=2))
    terminalreporter.write_sep("-", "random kernel cases: worst relative error vs float64")
    for key, entry in report.items():
        terminalreporter.write_line(
            f"{key:12s} cases={entry['cases']:3d} loss={entry['loss']:.2e} grad={entry['grad']:.2e} "
            f"worst/materialized={entry['ratio']:.2f}  (loss: {entry.get('loss_case', '-')}, "
            f"grad: {entry.get('grad_case', '-')})")
    if path is not None:
        terminalreporter.write_line(f"written to {path}")
