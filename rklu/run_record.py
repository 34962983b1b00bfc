"""Who is running a run folder: ``run.json`` records the process (pid, host, the process's start time), so a
run killed with SIGKILL — which leaves ``"status": "running"`` behind, no handler runs — is recognized
as stale by ``--resume`` and ``rklu report`` instead of being taken for a live one."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

STALE = "stale (process gone)"


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            stat = handle.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces: split after its closing parenthesis
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])  # field 22 of /proc/PID/stat
    except (IndexError, ValueError):
        return None


def process_record() -> dict:
    """What ``run.json`` stores about the current process."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "pid_start_ticks": _start_ticks(pid)}


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """True if ``pid`` exists on this machine (and, when known, started at ``start_ticks``)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if start_ticks is not None:
        now = _start_ticks(pid)
        if now is not None and now != start_ticks:
            return False  # the pid was reused by another process
    return True


def read_run_json(run_dir) -> dict | None:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def run_status(record: dict | None) -> str | None:
    """The recorded status, with ``"running"`` checked against the process: ``STALE`` when it is gone,
    ``"running (on HOST, not checked)"`` when it ran on another machine, ``"running"`` when alive."""
    if record is None:
        return None
    status = record.get("status")
    if status != "running":
        return status
    pid, host = record.get("pid"), record.get("host")
    if pid is None:
        return "running (no pid recorded)"
    if host is not None and host != socket.gethostname():
        return f"running (on {host}, not checked)"
    return "running" if process_alive(pid, record.get("pid_start_ticks")) else STALE


def check_resume(run_dir) -> dict | None:
    """Before ``--resume`` takes over ``run_dir``: refuse while the recorded process still runs here;
    otherwise return what the previous run left (its status, with ``STALE`` for a killed one)."""
    record = read_run_json(run_dir)
    status = run_status(record)
    if status == "running":
        raise ValueError(f"{run_dir} is still being written by pid {record['pid']} on {record.get('host')}: "
                         "wait for it or stop it before --resume")
    if record is None:
        return None
    return {"status": status, **{k: record[k] for k in ("pid", "host", "started") if k in record}}
