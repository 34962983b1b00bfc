"""The three stages as Python functions (the CLI and the demo call these):

    run_dir = finetune(preset="tiny-cpu", output_dir="runs/original")
    run_dir = augment(preset="tiny-cpu", model="runs/original/model", output_dir="runs/augmented")
    run_dir = unlearn(preset="tiny-cpu", method="rklu+kl", model="runs/original/model",
                      augmented="runs/augmented/model", output_dir="runs/rklu", evaluate=my_eval)

Each returns the run folder: ``config.yaml``/``config.json`` (resolved config), ``run.json`` (status,
steps, teacher-cache memory report), ``metrics.jsonl``/``metrics.json`` (one record per epoch),
``checkpoints/checkpoint-<step>/`` (Trainer checkpoints, each epoch), ``model/`` (final model +
tokenizer; for ``augment`` with LoRA, the adapter). Everything that can fail on user input (config,
method, data, paths, tokenizer) is checked before the run folder is created.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch

from ..data.collate import PairedCollator, PairedDataset, idk_dataset, tokenize_qa_dataset
from ..data.formatting import get_prompt_format, guess_prompt_format
from ..data.qa import check_overlap, load_qa, split_slice
from ..data.text import read_text_corpus
from ..data.tofu import FORGET_SPLITS, idk_answers
from ..kernels.common.backends import resolve_for_run
from ..methods import FINETUNE, LossContext, get_method, task_arithmetic
from ..models import loading
from ..models.head_check import check_models
from ..models.heads import output_head
from . import distributed, run_lock
from .config import RunConfig, resolve_config
from .run_folder import check_run_dir, finish_run, model_dir, start_run_dir
from .teachers import cache_teachers, check_teachers, load_full_model, load_teachers, place_teachers
from .trainer import NonFiniteLossError, TrainingInterrupted, last_checkpoint, run_training


# ---------------------------------------------------------------------------------------------------
# config, data and model helpers

def _config(stage, config, preset, config_file, overrides) -> RunConfig:
    if isinstance(config, RunConfig):
        cfg = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    else:
        if config is not None and config_file is None:
            config_file = config  # a path to a YAML file
        cfg = resolve_config(stage, preset, config_file, overrides)
    cfg = cfg.validate(stage)
    loading.allow_remote_code(cfg.trust_remote_code)
    run_lock.refuse_if_locked(cfg.output_dir)  # a live run on the folder: refuse before any work
    return cfg


def _is_text_spec(spec: str) -> bool:
    base, _ = split_slice(spec)
    return not base.startswith("tofu:") and (base.endswith(".txt") or Path(base).is_dir())


def _load_raw(spec: str, cfg: RunConfig, name: str):
    """("text", corpus) or ("qa", Dataset) — validated (exists, non-empty, answers present)."""
    if not spec:
        raise ValueError(f"no {name} data given")
    if _is_text_spec(spec):
        return "text", read_text_corpus(spec)
    return "qa", load_qa(spec, cfg.tofu_source, name=f"{name} data ({spec})")


def _tokenize(raw, tokenizer, fmt, cfg: RunConfig, name: str, path: str | None = None):
    kind, value = raw
    if kind == "text":
        from ..data.text import text_windows

        return text_windows(value, tokenizer, cfg.max_length)
    return tokenize_qa_dataset(value, tokenizer, fmt, cfg.max_length, name=name)


def _fit_context(cfg: RunConfig, model_path: str) -> RunConfig:
    """max_length above the model's context (max_position_embeddings) -> capped to it, with a warning."""
    import warnings

    if loading.is_named_model(model_path):
        return cfg  # loaded from a package file; its context (8192 for SmolLM2) exceeds every preset's max_length
    try:
        from transformers import AutoConfig

        context = getattr(AutoConfig.from_pretrained(model_path, **loading.remote_code_kwargs()),
                          "max_position_embeddings", None)
    except (OSError, ValueError):
        return cfg  # not a loadable model config (e.g. an adapter dir): loading reports problems later
    if context and cfg.max_length > context:
        warnings.warn(f"max_length={cfg.max_length} exceeds the model's context of {context} tokens; "
                      f"using max_length={context} (longer rows are truncated)", UserWarning, stacklevel=3)
        cfg = dataclasses.replace(cfg, max_length=context)
    return cfg


def _prompt_format(cfg: RunConfig, tokenizer=None):
    """The run's prompt format; ``chat`` is built from ``tokenizer``'s chat template."""
    if cfg.prompt_format != "auto":
        return get_prompt_format(cfg.prompt_format, tokenizer)
    try:
        return guess_prompt_format(cfg.model)
    except ValueError:
        return get_prompt_format("plain")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_student(cfg: RunConfig, tokenizer):
    model = loading.load_model(cfg.model, dtype=cfg.dtype, flash_attention=cfg.flash_attention,
                               gradient_checkpointing=cfg.gradient_checkpointing)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's embedding has "
                         f"{model.get_input_embeddings().weight.shape[0]}")
    return model


def _lora(cfg: RunConfig, model):
    if cfg.lora_targets and "lm_head" in cfg.lora_targets:
        raise ValueError("lora_targets must not include lm_head: the fused KL reads the head weight directly")
    return loading.add_lora(model, loading.lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets))


def _parallel_mode(cfg: RunConfig, evaluate) -> str:
    """"none", "ddp" or "fsdp2" for this launch; starts the process group when there are several ranks."""
    mode = distributed.resolve_mode(cfg.parallel)
    if mode == "fsdp2" and cfg.lora:
        raise ValueError("FSDP2 is full-parameter training; with lora use DDP (parallel: ddp, or an accelerate "
                         "config with distributed_type MULTI_GPU)")
    if mode != "none" and cfg.nonfinite == "skip":
        raise ValueError("nonfinite: skip is for single-process runs (a skipped micro-batch has no gradient for "
                         "DDP/FSDP to reduce); use nonfinite: stop, which stops every rank at the same step")
    if mode == "fsdp2" and evaluate is not None:
        raise ValueError("per-epoch evaluation (--eval-tofu) is not supported under FSDP2: evaluate each epoch's "
                         "checkpoint afterwards (`rklu eval tofu --model OUTPUT_DIR/checkpoints/checkpoint-N`)")
    distributed.init()
    return mode


def _save_final(trainer, tokenizer, run_dir, merge_lora: bool, mode: str) -> Path:
    """The final model, written once by rank 0 (an FSDP2 model is gathered first, by every rank)."""
    state_dict = distributed.full_state_dict(trainer.model) if mode == "fsdp2" else None
    out = model_dir(run_dir)
    if distributed.is_main():
        out = loading.save_model(trainer.model, tokenizer, out, merge_lora=merge_lora, state_dict=state_dict)
    distributed.barrier()
    return out


def _train(stage, cfg, model, tokenizer, dataset, method, ctx, evaluate, resume, run_dir, status, merge_lora,
           on_trainer=None, mode: str = "none"):
    try:
        trainer = run_training(cfg, model, dataset, PairedCollator(tokenizer.pad_token_id), method, ctx, run_dir,
                               evaluate=evaluate, resume=resume, on_trainer=on_trainer, parallel=mode,
                               tokenizer=tokenizer)
    except NonFiniteLossError as error:
        finish_run(run_dir, status, status="failed", error=str(error), failed_step=error.step,
                last_checkpoint=last_checkpoint(run_dir / "checkpoints"))
        raise
    except BaseException as error:
        # A signal or Ctrl-C stops a healthy run (resume it); anything else is a failure to look at.
        stopped = isinstance(error, (TrainingInterrupted, KeyboardInterrupt))
        finish_run(run_dir, status, status="interrupted" if stopped else "failed",
                error=f"{type(error).__name__}: {error}", last_checkpoint=last_checkpoint(run_dir / "checkpoints"))
        raise
    out = _save_final(trainer, tokenizer, run_dir, merge_lora, mode)
    finish_run(run_dir, status, status="completed", model_dir=str(out), steps=trainer.state.global_step,
            skipped_nonfinite=trainer.skipped_nonfinite)
    return run_dir


# ---------------------------------------------------------------------------------------------------
# stages

def finetune(config=None, *, preset: str | None = None, config_file=None, evaluate: Callable | None = None,
             resume: bool = False, **overrides) -> Path:
    """Train ``model`` on ``data`` (TOFU full -> the original model; retainXX -> the retain oracle).
    ``model="tiny"`` builds a tiny Llama and a BPE tokenizer trained on the data first."""
    cfg = _config("finetune", config, preset, config_file, overrides)
    return _fit("finetune", cfg, cfg.data, evaluate, resume, merge_lora=True)


def augment(config=None, *, preset: str | None = None, config_file=None, evaluate: Callable | None = None,
            resume: bool = False, **overrides) -> Path:
    """The augmented model: the original (``model``) trained further on the ``forget`` data. With
    ``lora=True`` only an adapter is trained and saved — unlearning then loads it as the augmented
    teacher on the shared base."""
    cfg = _config("augment", config, preset, config_file, overrides)
    return _fit("augment", cfg, cfg.forget, evaluate, resume, merge_lora=False)


def _fit(stage, cfg, spec, evaluate, resume, merge_lora):
    raw = _load_raw(spec, cfg, "training" if stage == "finetune" else "forget")
    if cfg.model == "tiny":
        from ..models.tiny import build_tiny_llama, qa_texts, train_bpe_tokenizer

        if cfg.tokenizer:  # reuse a tokenizer (e.g. the original's, for a comparable retain oracle)
            tokenizer = loading.load_tokenizer(cfg.tokenizer)
        else:
            texts = [raw[1]] if raw[0] == "text" else qa_texts(raw[1]) + idk_answers()
            tokenizer = train_bpe_tokenizer(texts, vocab_size=cfg.tiny_vocab_size)
        model = build_tiny_llama(tokenizer, cfg.tiny_hidden_size, cfg.tiny_layers, cfg.tiny_heads,
                                 cfg.tiny_intermediate_size, max_position_embeddings=max(cfg.max_length, 64),
                                 seed=cfg.seed)
    else:
        cfg = _fit_context(cfg, cfg.model)
        tokenizer = loading.load_tokenizer(cfg.tokenizer or cfg.model)
        model = _load_student(cfg, tokenizer)
    fmt = _prompt_format(cfg, tokenizer)
    data = _tokenize(raw, tokenizer, fmt, cfg, f"{stage} data")
    check_models({f"student ({cfg.model})": model})  # the NLL reads the head path, not .logits
    mode = _parallel_mode(cfg, evaluate)
    run_dir = check_run_dir(cfg, resume)
    if cfg.lora:
        model = _lora(cfg, model)
    if mode == "fsdp2":
        distributed.shard_fsdp2(model)
    dataset = PairedDataset(data, main_role="train", seed=cfg.seed)
    status = start_run_dir(run_dir, cfg, stage, resume, {"rows": len(data)})
    return _train(stage, cfg, model, tokenizer, dataset, FINETUNE, LossContext(), evaluate, resume, run_dir,
                  status, merge_lora=merge_lora and cfg.lora, mode=mode)


def _default_retain(cfg: RunConfig) -> str | None:
    if cfg.retain and cfg.retain not in ("auto", "none"):
        return cfg.retain
    if cfg.retain == "none":
        return None
    base, _ = split_slice(cfg.forget)
    split = base.split(":", 1)[1] if base.startswith("tofu:") else None
    return f"tofu:{FORGET_SPLITS[split]}" if split in FORGET_SPLITS else None


def unlearn(config=None, *, preset: str | None = None, config_file=None, evaluate: Callable | None = None,
            resume: bool = False, **overrides) -> Path:
    """Unlearn the ``forget`` data from ``model`` (the original) with ``method``; teachers: ``original``
    (default: ``model``) and ``augmented``. ``task-arithmetic`` edits the weights without training."""
    cfg = _config("unlearn", config, preset, config_file, overrides)
    method = get_method(cfg.method)
    if method.needs_augmented and not cfg.augmented:
        raise ValueError(f"method {method.name} needs the augmented model (--augmented, from `rklu augment`)")
    for path, what in ((cfg.model, "model"), (cfg.original, "original model"), (cfg.augmented, "augmented model")):
        if path:
            loading.check_model_source(path, what)

    cfg = _fit_context(cfg, cfg.model)
    forget_raw = _load_raw(cfg.forget, cfg, "forget")
    retain_spec = _default_retain(cfg) if method.needs_retain else None
    if method.needs_retain and not retain_spec:
        raise ValueError(f"method {method.name} needs retain data (--retain)")
    retain_raw = _load_raw(retain_spec, cfg, "retain") if retain_spec else None
    if forget_raw[0] == "qa" and retain_raw is not None and retain_raw[0] == "qa":
        check_overlap(forget_raw[1], retain_raw[1])
    if method.needs_idk and forget_raw[0] != "qa":
        raise ValueError(f"method {method.name} needs QA forget data (refusal answers replace the answers)")
    tokenizer = loading.load_tokenizer(cfg.tokenizer or cfg.model)
    fmt = _prompt_format(cfg, tokenizer)

    if not method.trains:
        return _task_arithmetic(cfg, tokenizer, resume)

    forget = _tokenize(forget_raw, tokenizer, fmt, cfg, "forget data")
    retain = _tokenize(retain_raw, tokenizer, fmt, cfg, "retain data") if retain_raw else None
    idk = (tokenize_qa_dataset(idk_dataset(forget_raw[1], idk_answers(), seed=cfg.seed), tokenizer, fmt,
                               cfg.max_length, name="idk data") if method.needs_idk else None)
    dataset = PairedDataset(forget, retain, idk, main_role="forget", seed=cfg.seed)

    model = _load_student(cfg, tokenizer)
    ctx = LossContext(hyperparameters=cfg.method_hyperparameters(), kl_backend=cfg.kl_backend)
    if cfg.lora:
        model = _lora(cfg, model)
    teacher_models = load_teachers(cfg, method, model, ctx)
    check_teachers(cfg, method, model, tokenizer, teacher_models)
    # the losses read every model through its head path: one short forward each proves it gives .logits
    paths = {"original": cfg.original or cfg.model, "augmented": cfg.augmented}
    check_models({f"student ({cfg.model})": model,
                  **{f"{name} ({paths.get(name, name)})": teacher for name, teacher in teacher_models.items()}})
    device = _device()
    # One backend per fused op for the whole run ("auto" decided once, for the largest call), recorded in run.json.
    head = output_head(model)[0]
    kernel_backends = resolve_for_run(cfg.kl_backend, device, problem=dict(
        n=cfg.batch_size * cfg.max_length, h=head.shape[1], v=head.shape[0], augmented=method.needs_augmented,
        dtype="fp32" if head.dtype == torch.float32 and cfg.mixed_precision == "no" else "bf16", reverse=True))
    ctx.kl_backend, ctx.logprob_backend = kernel_backends["kl"], kernel_backends["logprob"]
    mode = _parallel_mode(cfg, evaluate)
    run_dir = check_run_dir(cfg, resume)
    place_teachers(cfg, ctx, teacher_models, mode, device)

    status = start_run_dir(run_dir, cfg, "unlearn", resume, {
        "method": method.name, "forget_rows": len(forget), "retain_rows": None if retain is None else len(retain),
        "kernel_backends": kernel_backends})
    if cfg.teacher_cache != "none":
        status["teacher_cache"] = cache_teachers(cfg, ctx, method, teacher_models, model,
                                                 {"forget": forget, "retain": retain, "idk": idk}, tokenizer, run_dir,
                                                 device)
        teacher_models.clear()
    if mode == "fsdp2":
        distributed.shard_fsdp2(model)
    return _train("unlearn", cfg, model, tokenizer, dataset, method, ctx, evaluate, resume, run_dir, status,
                  merge_lora=cfg.lora, mode=mode)


def _task_arithmetic(cfg: RunConfig, tokenizer, resume: bool) -> Path:
    original = load_full_model(cfg, cfg.original or cfg.model, "original model")
    augmented = load_full_model(cfg, cfg.augmented, "augmented model")
    run_dir = check_run_dir(cfg, resume)
    distributed.init()
    status = start_run_dir(run_dir, cfg, "unlearn", resume, {"method": "task-arithmetic", "scale": cfg.ta_scale})
    task_arithmetic(original, augmented, cfg.ta_scale)
    out = model_dir(run_dir)
    if distributed.is_main():  # no training: the other ranks have nothing to add
        out = loading.save_model(original, tokenizer, out)
    distributed.barrier()
    finish_run(run_dir, status, status="completed", model_dir=str(out), steps=0)
    return run_dir
