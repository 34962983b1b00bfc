"""The experiment scripts parse, and every `rklu` flag they pass exists."""
import re
import subprocess
from pathlib import Path

import pytest

from rklu.cli import build_parser

SCRIPTS = sorted((Path(__file__).parents[2] / "scripts").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_valid_bash(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def _subparser(parser, words):
    for word in words:
        actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not actions or word not in actions[0].choices:
            break
        parser = actions[0].choices[word]
    return parser


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_flags_exist(script):
    text = script.read_text().replace("\\\n", " ")
    root = build_parser()
    for line in text.splitlines():
        match = re.search(r"(?:\$launch|\brklu) ((?:eval )?[a-z-]+)\b(.*)", line)
        if not match or line.lstrip().startswith("#"):
            continue
        parser = _subparser(root, match.group(1).split())
        known = {opt for action in parser._actions for opt in action.option_strings}
        for flag in re.findall(r"\s(--[a-z][a-z0-9-]*)", match.group(2)):
            assert flag in known, f"{script.name}: `{match.group(1)}` has no option {flag}"
