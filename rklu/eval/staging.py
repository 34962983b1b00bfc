"""An evaluation's log files land in their folder together, or not at all.

Each log is written as its set finishes; written straight into the output folder, a Ctrl-C (or a crash)
after two of TOFU's four sets would leave two new logs beside two of an earlier evaluation (or none),
which a later ``aggregate`` reads as one complete evaluation. So the logs go to ``.incomplete-eval/``
inside the folder first (kept after an interruption, for inspection; no reader looks there) and move
into place only when every set is done: the previous logs are removed first, so whatever is left after
an interruption during the move is an incomplete set, which ``aggregate`` refuses, never a mix."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

STAGING_NAME = ".incomplete-eval"


@contextlib.contextmanager
def staged_logs(out_dir, replaced: tuple[str, ...]):
    """Yield the staging folder to write logs into; on success move them into ``out_dir``, after removing
    the files named in ``replaced`` (the logs of an earlier evaluation and what was derived from them)."""
    out_dir = Path(out_dir)
    staging = out_dir / STAGING_NAME
    if staging.exists():
        shutil.rmtree(staging)  # an interrupted evaluation's leftovers
    staging.mkdir(parents=True)
    yield staging
    for name in replaced:
        (out_dir / name).unlink(missing_ok=True)
    for path in sorted(staging.iterdir()):
        os.replace(path, out_dir / path.name)
    staging.rmdir()
