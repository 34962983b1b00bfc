"""The experiment scripts parse, print their help, and under ``--dry-run`` every command they would run is
valid: each `rklu` call parses with the CLI's own parser, each Python file exists and accepts the flags it
is given, each pytest path exists. A dry run starts no training and no GPU work (scripts/lib/dry_run.sh)."""
import contextlib
import functools
import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rklu.cli import build_parser

ROOT = Path(__file__).parents[2]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))
# the positional arguments each script needs (a text file for the copyright script is made by the test)
ARGS = {"alpha_sweep.sh": ["tofu-llama2-7b", "forget10"], "tofu.sh": ["tofu-llama2-7b", "forget01", "rklu+kl",
        "npo+rt", "task-arithmetic"], "copyright_hp.sh": ["{book}", "rklu+kl", "ga+kl"]}


def _run(script, *args, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "OUT", "LAUNCH", "ORIGINAL", "GPU_OUT")}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=120,
                          env={**clean, "PYTHON": sys.executable, **env})


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_valid_bash(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_help(script):
    proc = _run(script, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and "DRY-RUN" not in proc.stdout


@functools.cache
def _python_help(path: str) -> str:
    proc = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, f"{path} --help failed: {proc.stderr[-2000:]}"
    return proc.stdout


def _check_rklu(argv):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"`rklu {shlex.join(argv)}` does not parse:\n{stderr.getvalue()}")


def _check_python(argv):
    if argv[:2] == ["-m", "pytest"]:
        for arg in argv[2:]:
            if not arg.startswith("-") and not os.path.isabs(arg) and ("/" in arg or arg.endswith(".py")):
                assert (ROOT / arg).exists(), f"pytest path {arg} does not exist"
        return
    path, flags = argv[0], [a.split("=")[0] for a in argv[1:] if a.startswith("--")]
    assert (ROOT / path).is_file(), f"{path} does not exist"
    helptext = _python_help(path)
    for flag in flags:
        assert flag in helptext, f"{path} has no option {flag}"


def _check_command(argv):
    while argv and (argv[0] == "env" or "=" in argv[0]):  # env VAR=value ... CMD
        argv = argv[1:]
    if argv[0] == "rklu":
        _check_rklu(argv[1:])
    elif "rklu.cli" in argv:  # a LAUNCH such as "accelerate launch ... -m rklu.cli"
        _check_rklu(argv[argv.index("rklu.cli") + 1:])
    elif argv[0] == sys.executable:
        _check_python(argv[1:])
    else:
        pytest.fail(f"unexpected command in a dry run: {shlex.join(argv)}")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_dry_run_commands_are_valid(script, tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("Some text to forget.\n")
    args = [a.format(book=book) for a in ARGS.get(script.name, [])]
    proc = _run(script, "--dry-run", *args, OUT=str(tmp_path / "runs"), GPU_OUT=str(tmp_path / "gpu"),
                SPLITS="forget01")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    commands = [shlex.split(line[len("DRY-RUN:"):]) for line in proc.stdout.splitlines() if line.startswith("DRY-RUN:")]
    assert commands, f"{script.name} printed no command under --dry-run:\n{proc.stdout}\n{proc.stderr}"
    for argv in commands:
        _check_command(argv)


def test_dry_run_catches_a_missing_option_and_a_missing_file(tmp_path):
    """The checks above fail on what they are for: an unknown rklu option, a missing Python file."""
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        _check_command(["rklu", "unlearn", "--no-such-option", "1"])
    with pytest.raises(AssertionError, match="does not exist"):
        _check_command([sys.executable, "benchmarks/no_such_file.py"])
    with pytest.raises(AssertionError, match="does not exist"):
        _check_command([sys.executable, "-m", "pytest", "tests/no_such_folder/test_x.py"])
