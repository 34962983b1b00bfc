"""Teacher cache (beyond the paper): the original and augmented teachers are frozen, so their final
hidden states on the forget (and retain / idk) rows never change during unlearning. Compute them once,
keep them in memory or on disk, and free the teacher models — the loss is unchanged (same hidden states,
same lm_head weights), only the memory of the teachers' transformer blocks is saved.

Rows are cached unpadded by ``example_id`` and re-padded per batch. Batches are right-padded, so a real
token sits at the same position as when the row is computed in any other batch.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..io import atomic_torch_save
from .heads import HeadOutput, Teacher


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def model_bytes(model) -> int:
    return tensor_bytes(list(model.parameters()) + list(model.buffers()))


class CachedTeacher(Teacher):
    """Serves a teacher's hidden states from the cache; holds only the lm_head weight (and bias)."""

    def __init__(self, rows: dict[str, list[torch.Tensor]], weight: torch.Tensor, bias: torch.Tensor | None):
        self.rows, self.weight, self.bias = rows, weight, bias

    def __call__(self, role, batch):
        if role not in self.rows:
            raise KeyError(f"teacher cache has no {role!r} rows (cached: {sorted(self.rows)})")
        if "example_id" not in batch:
            raise KeyError("batches need 'example_id' to use the teacher cache")
        input_ids = batch["input_ids"]
        first = self.rows[role][0]
        hidden = torch.zeros(*input_ids.shape, first.shape[-1], dtype=first.dtype, device=input_ids.device)
        lengths = batch["attention_mask"].sum(dim=1) if "attention_mask" in batch else None
        for row, example in enumerate(batch["example_id"].tolist()):
            cached = self.rows[role][example]
            n = cached.shape[0]
            if lengths is not None and int(lengths[row]) != n:
                raise ValueError(f"teacher cache row {role}[{example}] has {n} tokens, batch has {int(lengths[row])}")
            hidden[row, :n] = cached.to(input_ids.device)
        return HeadOutput(hidden, self.weight, self.bias)

    def nbytes(self) -> int:
        return tensor_bytes([t for rows in self.rows.values() for t in rows]) + tensor_bytes([self.weight, self.bias])


@torch.no_grad()
def compute_rows(teacher: Teacher, role: str, dataset, collate, batch_size: int, device) -> list[torch.Tensor]:
    """Hidden states of every row of ``dataset`` (tokenized rows with example_id = position), unpadded."""
    rows: list[torch.Tensor | None] = [None] * len(dataset)
    for start in range(0, len(dataset), batch_size):
        features = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = {k: v.to(device) for k, v in collate(features).items()}
        out = teacher(role, batch)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        for row, example in enumerate(batch["example_id"].tolist()):
            rows[example] = out.hidden[row, :lengths[row]].detach().cpu().clone()
    if any(r is None for r in rows):
        raise ValueError(f"{role} rows need example_id 0..{len(dataset) - 1}")
    return rows


def build_cached_teacher(teacher: Teacher, head_model, role_datasets: dict, collate, batch_size: int, device,
                         storage: str = "memory", cache_dir=None, name: str = "teacher", write: bool = True) -> CachedTeacher:
    """Cache ``teacher`` on every role's dataset. ``storage="disk"`` writes one file per role under
    ``cache_dir`` and memory-maps it back, so the hidden states live in the page cache, not the heap.
    ``write=False`` with disk storage (ranks other than 0): map the files another process wrote instead
    of computing them."""
    from .heads import output_head

    weight, bias = output_head(head_model)
    weight = weight.detach().clone()
    bias = None if bias is None else bias.detach().clone()
    if storage == "disk" and not write:
        if cache_dir is None:
            raise ValueError("teacher cache on disk needs a cache_dir")
        rows = {}
        for role in role_datasets:
            path = Path(cache_dir) / f"{name}-{role}.pt"
            if not path.is_file():
                raise FileNotFoundError(f"teacher cache file {path} was not written (rank 0 computes it)")
            rows[role] = torch.load(path, mmap=True, weights_only=True)
        return CachedTeacher(rows, weight, bias)
    rows = {role: compute_rows(teacher, role, ds, collate, batch_size, device) for role, ds in role_datasets.items()}
    if storage == "disk":
        if cache_dir is None:
            raise ValueError("teacher cache on disk needs a cache_dir")
        for role, tensors in list(rows.items()):
            path = Path(cache_dir) / f"{name}-{role}.pt"
            atomic_torch_save(path, tensors)
            rows[role] = torch.load(path, mmap=True, weights_only=True)
    elif storage != "memory":
        raise ValueError(f"unknown teacher cache storage {storage!r}; expected 'memory' or 'disk'")
    return CachedTeacher(rows, weight, bias)
