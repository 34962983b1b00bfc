"""The unlearning teachers: loaded as the method declares (original and/or augmented), placed on the
device (or sharded) for the run, or replaced by their cached hidden states on the data roles the method
runs them on (``teacher_cache``: memory or disk), which frees the teacher models."""
from __future__ import annotations

import contextlib
import gc
from pathlib import Path

import torch

from ..data.collate import QACollator
from ..methods import LossContext, Method
from ..models import loading, teacher_checks
from ..models.heads import AdapterTeacher, ModelTeacher
from ..models.teacher_cache import build_cached_teacher, model_bytes
from . import distributed
from .config import RunConfig


def load_full_model(cfg: RunConfig, path: str, what: str):
    """A frozen full model for a teacher / task arithmetic; a LoRA adapter dir is merged onto its base."""
    loading.check_model_source(path, what)
    if loading.is_adapter_dir(path):
        peft = loading.require_peft()
        base = loading.load_model(loading.adapter_base_model(path), dtype=cfg.dtype, flash_attention=cfg.flash_attention)
        model = peft.PeftModel.from_pretrained(base, path).merge_and_unload()
    else:
        model = loading.load_model(path, dtype=cfg.dtype, flash_attention=cfg.flash_attention)
    return loading.freeze(model)


def load_teachers(cfg: RunConfig, method: Method, student, ctx: LossContext) -> dict:
    """The teachers ``method`` needs. With LoRA (``student`` already has its adapter) the original is the
    student's base with adapters off and an adapter-dir augmented model a second adapter on the same base,
    both set on ``ctx`` directly; every other teacher is a frozen full model, returned by name and checked
    by :func:`check_teachers`."""
    teacher_models = {}
    if cfg.lora:
        # one copy of the weights: original = adapters off, augmented = a second adapter on the same base
        if method.needs_original:
            if cfg.original and Path(cfg.original).resolve() != Path(cfg.model).resolve():
                raise ValueError("with lora the original teacher is the base model itself: leave --original unset")
            ctx.original = AdapterTeacher(student, None)
        if method.needs_augmented:
            if loading.is_adapter_dir(cfg.augmented):
                loading.load_adapter(student, cfg.augmented, loading.AUGMENTED_ADAPTER)
                student.set_adapter(loading.STUDENT_ADAPTER)
                ctx.augmented = AdapterTeacher(student, loading.AUGMENTED_ADAPTER)
            else:
                teacher_models["augmented"] = load_full_model(cfg, cfg.augmented, "augmented model")
    else:
        if method.needs_original:
            teacher_models["original"] = load_full_model(cfg, cfg.original or cfg.model, "original model")
        if method.needs_augmented:
            teacher_models["augmented"] = load_full_model(cfg, cfg.augmented, "augmented model")
    return teacher_models


def teacher_paths(cfg: RunConfig, method: Method) -> dict:
    """The folders the teachers come from (their tokenizers must be the student's)."""
    paths = {}
    if method.needs_original and cfg.original and Path(cfg.original).resolve() != Path(cfg.model).resolve():
        paths["original"] = cfg.original
    if method.needs_augmented:
        paths["augmented"] = cfg.augmented
    return paths


def check_teachers(cfg: RunConfig, method: Method, student, tokenizer, teacher_models: dict) -> None:
    """Before the run folder: no NaN/inf weight in the student or a teacher, the student's vocabulary and
    tokenizer in every teacher (``rklu.models.teacher_checks``)."""
    teacher_checks.check_models(student, tokenizer, cfg.model, teacher_models, teacher_paths(cfg, method))


def place_teachers(cfg: RunConfig, ctx: LossContext, teacher_models: dict, mode: str, device) -> None:
    """Put the full-model teachers where the run uses them and set them on ``ctx``."""
    if mode == "fsdp2" and cfg.teacher_cache == "none":
        # teachers sharded like the student (their lm_head replicated): each rank holds 1/world of them
        for teacher in teacher_models.values():
            distributed.shard_fsdp2(teacher, frozen=True)
    elif cfg.teacher_cache == "none":
        for teacher in teacher_models.values():
            teacher.to(device)
    # (with the teacher cache each teacher goes to the GPU only while its hidden states are computed)
    for name, teacher in teacher_models.items():
        setattr(ctx, name, ModelTeacher(teacher))


def cache_roles(method: Method, data: dict) -> dict:
    """teacher -> {data role: dataset} the teacher cache precomputes: the roles the method declares for each
    teacher (every declared role has data: the run loads each role its method reads)."""
    return {teacher: {role: data[role] for role in roles} for teacher, roles in method.teacher_roles.items()}


def cache_teachers(cfg, ctx, method, teacher_models, student, data: dict, tokenizer, run_dir, device) -> dict:
    """Replace each teacher in ``ctx`` by its cached hidden states on ``cache_roles(method, data)`` and free
    the teacher models; returns the memory report recorded in run.json."""
    model_mem = sum(model_bytes(m) for m in teacher_models.values())
    collate = QACollator(tokenizer.pad_token_id)
    was = student.training
    if any(isinstance(getattr(ctx, name), AdapterTeacher) for name in ("original", "augmented")):
        student.to(device)  # LoRA: the student's base is the teacher
    roles = cache_roles(method, data)
    cache_bytes = 0
    for name, role_data in roles.items():
        teacher = getattr(ctx, name)
        if teacher is None or not role_data:
            continue
        head_model = teacher.model
        if name in teacher_models:
            # one teacher on the GPU at a time (a 7B teacher is 13.5 GB in bf16); an FSDP2 student is
            # still on the host here, sharded after the cache is built
            teacher_models[name].to(device)
        # on disk: rank 0 computes and writes, the other ranks map its files; in memory: every rank computes
        with distributed.main_first() if cfg.teacher_cache == "disk" else contextlib.nullcontext():
            cached = build_cached_teacher(teacher, head_model, role_data, collate, cfg.batch_size, device,
                                          storage=cfg.teacher_cache, cache_dir=run_dir / "teacher_cache", name=name,
                                          write=distributed.is_main())
        setattr(ctx, name, cached)
        cache_bytes += cached.nbytes()
        teacher_models.pop(name, None)
        del teacher, head_model  # the last references: the GPU copy is freed before the next teacher
    for leftover in teacher_models.values():  # a teacher no cached role needs stays a live model
        leftover.to(device)
    student.train(was)
    teacher_models.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"storage": cfg.teacher_cache, "teacher_model_bytes_freed": model_mem, "cache_bytes": cache_bytes,
            "bytes_saved": model_mem - (cache_bytes if cfg.teacher_cache == "memory" else 0)}
