"""CI installs the newest releases (lower bounds only) and runs the smoke stage before the suite; the
smoke stage's dry run checks everything that precedes the run folder and writes nothing."""
import re
import tomllib
from pathlib import Path

from rklu.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_smoke_stage_first_and_pins_nothing_but_the_cpu_torch():
    run = ROOT.joinpath(".ci/run").read_text()
    assert run.index(".ci/smoke") < run.index('eval "$test_cmd"')
    pins = re.findall(r"pip install[^\n]*==[^\n]*", run)
    assert pins == ["pip install -q torch==2.13.0"] or not pins, pins  # the CPU wheel (see .ci/run)
    project = tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]:
        assert not re.search(r"==|<|~=", spec.split(";")[0]), f"pyproject pins {spec!r}: lower bounds only"
    smoke = ROOT.joinpath(".ci/smoke").read_text()
    assert 'cd "$(dirname "$0")/.."' in smoke and "python -m rklu.cli --help" in smoke and "--dry-run" in smoke


def test_dry_run_checks_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["finetune", "--preset", "tiny-cpu", "--data", "tofu:full[3996:]", "--tiny-vocab-size", "280",
            "--tiny-hidden-size", "16", "--tiny-layers", "1", "--tiny-heads", "2", "--tiny-intermediate-size", "32",
            "--max-length", "64", "--no-progress", "--output-dir", str(out), "--dry-run"]
    assert main(argv) == 0
    assert "dry run" in capsys.readouterr().out and not out.exists()
    assert main(argv[:-4] + ["--learning-rate", "-1", "--output-dir", str(out), "--dry-run"]) == 2  # still checked
    assert main(["unlearn", "--preset", "tiny-cpu", "--model", str(tmp_path / "missing"), "--forget", "tofu:forget01",
                 "--method", "ga", "--output-dir", str(out), "--dry-run"]) == 2
    assert "path not found" in capsys.readouterr().err and not out.exists()
