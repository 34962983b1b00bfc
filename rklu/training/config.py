"""Run configuration: one dataclass, presets for the paper's settings (YAML in ``rklu/configs``), user
YAML files, and keyword/command-line overrides. Resolution order, later wins:

    dataclass defaults < preset ``common`` < preset[stage] < config file (flat keys) < config file[stage]
    < overrides (Python keyword arguments or ``--option`` flags)

The methods' hyperparameters (``alpha``, ``npo_beta``, ...) are not fields here: each is declared once, in
its method's :class:`~rklu.methods.registry.Hyperparameter`, and RunConfig takes every registered one as
an option (keyword, YAML key, ``--flag``), keeps the values in ``hyperparameters``, reads them as
attributes (``cfg.alpha``) and records them as top-level keys of the run's config.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

import yaml

from ..kernels.common import backends as kernel_backends

STAGES = ("finetune", "augment", "unlearn")


@dataclass
class RunConfig:
    # --- model -----------------------------------------------------------------------------------
    model: str = ""                   # hub name or local path; "tiny" = build a tiny Llama (finetune only)
    tokenizer: str | None = None      # defaults to the model's; with model "tiny": reuse it instead of training one
    prompt_format: str = "auto"       # llama2 | phi | plain | chat (tokenizer chat template) | auto (from the model folder's name, then its config; plain when neither says)
    max_length: int = 512             # tokens; longer rows are truncated with a warning
    dtype: str = "auto"               # auto = bf16 on GPU, fp32 on CPU
    flash_attention: str = "auto"     # auto | yes | no
    mixed_precision: str = "no"       # no | bf16: autocast matmuls to bf16, weights and optimizer stay in dtype (CPU too)
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False   # run Python code shipped in a model folder (auto_map); off: refuse such models
    # --- data ------------------------------------------------------------------------------------
    data: str = "tofu:full"           # finetune data: tofu:<config>[a:b], a .json/.jsonl QA file, or a .txt corpus
    forget: str = "tofu:forget10"     # augment/unlearn forget data (same spec forms)
    retain: str = "auto"              # auto = TOFU complement of a tofu:forgetXX split; or a spec
    tofu_source: str = "bundled"      # bundled | hub | auto
    # --- teachers --------------------------------------------------------------------------------
    original: str | None = None       # the original model (teacher); defaults to `model`
    augmented: str | None = None      # augmented model (or LoRA adapter dir from `augment --lora`)
    teacher_cache: str = "none"       # none | memory | disk: precompute teacher hidden states, free teachers
    # --- method ----------------------------------------------------------------------------------
    method: str = "rklu"
    hyperparameters: dict = field(default_factory=dict)  # the methods' settings, by name (see the module doc)
    kl_backend: str = "auto"          # fused KL backend: auto | a registered one (rklu/kernels/common/backends.py)
    # --- optimization ----------------------------------------------------------------------------
    epochs: int = 5
    learning_rate: float = 1e-5
    batch_size: int = 4               # per device
    effective_batch_size: int | None = 32  # batch_size * grad accumulation * devices
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0        # linear warmup over this many epochs, then linear decay to 0
    lr_schedule: str = "linear"       # linear | constant (transformers scheduler names)
    max_grad_norm: float = 1.0
    seed: int = 42
    save_every_steps: int = 0         # 0 = checkpoint at each epoch end only
    save_total_limit: int | None = None
    nonfinite: str = "stop"           # stop | skip: what to do on a NaN/inf loss
    # --- LoRA ------------------------------------------------------------------------------------
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None
    # --- tiny models (model: tiny) ---------------------------------------------------------------
    tiny_vocab_size: int = 2048
    tiny_hidden_size: int = 128
    tiny_layers: int = 4
    tiny_heads: int = 4
    tiny_intermediate_size: int = 384
    # --- run -------------------------------------------------------------------------------------
    output_dir: str = ""
    overwrite: bool = False           # replace an existing run folder
    dry_run: bool = False             # check config, data, tokenizer, models, teachers and the folder; write nothing
    progress: bool = True
    parallel: str = "auto"            # several processes: auto | ddp | fsdp2 (auto: fsdp2 under an accelerate FSDP config)
    preset: str | None = None         # recorded for the run's config file

    def __getattr__(self, name):
        # only reached for names that are not fields: a registered hyperparameter reads as an attribute
        hp = None if name.startswith("_") else method_hyperparameters().get(name)
        if hp is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self.__dict__.get("hyperparameters", {}).get(name, hp.default)

    def __setattr__(self, name, value):
        if name not in FIELD_NAMES and name != "hyperparameters" and name in method_hyperparameters():
            self.hyperparameters[name] = value
        else:
            super().__setattr__(name, value)

    def method_hyperparameters(self) -> dict[str, float]:
        """Every registered hyperparameter's value (the default where none was set): what the loss reads."""
        return {name: getattr(self, name) for name in method_hyperparameters()}

    def to_dict(self) -> dict:
        """The options as flat keys, the hyperparameters among them (as config files write them)."""
        values = dataclasses.asdict(self)
        values.pop("hyperparameters")
        return {**values, **self.hyperparameters, **self.method_hyperparameters()}

    def grad_accumulation(self, world_size: int = 1) -> int:
        if not self.effective_batch_size:
            return 1
        per_step = self.batch_size * world_size
        if self.effective_batch_size % per_step:
            raise ValueError(f"effective_batch_size {self.effective_batch_size} is not a multiple of "
                             f"batch_size {self.batch_size} x {world_size} device(s)")
        return self.effective_batch_size // per_step

    def validate(self, stage: str) -> "RunConfig":
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        from ..methods import get_method, registry

        if stage == "unlearn":  # first: a mistyped method is the error to report, not a missing option
            get_method(self.method)
        if not self.model:
            raise ValueError(f"{stage}: no model given (--model)")
        if self.model == "tiny" and stage != "finetune":
            raise ValueError(f"{stage} needs --model: the path of the original model (model 'tiny' only builds one for finetune)")
        if not self.output_dir:
            raise ValueError(f"{stage}: no output directory given (--output-dir)")
        # every method's hyperparameters, whichever method runs: a preset or file sets them for all stages
        unknown = sorted(set(self.hyperparameters) - set(method_hyperparameters()))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}: not a hyperparameter of any registered method")
        for hp in registry.hyperparameters():
            value = getattr(self, hp.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{hp.label or hp.name} must be a number, got {value!r}")
            problem = hp.problem(value)
            if problem:
                raise ValueError(problem)
        kl_backends = kernel_backends.choices("kl")
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.max_length >= 2, f"max_length must be >= 2, got {self.max_length}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (self.nonfinite in ("stop", "skip"), f"nonfinite must be 'stop' or 'skip', got {self.nonfinite!r}"),
            (self.teacher_cache in ("none", "memory", "disk"),
             f"teacher_cache must be none, memory or disk, got {self.teacher_cache!r}"),
            (self.save_every_steps >= 0, "save_every_steps must be >= 0"),
            (self.parallel in ("auto", "ddp", "fsdp2"), f"parallel must be auto, ddp or fsdp2, got {self.parallel!r}"),
            (not (self.lora and self.parallel == "fsdp2"),
             "parallel fsdp2 is full-parameter training; with lora use parallel ddp (one base copy per GPU)"),
            (self.mixed_precision in ("no", "bf16"), f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}"),
            (self.kl_backend in kl_backends, f"kl_backend must be one of {', '.join(kl_backends)}, got {self.kl_backend!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.grad_accumulation()
        return self


FIELD_TYPES = typing.get_type_hints(RunConfig)
FIELD_NAMES = tuple(f.name for f in fields(RunConfig) if f.name != "hyperparameters")
_dataclass_init = RunConfig.__init__


def _init(self, *args, hyperparameters=None, **options):
    """The dataclass's __init__, plus every registered hyperparameter as a keyword (``alpha=4.0``)."""
    hps = dict(hyperparameters or {})
    registered = method_hyperparameters()
    for name in [k for k in options if k not in FIELD_NAMES]:
        if name not in registered:
            raise TypeError(f"RunConfig got an unexpected option {name!r}")
        hps[name] = options.pop(name)
    _dataclass_init(self, *args, hyperparameters=hps, **options)


RunConfig.__init__ = _init


def method_hyperparameters() -> dict:
    """name -> Hyperparameter of every registered method and retain term, read when asked, so a method
    registered later (a plugin, a test) is an option too. A name that is also a RunConfig field is refused."""
    from ..methods import registry

    hps = {hp.name: hp for hp in registry.hyperparameters()}
    clash = sorted(set(hps) & {f.name for f in fields(RunConfig)})
    if clash:
        raise ValueError(f"hyperparameter name(s) {', '.join(clash)} are RunConfig options already")
    return hps


def option_names() -> tuple[str, ...]:
    """Every option a config file, a keyword or a flag may set: the fields, then the hyperparameters."""
    return (*FIELD_NAMES, *method_hyperparameters())


def _base_type(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return _base_type(args[0]) if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType")) else tp


def coerce(name: str, value):
    """Convert a YAML/CLI value to the field's type (PyYAML reads '1e-5' as a string, for instance)."""
    if name not in FIELD_NAMES and name in method_hyperparameters():
        return _number(name, value)  # a method's setting: always a number
    if name not in FIELD_TYPES or name == "hyperparameters":
        raise ValueError(f"unknown config option {name!r}")
    optional = type(None) in typing.get_args(FIELD_TYPES[name])
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        return None
    tp = _base_type(FIELD_TYPES[name])
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp in (int, float):
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value) if tp is float else int(value)
            return number
        if typing.get_origin(tp) is list:
            return [str(v) for v in value] if isinstance(value, (list, tuple)) else [s for s in str(value).split(",") if s]
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"config option {name}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None


def _number(name: str, value) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"config option {name}: cannot read {value!r} as a number") from None


def presets_dir() -> Path:
    return Path(str(resources.files("rklu") / "configs"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of options")
    return data


def _stage_layers(data: dict, stage: str, source: str) -> list[dict]:
    """A file's flat keys, then its ``common`` section, then its ``<stage>`` section."""
    flat = {k: v for k, v in data.items() if k not in STAGES and k not in ("common", "description")}
    layers = [flat, data.get("common") or {}, data.get(stage) or {}]
    for layer in layers:
        if not isinstance(layer, dict):
            raise ValueError(f"{source}: sections must be mappings")
        unknown = sorted(set(layer) - set(option_names()))
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}")
    return layers


def load_preset(name: str) -> dict:
    path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; expected one of: {', '.join(list_presets())}")
    return _read_yaml(path)


def resolve_config(stage: str, preset: str | None = None, config_file=None, overrides: dict | None = None) -> RunConfig:
    """Merge defaults, preset, config file and overrides into a RunConfig for ``stage`` (not validated)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    values: dict = {}
    if preset:
        for layer in _stage_layers(load_preset(preset), stage, f"preset {preset}"):
            values.update(layer)
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        for layer in _stage_layers(_read_yaml(path), stage, str(path)):
            values.update(layer)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    values["preset"] = preset or values.get("preset")
    return RunConfig(**{k: coerce(k, v) for k, v in values.items()})
