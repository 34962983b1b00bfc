"""Which Trainer checkpoints can be resumed from.

A checkpoint folder is *complete* once ``rklu_complete.json`` is in it: rank 0 writes that file after a
barrier that every rank reaches only when its own files (weights or shards, optimizer state, RNG state)
are on disk, and it lists every file of the folder with its size. Resume takes the newest complete
checkpoint whose files are all still there at those sizes, and says which file rules out a newer one
(a save cut short by a kill or a full disk, a truncated ``safetensors``, a deleted optimizer file).

Why a manifest rather than ``trainer_state.json``: Trainer writes that file without a rename (a kill
mid-write leaves it torn) and resumes silently with a fresh optimizer when ``optimizer.pt`` is missing —
the resumed run would then differ from an uninterrupted one without any message.
"""
from __future__ import annotations

import errno
import json
import shutil
import struct
import sys
import time
from pathlib import Path

from ..io import atomic_write_json

MANIFEST_NAME = "rklu_complete.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                "pytorch_model_fsdp.bin", "pytorch_model.bin")
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
REQUIRED = ("trainer_state.json", "scheduler.pt")


class CheckpointError(ValueError):
    """No usable checkpoint to resume from, or a checkpoint could not be written."""


def step_of(folder: Path) -> int | None:
    suffix = folder.name.rsplit("-", 1)[-1]
    return int(suffix) if folder.name.startswith("checkpoint-") and suffix.isdigit() else None


def checkpoint_folders(checkpoint_dir) -> list[Path]:
    """``checkpoint-<step>`` folders, newest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    folders = [p for p in checkpoint_dir.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(folders, key=step_of, reverse=True)


def _missing_parts(names: set[str], world_size: int) -> list[str]:
    missing = [n for n in REQUIRED if n not in names]
    if not names & set(WEIGHT_FILES) and not any(n.startswith("pytorch_model_fsdp") for n in names):
        missing.append("model weights (" + " / ".join(WEIGHT_FILES[:3]) + ")")
    if not names & set(OPTIMIZER_FILES) and not any(n.startswith("optimizer") for n in names):
        missing.append("optimizer state (optimizer.pt)")
    rng = {f"rng_state_{r}.pth" for r in range(world_size)} if world_size > 1 else {"rng_state.pth"}
    missing += sorted(rng - names)
    return missing


def write_manifest(folder, world_size: int = 1) -> Path:
    """Mark ``folder`` complete (rank 0, after every rank has written its files): list each file with its
    size. Refuses when a part of a resumable checkpoint is absent, so a folder Trainer saved without an
    optimizer is never marked complete."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST_NAME}
    missing = _missing_parts({Path(n).parts[0] for n in files}, world_size)
    if missing:
        raise CheckpointError(f"checkpoint {folder} lacks {', '.join(missing)}: not marked complete")
    return atomic_write_json(folder / MANIFEST_NAME, {"step": step_of(folder), "world_size": world_size,
                                                      "written": time.time(), "files": files})


def _safetensors_problem(path: Path) -> str | None:
    """A truncated or overwritten safetensors file: its JSON header must parse and the data it describes
    must fit in the file (cheap: reads the header only)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                return f"{path} is torn (header says {length} bytes, the file has {size})"
            header = json.loads(handle.read(length))
    except (struct.error, ValueError, UnicodeDecodeError):
        return f"{path} is not a readable safetensors file"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end > size:
        return f"{path} is truncated ({size} bytes, its header describes {8 + length + end})"
    return None


def checkpoint_problem(folder) -> str | None:
    """Why ``folder`` cannot be resumed from (naming the file), or None when it is complete and intact."""
    folder = Path(folder)
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return f"{folder} has no {MANIFEST_NAME} (its save was cut short)"
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
        files = dict(record["files"])
    except (ValueError, KeyError, TypeError):
        return f"{manifest} is not readable"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} is {path.stat().st_size} bytes, {size} were written"
        if path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
            if problem:
                return problem
    return None


def last_complete_checkpoint(checkpoint_dir, report=None) -> str | None:
    """The newest complete, intact checkpoint. Each newer one that is ruled out is passed to
    ``report(message)`` (if given) with the file that rules it out."""
    for folder in checkpoint_folders(checkpoint_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        if report is not None:
            report(f"skipping checkpoint {folder.name}: {problem}")
    return None


def resume_checkpoint(checkpoint_dir) -> str | None:
    """The checkpoint ``--resume`` continues from, telling on stderr which newer ones were skipped and why.
    None when no checkpoint was ever started (the run restarts from step 0); stops with the reasons when
    checkpoints exist but none is complete."""
    skipped: list[str] = []
    found = last_complete_checkpoint(checkpoint_dir, report=skipped.append)
    for message in skipped:
        print(f"resume: {message}", file=sys.stderr)
    if found is None and skipped:
        raise CheckpointError(f"no complete checkpoint in {checkpoint_dir} to resume from ({'; '.join(skipped)}); "
                              "start over with --overwrite")
    if found is not None and skipped:
        print(f"resume: continuing from {found}", file=sys.stderr)
    return found


def folder_bytes(folder) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def no_space_error(error: OSError, folder, needed: int) -> CheckpointError:
    """ENOSPC while saving ``folder``: name the file, the bytes a checkpoint needs and the free bytes."""
    target = Path(getattr(error, "filename", None) or folder)
    probe = target if target.exists() else Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    return CheckpointError(
        f"no space left on the device while writing {target} (checkpoint {Path(folder).name}): a checkpoint "
        f"needs about {needed} bytes, {free} are free on that filesystem. The incomplete folder was removed and "
        "the previous complete checkpoint is intact: free space, then rerun with --resume")


def is_no_space(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno == errno.ENOSPC
