"""`rklu finetune | augment | unlearn`: every RunConfig option is a flag (``--learning-rate 2e-5``),
on top of ``--preset`` and ``--config FILE``."""
from __future__ import annotations

import argparse
import sys
import typing

from ..kernels.common import backends as kernel_backends
from .config import FIELD_TYPES, FIELD_NAMES, _base_type, list_presets, method_hyperparameters, option_names

HELP = {
    "finetune": "train a model on QA data or a text corpus (the original model, or the retain oracle)",
    "augment": "train the original further on the forget set (the augmented model for RKLU/FKLU/TA)",
    "unlearn": "unlearn the forget set with --method ({methods}; +rt/+kl/+jsd add a retain term)",
}


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help=f"paper settings: {', '.join(list_presets())}")
    parser.add_argument("--config", dest="config_file", metavar="FILE", help="YAML file of options (flat or per stage)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    parser.add_argument("--eval-tofu", metavar="SPLIT", choices=("forget01", "forget05", "forget10"),
                        help="after every epoch run the TOFU evaluation of SPLIT into OUTPUT_DIR/eval/epoch_N")
    parser.add_argument("--retain-eval-dir", metavar="DIR",
                        help="the retain oracle's TOFU logs (ours or TOFU's published ones) for forget quality")
    parser.add_argument("--eval-batch-size", type=int, default=30,
                        help="TOFU evaluation batch size (default 30, TOFU's: generation budgets then match its logs)")
    parser.add_argument("--eval-max-samples", type=int, default=None, help="cap rows per TOFU set (quick runs)")
    for name in FIELD_NAMES:
        if name == "preset":
            continue
        flag = "--" + name.replace("_", "-")
        tp = _base_type(FIELD_TYPES[name])
        if name == "method":
            from ..methods import method_names

            # choices (from the method registry, read when the parser is built): --help lists every method; the
            # type check rejects a typo while parsing, before anything else runs, with the library's message
            # naming the valid ones
            parser.add_argument(flag, dest=name, default=None, type=_method_name, choices=method_names(),
                                help="unlearning method (unlearn only)")
        elif tp is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
        elif name == "kl_backend":  # the kernels' backend registry, read when the parser is built
            parser.add_argument(flag, dest=name, default=None, choices=kernel_backends.choices("kl"))
        elif typing.get_origin(tp) is list:
            parser.add_argument(flag, dest=name, nargs="+", default=None)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper())  # coerced by the config
    # each registered method's hyperparameters, from its spec (read when the parser is built)
    for hp in method_hyperparameters().values():
        bound = f"{'>' if hp.strict else '>='} {hp.minimum:g}"
        parser.add_argument("--" + hp.name.replace("_", "-"), dest=hp.name, default=None, metavar=hp.name.upper(),
                            help=f"{hp.help or 'method hyperparameter'} (default {hp.default:g}, {bound})")


def _method_name(value: str) -> str:
    from ..methods import get_method

    try:
        return get_method(value).name
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _runner(stage):
    def run(args) -> int:
        from . import stages
        from .run_folder import DryRunComplete
        from .trainer import NonFiniteLossError, TrainingInterrupted

        overrides = {name: getattr(args, name) for name in option_names() if name != "preset"}
        function = getattr(stages, stage)
        evaluate = _epoch_evaluator(stage, args, overrides) if args.eval_tofu else None
        try:
            run_dir = function(preset=args.preset, config_file=args.config_file, resume=args.resume,
                               evaluate=evaluate, **overrides)
        except NonFiniteLossError as error:
            print(f"rklu {stage}: {error}", file=sys.stderr)
            return 1
        except DryRunComplete as done:
            print(f"rklu {stage}: {done}")
            return 0
        except TrainingInterrupted as error:
            print(f"rklu {stage}: interrupted: {error}", file=sys.stderr)
            return 143  # 128 + SIGTERM, as if the signal had ended the process
        print(f"rklu {stage}: done, run folder {run_dir} (model in {stages.model_dir(run_dir)})")
        return 0
    return run


def _epoch_evaluator(stage, args, overrides):
    """TOFU evaluation after each epoch, with the run's own tokenizer and prompt format."""
    from pathlib import Path

    from ..eval.epoch_eval import tofu_epoch_evaluator
    from ..models.loading import load_tokenizer
    from .config import resolve_config
    from .stages import _prompt_format

    if args.retain_eval_dir and not Path(args.retain_eval_dir).exists():
        raise FileNotFoundError(f"--retain-eval-dir {args.retain_eval_dir} does not exist")
    cfg = resolve_config(stage, args.preset, args.config_file, overrides).validate(stage)
    source = cfg.tokenizer or cfg.model
    if not source or source == "tiny":
        raise ValueError("--eval-tofu needs a saved model or --tokenizer (not a freshly built tiny model)")
    # the training stage's own prompt format, so the evaluation asks the questions the way training did
    tokenizer = load_tokenizer(source)
    return tofu_epoch_evaluator(tokenizer, _prompt_format(cfg, tokenizer), args.eval_tofu, Path(cfg.output_dir) / "eval",
                                retain_eval_dir=args.retain_eval_dir, batch_size=args.eval_batch_size,
                                max_samples=args.eval_max_samples, progress=cfg.progress)


def register(subparsers) -> None:
    from ..methods.registry import aliases, specs

    methods = ", ".join([spec.name for spec in specs()] + [f"{alias.name} = {alias.target}" for alias in aliases()])
    for stage in ("finetune", "augment", "unlearn"):
        text = HELP[stage].format(methods=methods)
        parser = subparsers.add_parser(stage, help=text, description=text)
        _add_options(parser)
        parser.set_defaults(func=_runner(stage))
