"""A run's folder: checked before any work, created with the resolved config and ``run.json`` (status,
process record), and finished with the outcome. Rank 0 writes; every rank checks and waits."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import yaml

from ..io import atomic_write_json, atomic_write_text
from . import distributed, run_lock
from .config import RunConfig
from ..run_record import STALE, check_resume, process_record

MODEL_SUBDIR = "model"


def model_dir(run_dir) -> Path:
    """Where a run's final model (or adapter) is saved."""
    return Path(run_dir) / MODEL_SUBDIR


class DryRunComplete(Exception):
    """``dry_run``: every check that precedes the run folder passed; nothing was written."""

    def __init__(self, run_dir: Path, resume: bool):
        self.run_dir = run_dir
        super().__init__(f"dry run: config, data, tokenizer, models and output folder {run_dir} checked"
                         f"{' (resume)' if resume else ''}; nothing written")


def check_run_dir(cfg: RunConfig, resume: bool) -> Path:
    """The run folder, after checking that it may be used: empty or absent, unless resuming (then it must
    exist) or overwriting."""
    run_dir = Path(cfg.output_dir)
    run_lock.refuse_if_locked(run_dir)
    if run_dir.exists() and any(p.name != run_lock.LOCK_NAME for p in run_dir.iterdir()):
        if resume:
            return run_dir
        if not cfg.overwrite:
            raise ValueError(f"output directory {run_dir} is not empty: pass resume (--resume) to continue "
                             "it or overwrite (--overwrite) to replace it")
    elif resume:
        raise FileNotFoundError(f"nothing to resume in {run_dir}")
    if cfg.dry_run:  # the last check before the folder is written
        raise DryRunComplete(run_dir, resume)
    return run_dir


def start_run_dir(run_dir: Path, cfg: RunConfig, stage: str, resume: bool, extra: dict) -> dict:
    """Create the run folder and write the resolved config and run.json — rank 0 only; every rank has
    checked the folder (``check_run_dir``) before rank 0 touches it, and waits until it exists."""
    previous = check_resume(run_dir) if resume else None
    if previous is not None and previous.get("status") == STALE and distributed.is_main():
        print(f"rklu {stage}: {run_dir}/run.json said 'running' but pid {previous.get('pid')} is gone: "
              f"{STALE}; resuming from the last complete checkpoint", file=sys.stderr)
    # pid + host: a SIGKILLed run leaves "running" behind; readers check the process (run_record)
    status = {"stage": stage, "status": "running", "started": time.time(), **process_record(), **extra}
    if previous is not None:
        status["resumed_from"] = previous
    if distributed.is_distributed():
        status.update(world_size=distributed.world_size(), parallel=distributed.resolve_mode(cfg.parallel))
    distributed.barrier()
    if distributed.is_main():
        run_lock.acquire(run_dir)  # before anything is deleted or written: a run starting now is refused
        if cfg.overwrite and not resume:
            _clear_run_dir(run_dir)
        resolved = {"stage": stage, **cfg.to_dict()}
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        atomic_write_json(run_dir / "config.json", resolved)
        atomic_write_json(run_dir / "run.json", status)
    distributed.barrier()
    return status


def _clear_run_dir(run_dir: Path) -> None:
    """--overwrite: everything but this run's lock."""
    for entry in run_dir.iterdir():
        if entry.name != run_lock.LOCK_NAME:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def finish_run(run_dir: Path, record: dict, **fields) -> None:
    """Record the outcome (status, error, steps, ...) and the run's duration in run.json; release the lock."""
    record.update(fields, finished=time.time())
    record["time_s"] = round(record["finished"] - record["started"], 2)
    if distributed.is_main():
        atomic_write_json(run_dir / "run.json", record)
        run_lock.release(run_dir)
