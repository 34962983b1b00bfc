"""Checks on the student and its teachers before training starts: a NaN/inf weight (anywhere, also in a
layer the first batches do not reach) or a teacher whose vocabulary or tokenizer differs from the
student's is an error naming the model and the problem — not a NaN loss hundreds of steps later, nor a
KL between distributions over different tokens.

The same pass gives each model's weight digest (for the teacher cache's fingerprint): per tensor, a
float64 sum and absolute sum. A float64 sum of fp32/bf16/fp16 values is finite exactly when every value
is (their magnitudes stay far below float64's range), so one reduction per tensor does both jobs."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@torch.no_grad()
def weights_digest(model) -> tuple[str, list[str]]:
    """(sha256 over every parameter's and buffer's name, shape, dtype, float64 sum and |sum|;
    names of the tensors holding NaN or inf)."""
    digest, bad = hashlib.sha256(), []
    seen: set[int] = set()
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]:
        if id(tensor) in seen or not tensor.is_floating_point():
            continue
        seen.add(id(tensor))
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # an FSDP2 shard
        sums = torch.stack([local.sum(dtype=torch.float64), local.abs().sum(dtype=torch.float64)]).tolist()
        if not all(map(_finite, sums)):
            bad.append(name)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{sums[0]!r}|{sums[1]!r};".encode())
    return digest.hexdigest(), bad


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def check_finite_weights(model, what: str) -> str:
    """``weights_digest(model)``'s digest; raises naming ``what`` and the tensors holding NaN/inf."""
    digest, bad = weights_digest(model)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"{what} has NaN or inf weights in {shown}: a poisoned checkpoint; "
                         "training with it would give NaN losses")
    return digest


def has_tokenizer(path) -> bool:
    return bool(path) and any(Path(path, name).is_file() for name in TOKENIZER_FILES)


def tokenizer_difference(student, teacher) -> str | None:
    """How two tokenizers differ (size, or the first token whose id differs), or None when the same."""
    a, b = student.get_vocab(), teacher.get_vocab()
    if len(a) != len(b):
        return f"{len(b)} tokens, the student's has {len(a)}"
    for token, index in sorted(a.items(), key=lambda item: item[1]):
        if b.get(token) != index:
            return f"token {token!r} is id {b.get(token)}, the student's id {index}"
    return None


def check_teacher_tokenizer(student_tokenizer, path: str, what: str, student: str) -> None:
    """A teacher folder that carries its own tokenizer must carry the student's."""
    if not has_tokenizer(path):
        return
    from .loading import load_tokenizer

    difference = tokenizer_difference(student_tokenizer, load_tokenizer(path))
    if difference:
        raise ValueError(f"tokenizer mismatch: the {what} ({path}) has a different tokenizer than the student "
                         f"({student}): {difference}; teachers must share the student's tokenizer")


def check_vocab(student_model, teacher_model, what: str, student: str) -> None:
    from .heads import output_head

    student_vocab, teacher_vocab = output_head(student_model)[0].shape[0], output_head(teacher_model)[0].shape[0]
    if teacher_vocab != student_vocab:
        raise ValueError(f"vocab size mismatch: the {what}'s lm_head has {teacher_vocab} rows but the student "
                         f"({student}) has {student_vocab}; teachers must share the student's tokenizer")


def check_models(student_model, tokenizer, student: str, teachers: dict, paths: dict) -> None:
    """Every check above for the student and each teacher (``teachers``: name -> model, ``paths``: name ->
    the folder it came from, for the tokenizer check), before the run folder is touched."""
    check_finite_weights(student_model, f"the model ({student})")
    for name, teacher in teachers.items():
        what = f"{name} model"
        check_vocab(student_model, teacher, what, student)
        check_finite_weights(teacher, f"the {what} ({paths.get(name)})")
    for name, path in paths.items():
        check_teacher_tokenizer(tokenizer, path, f"{name} model", student)
