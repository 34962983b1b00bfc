"""A rank lost mid-run (2 gloo ranks under torchrun, DDP and FSDP2): rank 1 is SIGKILLed while checkpoint
STOP is being saved, after rank 0 has written its weights and optimizer state. The job ends with an error
(run.json says where to resume from), the half-written checkpoint is never marked complete, and a
``--resume`` launch continues from the last complete checkpoint to the weights of an uninterrupted run."""
import json
import os
import subprocess
import sys

import pytest
from test_distributed import HERE, _accelerate_env, _args, _weights, max_relative_difference, models  # noqa: F401

from rklu.training.checkpoints import MANIFEST_NAME, checkpoint_problem

STOP = 2  # of 4 optimizer steps: checkpoint-2 is cut, the resume starts mid-run from checkpoint-1


def _launch(tmp_path, runs, name, env_extra):
    log_dir = tmp_path / f"log-{name}"
    log_dir.mkdir()
    spec = tmp_path / f"spec-{name}.json"
    spec.write_text(json.dumps({"log_dir": str(log_dir), "runs": runs}))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **env_extra)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(HERE / "distributed_worker.py"), str(spec)],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_rank_killed_mid_save_then_resume_equals_uninterrupted(parallel, models, tmp_path):  # noqa: F811
    extra = ["--save-every-steps", "1", "--parallel", "auto" if parallel == "fsdp2" else "ddp"]
    if parallel == "ddp":
        extra += ["--teacher-cache", "disk"]  # the resume reuses rank 0's complete cache entries
    env = _accelerate_env(HERE.parent.parent / "configs" / "accelerate" / "2gpu-fsdp2-full-7b.yaml") \
        if parallel == "fsdp2" else {}
    full, cut = tmp_path / "full", tmp_path / "cut"
    killed = _launch(tmp_path, [
        {"argv": _args(models, full, "rklu+kl", *extra)},
        {"argv": _args(models, cut, "rklu+kl", *extra), "sigkill": {"rank": 1, "step": STOP}},
    ], "killed", env)
    log = killed.stdout[-3000:] + killed.stderr[-5000:]
    assert killed.returncode != 0, log
    assert "Signals.SIGKILL" in killed.stderr or "SIGKILL" in killed.stderr, log
    status = json.loads((cut / "run.json").read_text())
    print(f"{parallel}: run.json after the kill: {status.get('status')}: {str(status.get('error'))[:300]}")
    half = cut / "checkpoints" / f"checkpoint-{STOP}"
    assert (half / ("optimizer.pt" if parallel == "ddp" else "optimizer.bin")).is_file()  # rank 0 got that far
    assert not (half / MANIFEST_NAME).exists() and "save was cut short" in checkpoint_problem(half)
    if status["status"] != "running":  # rank 0 saw the failure (else torchrun killed it: a stale run)
        assert status["status"] == "failed" and status["last_checkpoint"].endswith("checkpoint-1")
        assert "another rank of this job stopped" in status["error"] and "relaunch with --resume" in status["error"]
        assert status["error"].split(": ", 1)[0] == "RankLost"

    resumed = _launch(tmp_path, [{"argv": _args(models, cut, "rklu+kl", "--resume", *extra)}], "resume", env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    assert f"skipping checkpoint checkpoint-{STOP}" in resumed.stderr and "checkpoint-1" in resumed.stderr
    if parallel == "ddp":
        assert "teacher cache: reusing" in resumed.stderr
    final = json.loads((cut / "run.json").read_text())
    assert final["status"] == "completed" and final["resumed_from"]["status"] in ("failed", "stale (process gone)")
    difference = max_relative_difference(_weights(cut), _weights(full))
    print(f"{parallel}: resumed after a lost rank vs uninterrupted: max relative weight difference {difference:.2e}")
    assert difference <= 1e-6
    for folder in (cut / "checkpoints").iterdir():
        assert checkpoint_problem(folder) is None, folder
