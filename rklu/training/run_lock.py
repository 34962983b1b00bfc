"""One run per output folder: ``OUTPUT_DIR/.rklu.lock`` holds the pid, host, process start time and the
time the lock was taken. A second run on the folder refuses at start (also with --resume or --overwrite,
which would otherwise write into, or delete, the files of the live run); a lock left by a process that
is gone (SIGKILL, a crashed node of this host) is taken over with a message.

The lock is created with ``O_CREAT | O_EXCL``, so two runs starting at the same moment cannot both get
it. A lock from another host cannot be checked: it is refused, and the message says which file to remove
once that run is known to be over."""
from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..run_record import process_alive, process_record

LOCK_NAME = ".rklu.lock"


class RunLocked(ValueError):
    """The output folder is in use by another live run."""


def lock_path(run_dir) -> Path:
    return Path(run_dir) / LOCK_NAME


def read_lock(run_dir) -> dict | None:
    try:
        record = json.loads(lock_path(run_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _job() -> str | None:
    """The launch this process belongs to (torchrun / accelerate launch set it): every rank of one job
    counts rank 0's lock as its own."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def _is_mine(record: dict) -> bool:
    if record.get("host") != socket.gethostname():
        return False
    return record.get("pid") == os.getpid() or (_job() is not None and record.get("job") == _job())


def _holder(record: dict) -> str:
    taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("time", 0)))
    return f"pid {record.get('pid')} on {record.get('host')} (since {taken})"


def holder_alive(record: dict) -> bool:
    """True unless the locking process is known to be gone (same host, pid absent or reused)."""
    if record.get("host") != socket.gethostname():
        return True
    return process_alive(record.get("pid"), record.get("pid_start_ticks"))


def refuse_if_locked(run_dir) -> None:
    """Raise ``RunLocked`` when another live process holds ``run_dir`` (read only: every rank may call it)."""
    record = read_lock(run_dir)
    if record is None or _is_mine(record) or not holder_alive(record):
        return
    where = "" if record.get("host") == socket.gethostname() else \
        f"; it cannot be checked from this host: remove {lock_path(run_dir)} once that run has ended"
    raise RunLocked(f"output directory {run_dir} is in use by another run: {_holder(record)}{where}. "
                    "Wait for it, or choose another --output-dir")


def acquire(run_dir) -> Path:
    """Take the lock for this process (rank 0), taking over a stale one with a message on stderr.
    Released by :func:`release`, or when the process exits."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**process_record(), "job": _job(), "time": time.time()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = read_lock(run_dir)
            if held is not None and _is_mine(held):
                return path
            if held is not None and holder_alive(held):
                refuse_if_locked(run_dir)
            print(f"rklu: taking over the lock of {run_dir}: "
                  + (f"{_holder(held)} is gone" if held else f"{path} was unreadable"), file=sys.stderr)
            _remove(path)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        atexit.register(release, run_dir)
        return path
    raise RunLocked(f"could not take the lock {path}: another run keeps taking it")


def release(run_dir) -> None:
    """Remove the lock if this process holds it."""
    record = read_lock(run_dir)
    if record is not None and _is_mine(record):
        _remove(lock_path(run_dir))


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
