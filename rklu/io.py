"""Atomic file writes: a crash mid-write never leaves a truncated file that later reads as valid."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], nbytes: int | None = None) -> Path:
    """Call ``write(tmp_path)`` on a temp file in the target's folder, fsync it, then rename over ``path``.
    A full disk (ENOSPC) leaves the previous file as it was and is re-raised naming ``path`` and the bytes
    needed (``nbytes`` when the caller knows them, else at least what was written when space ran out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise _no_space(path, nbytes, written) from error
        raise
    return path


def _no_space(path: Path, nbytes: int | None, written: int) -> OSError:
    needed = f"{nbytes} bytes needed" if nbytes is not None else f"more than {written} bytes needed"
    free = shutil.disk_usage(path.parent).free
    return OSError(errno.ENOSPC, f"no space left on the device writing {path} ({needed}, {free} free); "
                                 "the previous file is unchanged", str(path))


def atomic_write_text(path, text: str) -> Path:
    data = text.encode("utf-8")

    def write(tmp):
        with open(tmp, "wb") as handle:
            handle.write(data)
    return atomic_write(path, write, nbytes=len(data))


def atomic_write_json(path, obj: Any, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def atomic_torch_save(path, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
