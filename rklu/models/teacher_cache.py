"""Teacher cache (beyond the paper): the original and augmented teachers are frozen, so their final
hidden states on the forget (and retain / idk) rows never change during unlearning. Compute them once,
keep them in memory or on disk, and free the teacher models — the loss is unchanged (same hidden states,
same lm_head weights), only the memory of the teachers' transformer blocks is saved.

Rows are cached unpadded by ``example_id`` and re-padded per batch. Batches are right-padded, so a real
token sits at the same position as when the row is computed in any other batch.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from ..io import atomic_torch_save, atomic_write_json
from .heads import HeadOutput, Teacher
from .logit_transforms import LogitTransform


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def model_bytes(model) -> int:
    return tensor_bytes(list(model.parameters()) + list(model.buffers()))


class CachedTeacher(Teacher):
    """Serves a teacher's hidden states from the cache; holds only the lm_head weight (and bias)."""

    def __init__(self, rows: dict[str, list[torch.Tensor]], weight: torch.Tensor, bias: torch.Tensor | None,
                 transform: LogitTransform = LogitTransform()):
        self.rows, self.weight, self.bias, self.transform = rows, weight, bias, transform

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
        return HeadOutput(hidden, self.weight, self.bias, self.transform.scale, self.transform.softcap)

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


def data_digest(dataset) -> str:
    """sha256 of every row's token ids, in order (the rows a cache entry holds hidden states for)."""
    digest = hashlib.sha256()
    for i in range(len(dataset)):
        ids = dataset[i]["input_ids"]
        digest.update((",".join(map(str, ids.tolist() if torch.is_tensor(ids) else list(ids))) + ";").encode())
    return digest.hexdigest()


def fingerprint(name: str, role: str, weights: str, dataset, device) -> str:
    """What a cache entry was computed from: the teacher's weights (digest: values, dtypes, shapes), the
    rows' token ids, the device type it ran on and the library versions; any change means recompute."""
    import transformers

    parts = {"teacher": name, "role": role, "weights": weights, "data": data_digest(dataset),
             "device": torch.device(device).type, "torch": torch.__version__, "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def check_finite_rows(rows: list[torch.Tensor], where: str) -> None:
    for index, row in enumerate(rows):
        if not bool(torch.isfinite(row).all()):
            raise ValueError(f"{where}: row {index} holds NaN or inf hidden states; the teacher is poisoned "
                             "(check its weights) or the cache file is corrupt")


def _entry_paths(cache_dir, name: str, role: str) -> tuple[Path, Path]:
    base = Path(cache_dir) / f"{name}-{role}"
    return base.with_suffix(".pt"), base.with_suffix(".json")


def _complete_entry(cache_dir, name: str, role: str, expected: str) -> tuple[Path | None, str | None]:
    """(the entry's .pt file when complete and built from ``expected``, else why not)."""
    data, meta = _entry_paths(cache_dir, name, role)
    if not meta.is_file():
        return None, None if not data.exists() else f"{data} has no {meta.name} (its build was cut short)"
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
    except ValueError:
        return None, f"{meta} is unreadable"
    if record.get("fingerprint") != expected:
        return None, f"{data} was built for other data, weights or dtype (fingerprint differs)"
    if not data.is_file() or data.stat().st_size != record.get("bytes"):
        return None, f"{data} is missing or not the size written"
    return data, None


def _write_entry(cache_dir, name: str, role: str, rows: list[torch.Tensor], expected: str) -> Path:
    """The hidden states, then the record that marks them complete (written last: an interrupted build
    leaves no record, and the next run rebuilds the entry)."""
    data, meta = _entry_paths(cache_dir, name, role)
    if meta.exists():
        meta.unlink()
    atomic_torch_save(data, rows)
    atomic_write_json(meta, {"fingerprint": expected, "rows": len(rows), "bytes": data.stat().st_size})
    return data


def build_cached_teacher(teacher: Teacher, head_model, role_datasets: dict, collate, batch_size: int, device,
                         storage: str = "memory", cache_dir=None, name: str = "teacher", write: bool = True,
                         report=None) -> CachedTeacher:
    """Cache ``teacher`` on every role's dataset. ``storage="disk"`` keeps one file per role under
    ``cache_dir`` (memory-mapped back, so the hidden states live in the page cache, not the heap) with a
    record of its fingerprint: a complete entry built from the same weights and rows is reused (a
    resumed run does not recompute it), anything else is rebuilt. ``write=False`` with disk storage
    (ranks other than 0): map the entries another process wrote, checked against this rank's own
    fingerprint. Every row is checked for NaN/inf. ``report``: where reuse/rebuild messages go."""
    from .heads import head_transform, output_head
    from .teacher_checks import weights_digest

    if storage not in ("memory", "disk"):
        raise ValueError(f"unknown teacher cache storage {storage!r}; expected 'memory' or 'disk'")
    if storage == "disk" and cache_dir is None:
        raise ValueError("teacher cache on disk needs a cache_dir")
    report = report or (lambda message: print(message, file=sys.stderr))
    weight, bias = output_head(head_model)
    transform = head_transform(head_model)
    weight = weight.detach().clone()
    bias = None if bias is None else bias.detach().clone()
    weights = weights_digest(head_model)[0] if storage == "disk" else None
    rows = {}
    for role, dataset in role_datasets.items():
        where = f"the {name} teacher's cached {role} hidden states"
        if storage == "memory":
            rows[role] = compute_rows(teacher, role, dataset, collate, batch_size, device)
            check_finite_rows(rows[role], where)
            continue
        expected = fingerprint(name, role, weights, dataset, device)
        path, why_not = _complete_entry(cache_dir, name, role, expected)
        if path is None and not write:
            raise FileNotFoundError(f"teacher cache entry {_entry_paths(cache_dir, name, role)[0]} is not complete "
                                    f"for this run ({why_not or 'not written'}; rank 0 computes it)")
        if path is None:
            if why_not:
                report(f"teacher cache: rebuilding: {why_not}")
            path = _write_entry(cache_dir, name, role,
                                compute_rows(teacher, role, dataset, collate, batch_size, device), expected)
        elif write:
            report(f"teacher cache: reusing {path} (complete, same fingerprint)")
        rows[role] = torch.load(path, mmap=True, weights_only=True)
        check_finite_rows(rows[role], f"{where} ({path})")
    return CachedTeacher(rows, weight, bias, transform)
