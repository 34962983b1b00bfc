"""`rklu finetune | augment | unlearn`: every RunConfig option is a flag (``--learning-rate 2e-5``),
on top of ``--preset`` and ``--config FILE``."""
from __future__ import annotations

import argparse
import sys
import typing

from .config import FIELD_TYPES, FIELD_NAMES, _base_type, list_presets

HELP = {
    "finetune": "train a model on QA data or a text corpus (the original model, or the retain oracle)",
    "augment": "train the original further on the forget set (the augmented model for RKLU/FKLU/TA)",
    "unlearn": "unlearn the forget set with --method (rklu, fklu, ga, npo, dpo, idk, +rt/+kl, task-arithmetic)",
}


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help=f"paper settings: {', '.join(list_presets())}")
    parser.add_argument("--config", dest="config_file", metavar="FILE", help="YAML file of options (flat or per stage)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    for name in FIELD_NAMES:
        if name == "preset":
            continue
        flag = "--" + name.replace("_", "-")
        tp = _base_type(FIELD_TYPES[name])
        if tp is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
        elif typing.get_origin(tp) is list:
            parser.add_argument(flag, dest=name, nargs="+", default=None)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper())  # coerced by the config


def _runner(stage):
    def run(args) -> int:
        from . import stages
        from .trainer import NonFiniteLossError

        overrides = {name: getattr(args, name) for name in FIELD_NAMES if name != "preset"}
        function = getattr(stages, stage)
        try:
            run_dir = function(preset=args.preset, config_file=args.config_file, resume=args.resume, **overrides)
        except NonFiniteLossError as error:
            print(f"rklu {stage}: {error}", file=sys.stderr)
            return 1
        print(f"rklu {stage}: done, run folder {run_dir} (model in {stages.model_dir(run_dir)})")
        return 0
    return run


def register(subparsers) -> None:
    for stage in ("finetune", "augment", "unlearn"):
        parser = subparsers.add_parser(stage, help=HELP[stage], description=HELP[stage])
        _add_options(parser)
        parser.set_defaults(func=_runner(stage))
