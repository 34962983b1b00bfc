"""One rank of a multi-process test (tests/training/test_distributed.py), launched by
``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/training/distributed_worker.py SPEC.json``.

SPEC: {"log_dir": DIR, "runs": [{"argv": [...rklu CLI args...], "stop_at": k or null}, ...]}. The runs go
one after the other in the same process group (one launch, to pay the process start-up once).
``stop_at``: every rank raises after optimizer step k (before that step's checkpoint), like a crash.
``sigkill``: {"rank": r, "step": k}: rank r kills itself with SIGKILL while saving checkpoint k, after the
other rank has written that checkpoint's weights and optimizer state (a node lost mid-save).
Every file write through ``rklu.io.atomic_write`` is logged per rank to ``log_dir/writes-rank<R>.txt``,
so the test can check that only rank 0 writes results; each run's exit code goes to
``log_dir/exit-rank<R>.txt``."""
import json
import os
import signal
import sys

import torch


def main(spec_path: str) -> int:
    torch.set_num_threads(1)
    spec = json.loads(open(spec_path, encoding="utf-8").read())
    rank = int(os.environ["RANK"])
    log_dir = spec["log_dir"]

    import rklu.io
    import rklu.training.stages as stages
    from rklu.cli import main as rklu_main
    from transformers import TrainerCallback

    original_write = rklu.io.atomic_write

    def logged_write(path, write, *args, **kwargs):
        with open(os.path.join(log_dir, f"writes-rank{rank}.txt"), "a", encoding="utf-8") as log:
            log.write(f"{path}\n")
        return original_write(path, write, *args, **kwargs)

    rklu.io.atomic_write = logged_write

    class Crash(Exception):
        pass

    class StopAt(TrainerCallback):
        def __init__(self, step):
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == self.step:
                raise Crash(f"stopped after step {self.step}")

    from rklu.training.trainer import UnlearningTrainer

    original_run_training = stages.run_training
    original_save_rng = UnlearningTrainer._save_rng_state
    codes = []
    for run in spec["runs"]:
        kill = run.get("sigkill")
        if kill and kill["rank"] == rank:
            def save_rng(self, output_dir, _step=kill["step"]):
                if self.state.global_step == _step:
                    os.kill(os.getpid(), signal.SIGKILL)
                return original_save_rng(self, output_dir)
            UnlearningTrainer._save_rng_state = save_rng
        def run_training(*args, _stop=run.get("stop_at"), **kwargs):
            if _stop:
                kwargs["callbacks"] = [*kwargs.get("callbacks", ()), StopAt(_stop)]
            return original_run_training(*args, **kwargs)

        stages.run_training = run_training
        try:
            codes.append(rklu_main(run["argv"]))
        except Crash:
            codes.append("crashed")
        finally:
            stages.run_training = original_run_training
    with open(os.path.join(log_dir, f"exit-rank{rank}.txt"), "w", encoding="utf-8") as out:
        out.write(json.dumps(codes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
