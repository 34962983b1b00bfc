"""run.json records the process: a run killed with SIGKILL (left at "running") reads as stale in
`--resume` and `rklu report`; `rklu unlearn --method` lists every method and rejects a typo first."""
import json
import signal
import socket
import subprocess
import sys

import pytest

from rklu.cli import main
from rklu.methods import METHOD_NAMES
from rklu import run_record
from rklu.run_record import STALE, check_resume, run_status


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.pid


def _write_run(run_dir, **fields):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"stage": "unlearn", "status": "running", "method": "rklu+kl", **fields}))
    (run_dir / "metrics.json").write_text(json.dumps([{"epoch": 1, "forget_quality": 0.2, "model_utility": 0.5}]))


def test_status_of_a_recorded_process():
    me = run_record.process_record()
    assert me["host"] == socket.gethostname() and me["pid"] > 0
    assert run_status({"status": "running", **me}) == "running"
    assert run_status({"status": "running", "pid": _dead_pid(), "host": me["host"]}) == STALE
    if me["pid_start_ticks"] is not None:  # same pid, other start time: the pid was reused
        assert run_status({"status": "running", **me, "pid_start_ticks": me["pid_start_ticks"] + 1}) == STALE
    assert run_status({"status": "running", "pid": 1, "host": "elsewhere"}) == "running (on elsewhere, not checked)"
    assert run_status({"status": "running"}) == "running (no pid recorded)"
    assert run_status({"status": "completed", "pid": _dead_pid()}) == "completed"
    assert run_status(None) is None


def test_resume_refuses_a_live_run_and_reports_a_dead_one(tmp_path):
    live = tmp_path / "live"
    _write_run(live, **run_record.process_record())
    with pytest.raises(ValueError, match="still being written by pid"):
        check_resume(live)
    dead = tmp_path / "dead"
    pid = _dead_pid()
    _write_run(dead, pid=pid, host=socket.gethostname(), started=1.0)
    assert check_resume(dead) == {"status": STALE, "pid": pid, "host": socket.gethostname(), "started": 1.0}


def test_report_says_stale_for_a_killed_run(tmp_path, capsys):
    dead, done = tmp_path / "rklu+kl_seed1", tmp_path / "rklu+kl_seed2"
    _write_run(dead, pid=_dead_pid(), host=socket.gethostname())
    _write_run(done, status="completed")
    assert main(["report", str(dead), str(done), "--out", str(tmp_path / "report"), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert f"| {dead} | stale (process gone) |" in printed and f"| {done} | completed |" in printed
    runs = json.loads((tmp_path / "report" / "report.json").read_text())["runs"]
    assert [r["status"] for r in runs] == [STALE, "completed"]


def test_unlearn_help_lists_every_method(capsys):
    assert main(["unlearn", "--help"]) == 0
    usage = capsys.readouterr().out
    assert "{" + ",".join(METHOD_NAMES) + "}" in usage


def test_unknown_method_is_the_first_error_and_names_the_valid_ones(tmp_path, capsys):
    # no --model, no --output-dir, a missing config file: the method is still what gets reported
    assert main(["unlearn", "--method", "rkul", "--forget", "/nonexistent.json"]) == 2
    err = capsys.readouterr().err
    assert "argument --method: unknown unlearning method 'rkul'; expected one of: " + ", ".join(METHOD_NAMES) in err
    assert "no model" not in err and "nonexistent" not in err
    assert main(["unlearn", "--method", "RKLU+KL", "--output-dir", str(tmp_path / "x")]) == 2  # case-insensitive
    assert "no model given" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("method: rkul\n")  # the same through a config file (no model, no output dir either)
    assert main(["unlearn", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown unlearning method 'rkul'" in err and "rklu+kl" in err and "no model" not in err


# ------------------------------------------------------------------ Trainer metrics without per-step syncs
TINY = dict(preset="tiny-cpu", data="tofu:full[3980:]", tiny_vocab_size=300, tiny_hidden_size=32, tiny_layers=2,
            tiny_heads=2, tiny_intermediate_size=64, max_length=96, batch_size=2, effective_batch_size=4,
            epochs=2, progress=False)


def test_trainer_logs_the_per_step_means_without_syncing_in_compute_loss(tmp_path, monkeypatch):
    """The method's terms are summed on the device: compute_loss never calls .item()/float()/.tolist() on
    a tensor, and what is logged equals the mean of the per-micro-batch values (the old .item() sums)."""
    import torch

    import rklu.training.stages as stages
    from rklu.methods import FINETUNE, Method
    from rklu.training import finetune
    from rklu.training.trainer import UnlearningTrainer

    recorded = []

    def recording_loss(ctx, batch):
        loss, metrics = FINETUNE.forget_loss(ctx, batch)
        recorded.append({"nll": metrics["nll"].clone(), "extra": torch.tensor(2.0) * len(recorded)})
        return loss, {**metrics, "extra": recorded[-1]["extra"]}

    monkeypatch.setattr(stages, "FINETUNE", Method("finetune", recording_loss))
    syncs = []
    original = UnlearningTrainer.compute_loss

    def guarded(self, *args, **kwargs):
        def refuse(name):
            def call(tensor, *a, **k):
                syncs.append(name)
                raise AssertionError(f"Tensor.{name} called in compute_loss")
            return call

        with monkeypatch.context() as m:
            for name in ("item", "tolist", "__float__"):
                m.setattr(torch.Tensor, name, refuse(name))
            return original(self, *args, **kwargs)

    monkeypatch.setattr(UnlearningTrainer, "compute_loss", guarded)
    run = finetune(output_dir=str(tmp_path / "run"), **TINY)
    assert syncs == []
    # 20 rows, micro-batch 2, 2 micro-batches per step: 5 steps per epoch, one log per epoch
    assert len(recorded) == 20
    values = [{k: float(v) for k, v in r.items()} for r in recorded]
    state = json.loads((run / "checkpoints" / "checkpoint-10" / "trainer_state.json").read_text())
    logs = [entry for entry in state["log_history"] if "nll" in entry]
    assert len(logs) == 2
    for epoch, entry in enumerate(logs):
        window = values[10 * epoch:10 * (epoch + 1)]
        for key in ("nll", "extra"):
            assert entry[key] == pytest.approx(round(sum(v[key] for v in window) / 10, 6), abs=2e-6), key
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for epoch, record in enumerate(records):
        window = values[10 * epoch:10 * (epoch + 1)]
        assert record["train_nll"] == pytest.approx(sum(v["nll"] for v in window) / 10, rel=1e-6)
        assert record["train_extra"] == pytest.approx(sum(v["extra"] for v in window) / 10, rel=1e-6)
