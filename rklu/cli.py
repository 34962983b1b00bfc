"""The `rklu` command line. Each stage module registers its own subcommands, so this file stays a table."""
from __future__ import annotations

import argparse
import importlib
import sys

# module -> it defines register(subparsers), adding subcommands whose parsers set `func=callable(args) -> int`
SUBCOMMAND_MODULES = (
    "rklu.training.cli",   # finetune, augment, unlearn
    "rklu.eval.cli",       # eval tofu|aggregate|case-study|copyright|capability, report
    "rklu.demo",           # demo
)


class UserError(Exception):
    """A problem with the user's input: printed as one clear line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rklu", description="Reverse-KL distillation unlearning for LLMs")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or a usage error (2), already printed: a status, also for callers
        return done.code if isinstance(done.code, int) else 2
    if getattr(args, "trust_remote_code", None):  # eval commands' flag (training stages read it from the config)
        from rklu.models.loading import allow_remote_code

        allow_remote_code(True)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as error:
        print(f"rklu {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
