"""Issue 8, pipeline side: bad input that test_cli_pipeline/test_data_pipeline don't cover, and faults —
SIGTERM/SIGKILL mid-epoch then --resume, half-written checkpoints, NaN weights never saved, atomic writes,
NaN hidden states surfacing from the kernel, out-of-memory advice, student/teacher vocab mismatch."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch
from safetensors.torch import load_file

from rklu.cli import main
from rklu.training import finetune

TINY = dict(preset="tiny-cpu", data="tofu:full[3980:]", tiny_vocab_size=300, tiny_hidden_size=32, tiny_layers=2,
            tiny_heads=2, tiny_intermediate_size=64, max_length=96, batch_size=4, progress=False)
TINY_ARGS = ["--preset", "tiny-cpu", "--max-length", "96", "--no-progress", "--batch-size", "4"]


@pytest.fixture(scope="module")
def orig(tmp_path_factory):
    return finetune(output_dir=str(tmp_path_factory.mktemp("orig") / "run"), epochs=1, **TINY) / "model"


def _unlearn(orig, out, *extra, forget="tofu:full[3980:3984]", method="ga"):
    return ["unlearn", *TINY_ARGS, "--model", str(orig), "--forget", forget, "--method", method,
            "--epochs", "1", "--output-dir", str(out), *extra]


def _weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


# ----------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("content, message", [
    ('{"question": "q", "answer": "a"}\n{"question": "q2", "answer": \n', "line 2: not valid JSON"),
    ('[{"question": "q", "answer": "a"}, {"answer": "b"}]', "row 1: missing or empty 'question'"),
    ('[{"question": "q", "answer": "a"},', "not valid JSON"),
])
def test_cli_bad_forget_file_exit_2_nothing_written(orig, tmp_path, capsys, content, message):
    path = tmp_path / ("forget.jsonl" if content.startswith("{") else "forget.json")
    path.write_text(content)
    out = tmp_path / "out"
    assert main(_unlearn(orig, out, forget=str(path))) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err
    assert not out.exists()


def test_cli_unknown_split_and_stage_input(orig, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_unlearn(orig, out, forget="tofu:forget99")) == 2
    assert "unknown TOFU config 'forget99'" in capsys.readouterr().err and not out.exists()
    assert main(["finetune", *TINY_ARGS, "--data", "tofu:full[5:5]", "--output-dir", str(out)]) == 2
    assert "empty" in capsys.readouterr().err and not out.exists()


def test_forget_retain_overlap_warns_but_runs(orig, tmp_path):
    out = tmp_path / "overlap"
    with pytest.warns(UserWarning, match="4 of 4 forget questions also appear in the retain data"):
        code = main(_unlearn(orig, out, "--retain", "tofu:full[3980:3990]", method="ga+rt"))
    assert code == 0 and json.loads((out / "run.json").read_text())["status"] == "completed"


def test_max_length_beyond_model_context_truncates_with_warning(orig, tmp_path):
    context = json.loads((orig / "config.json").read_text())["max_position_embeddings"]
    out = tmp_path / "long"
    with pytest.warns(UserWarning, match=f"max_length={context * 4} exceeds the model's context of {context}"):
        code = main(_unlearn(orig, out, "--max-length", str(context * 4)))
    assert code == 0
    assert json.loads((out / "config.json").read_text())["max_length"] == context


def test_teacher_with_other_vocab_fails_before_the_run_folder(orig, tmp_path, capsys):
    other = finetune(output_dir=str(tmp_path / "other"), epochs=1, **dict(TINY, tiny_vocab_size=280)) / "model"
    out = tmp_path / "out"
    assert main(_unlearn(orig, out, "--augmented", str(other), method="rklu")) == 2
    err = capsys.readouterr().err
    assert "vocab size mismatch" in err and "augmented" in err and not out.exists()


def test_nan_hidden_states_in_training_name_the_tensor_and_step(orig, tmp_path, capsys, monkeypatch):
    from rklu.models import heads

    real = heads.ModelTeacher.__call__

    def poisoned(self, role, batch):
        out = real(self, role, batch)
        out.hidden[0, 0, 0] = float("nan")
        return out
    monkeypatch.setattr(heads.ModelTeacher, "__call__", poisoned)
    out = tmp_path / "nan"
    assert main(_unlearn(orig, out, "--kl-backend", "torch", method="rklu", forget="tofu:full[3980:3984]")
                + ["--augmented", str(orig)]) == 2
    err = capsys.readouterr().err
    assert "optimizer step 1" in err and "original_hidden contains NaN or inf" in err
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "failed" and "original_hidden" in status["error"]
    assert not (out / "model").exists()


# ------------------------------------------------------------------------------------------------- faults

DRIVER = textwrap.dedent("""
    import sys, time
    import rklu.training.stages as stages
    from rklu.methods import FINETUNE, Method
    from rklu.cli import main

    def slow(ctx, batch):  # slow steps so the parent can signal mid-epoch
        time.sleep(0.4)
        return FINETUNE.forget_loss(ctx, batch)
    stages.FINETUNE = Method("finetune", slow)
    sys.exit(main(sys.argv[1:]))
""")
KILL_CFG = dict(TINY, data="tofu:full[3968:]", epochs=2, save_every_steps=2, lr_schedule="linear", warmup_epochs=0.5)


def _finetune_argv(out):
    return ["finetune", *TINY_ARGS, "--data", KILL_CFG["data"], "--tiny-vocab-size", "300", "--tiny-hidden-size",
            "32", "--tiny-layers", "2", "--tiny-heads", "2", "--tiny-intermediate-size", "64", "--epochs", "2",
            "--save-every-steps", "2", "--lr-schedule", "linear", "--warmup-epochs", "0.5", "--output-dir", str(out)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return finetune(output_dir=str(tmp_path_factory.mktemp("full") / "run"), **KILL_CFG)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_kill_mid_epoch_then_resume_equals_uninterrupted(uninterrupted, tmp_path, sig, capfd):
    out = tmp_path / "cut"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), *_finetune_argv(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    deadline = time.time() + 120
    # 8 steps per epoch; signal once checkpoint-2 is complete, i.e. during step 3 (mid-epoch 1)
    while not (out / "checkpoints" / "checkpoint-2" / "rklu_complete.json").is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    status = json.loads((out / "run.json").read_text())
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err
        assert "SIGTERM received" in err and "--resume" in err
        assert status["status"] == "interrupted" and "SIGTERM" in status["error"]
        assert status["last_checkpoint"].endswith(f"checkpoint-{status['error'].split('step ')[1].split()[0]}")
    else:
        assert proc.returncode == -signal.SIGKILL
        assert status["status"] == "running"  # nothing could be recorded: resume relies on checkpoints only
        from rklu.run_record import STALE, run_status

        assert status["pid"] == proc.pid and run_status(status) == STALE  # ... but readers see it is dead
        # a save cut short by the kill: no completion marker -> must be skipped
        half = out / "checkpoints" / "checkpoint-99"
        half.mkdir()
        (half / "model.safetensors").write_bytes(b"\x00" * 10)
    assert not (out / "model").exists()
    resumed = finetune(output_dir=str(out), resume=True, **KILL_CFG)
    a, b = _weights(uninterrupted), _weights(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    full_metrics = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    cut_metrics = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in cut_metrics] == [1, 2]
    for want, got in zip(full_metrics, cut_metrics):
        assert want.keys() == got.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    final = json.loads((resumed / "run.json").read_text())
    assert final["status"] == "completed"
    if sig == signal.SIGKILL:
        assert final["resumed_from"]["status"] == "stale (process gone)" and final["resumed_from"]["pid"] == proc.pid
        assert "stale (process gone)" in capfd.readouterr().err


def test_last_checkpoint_skips_half_written(tmp_path):
    from rklu.training.checkpoints import write_manifest
    from rklu.training.trainer import last_checkpoint

    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
            (folder / name).write_text("{}" if name.endswith(".json") else "x")
        (folder / "model.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{}      ")  # an empty safetensors file
        if complete:
            write_manifest(folder)
    (tmp_path / "checkpoint-junk").mkdir()
    assert last_checkpoint(tmp_path).endswith("checkpoint-4")
    assert last_checkpoint(tmp_path / "missing") is None


def test_nonfinite_loss_never_overwrites_the_good_checkpoint(tmp_path, monkeypatch):
    import rklu.training.stages as stages
    from rklu.methods import FINETUNE, Method
    from rklu.training.trainer import NonFiniteLossError

    calls = []

    def nan_at_step_3(ctx, batch):
        loss, metrics = FINETUNE.forget_loss(ctx, batch)
        calls.append(1)
        return (loss * float("nan") if len(calls) >= 3 else loss), metrics
    monkeypatch.setattr(stages, "FINETUNE", Method("finetune", nan_at_step_3))
    run = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="step 3"):
        finetune(output_dir=str(run), **dict(KILL_CFG, save_every_steps=1, epochs=1))
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-1", "checkpoint-2"]  # nothing saved at or after the NaN step
    for name in ckpts:
        for folder_file in (run / "checkpoints" / name).glob("*.safetensors"):
            assert all(torch.isfinite(t).all() for t in load_file(str(folder_file)).values())
        optimizer = torch.load(run / "checkpoints" / name / "optimizer.pt", weights_only=False)
        for state in optimizer["state"].values():
            assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v))


def test_atomic_writes_keep_the_previous_file_on_a_crash(tmp_path, monkeypatch):
    from rklu import io

    path = tmp_path / "run.json"
    io.atomic_write_json(path, {"status": "running", "step": 1})

    class Crash(Exception):
        pass

    def crash_mid_write(tmp):
        with open(tmp, "w") as handle:
            handle.write('{"status": "comp')  # a truncated document
        raise Crash()
    with pytest.raises(Crash):
        io.atomic_write(path, crash_mid_write)
    assert json.loads(path.read_text()) == {"status": "running", "step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left behind

    def crash_save(obj, f):
        with open(f, "wb") as handle:
            handle.write(b"PK\x03")
        raise Crash()
    monkeypatch.setattr(torch, "save", crash_save)
    with pytest.raises(Crash):
        io.atomic_torch_save(tmp_path / "cache.pt", {"x": 1})
    assert not (tmp_path / "cache.pt").exists() and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_atomic_write_survives_sigkill_mid_write(tmp_path):
    """A process killed while writing a large JSON leaves the old file (never a truncated one)."""
    path = tmp_path / "metrics.json"
    script = textwrap.dedent(f"""
        import sys
        from rklu import io
        io.atomic_write_json({str(path)!r}, {{"old": True}})
        print("ready", flush=True)
        while True:
            io.atomic_write_json({str(path)!r}, {{"rows": list(range(300000))}})
            io.atomic_write_json({str(path)!r}, {{"old": True}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    data = json.loads(path.read_text())  # always a complete document
    assert data == {"old": True} or len(data["rows"]) == 300000


def test_out_of_memory_suggests_the_remedies(tmp_path, monkeypatch):
    import rklu.training.stages as stages
    from rklu.methods import Method

    def oom(ctx, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")
    monkeypatch.setattr(stages, "FINETUNE", Method("finetune", oom))
    with pytest.raises(torch.OutOfMemoryError) as info:
        finetune(output_dir=str(tmp_path / "oom"), **dict(TINY, epochs=1))
    message = str(info.value)
    for hint in ("kl_backend", "teacher_cache", "chunk", "batch_size", "Tried to allocate 3.00 GiB"):
        assert hint in message
    assert json.loads((tmp_path / "oom" / "run.json").read_text())["status"] == "failed"
