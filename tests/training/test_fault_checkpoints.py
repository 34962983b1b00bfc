"""Faults around checkpoints (single process, tiny model): a torn newest checkpoint (truncated
safetensors, missing optimizer file) is detected by name and resume falls back to the previous complete
one; a disk that fills up while saving keeps the previous checkpoint and the run's result files, names
the file and the bytes needed, and a later --resume ends where an uninterrupted run does."""
import errno
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import rklu.training.stages as stages
from rklu.training import finetune
from rklu.training.checkpoints import MANIFEST_NAME, CheckpointError, checkpoint_problem

CFG = dict(preset="tiny-cpu", data="tofu:full[3984:]", tiny_vocab_size=300, tiny_hidden_size=32, tiny_layers=2,
           tiny_heads=2, tiny_intermediate_size=64, max_length=96, batch_size=4, progress=False, epochs=2,
           save_every_steps=2, lr_schedule="linear", warmup_epochs=0.5)  # 4 steps per epoch, 8 in all
STOP_AFTER = 5  # checkpoints 2 and 4 are complete when the run stops


class Crash(Exception):
    pass


class StopAfter(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == STOP_AFTER:
            raise Crash(f"stopped after step {STOP_AFTER}")


def _cut_run(out, monkeypatch):
    """A run that crashes after step STOP_AFTER (a process that died mid-epoch)."""
    original = stages.run_training

    def with_crash(*args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", ()), StopAfter()]
        return original(*args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(stages, "run_training", with_crash)
        with pytest.raises(Crash):
            finetune(output_dir=str(out), **CFG)
    return out


def max_relative_difference(run_a, run_b) -> float:
    a, b = (load_file(str(r / "model" / "model.safetensors")) for r in (run_a, run_b))
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp_min(1e-30)) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return finetune(output_dir=str(tmp_path_factory.mktemp("full") / "run"), **CFG)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("tear", ["truncated-safetensors", "missing-optimizer"])
def test_torn_checkpoint_is_named_and_resume_falls_back(tear, uninterrupted, tmp_path, monkeypatch, capfd):
    cut = _cut_run(tmp_path / "cut", monkeypatch)
    newest = cut / "checkpoints" / "checkpoint-4"
    assert (newest / MANIFEST_NAME).is_file() and checkpoint_problem(newest) is None
    torn = newest / ("model.safetensors" if tear == "truncated-safetensors" else "optimizer.pt")
    if tear == "truncated-safetensors":
        _truncate(torn)
    else:
        torn.unlink()
    assert str(torn) in checkpoint_problem(newest)
    capfd.readouterr()
    resumed = finetune(output_dir=str(cut), resume=True, **CFG)
    err = capfd.readouterr().err
    assert f"skipping checkpoint checkpoint-4: {torn}" in err and "continuing from" in err and "checkpoint-2" in err
    difference = max_relative_difference(resumed, uninterrupted)
    print(f"{tear}: resumed from checkpoint-2, max relative weight difference {difference:.2e}")
    assert difference <= 1e-6


def test_resume_stops_clearly_when_no_checkpoint_is_complete(tmp_path, monkeypatch):
    cut = _cut_run(tmp_path / "cut", monkeypatch)
    _truncate(cut / "checkpoints" / "checkpoint-4" / "model.safetensors")
    (cut / "checkpoints" / "checkpoint-2" / MANIFEST_NAME).unlink()  # as if its save had been cut short
    with pytest.raises(CheckpointError, match="no complete checkpoint") as info:
        finetune(output_dir=str(cut), resume=True, **CFG)
    assert "checkpoint-4/model.safetensors" in str(info.value) and "checkpoint-2" in str(info.value)
    assert not (cut / "model").exists()


def _enospc_on(path_part):
    """torch.save that fails like a full disk for files whose path contains ``path_part``."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if path_part in str(f):
            with open(f, "wb") as handle:
                handle.write(b"\0" * 1000)  # a partly written file, as a real full disk leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)
    return save


def test_full_disk_while_saving_keeps_the_previous_checkpoint_and_resumes(uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", _enospc_on(os.path.join("checkpoint-6", "optimizer.pt")))
        with pytest.raises(CheckpointError) as info:
            finetune(output_dir=str(out), **CFG)
    message = str(info.value)
    print(message)
    assert "no space left" in message and str(out / "checkpoints" / "checkpoint-6" / "optimizer.pt") in message
    needed = int(message.split("needs about ")[1].split()[0])
    previous = out / "checkpoints" / "checkpoint-4"
    assert needed == sum(p.stat().st_size for p in previous.rglob("*") if p.is_file())
    assert "are free" in message and "--resume" in message
    # the previous checkpoint and the result files are intact; the incomplete folder is gone
    assert checkpoint_problem(previous) is None and not (out / "checkpoints" / "checkpoint-6").exists()
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "failed" and status["last_checkpoint"] == str(previous)
    assert [r["epoch"] for r in json.loads((out / "metrics.json").read_text())] == [1]
    # space is back: resume ends where the uninterrupted run did
    resumed = finetune(output_dir=str(out), resume=True, **CFG)
    assert max_relative_difference(resumed, uninterrupted) <= 1e-6


def test_full_disk_while_writing_a_result_file_keeps_the_old_one(tmp_path, monkeypatch):
    from rklu import io

    path = tmp_path / "results.json"
    io.atomic_write_json(path, {"complete": True})
    before = path.read_bytes()
    real_open = open

    def full_disk_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and ".results.json." in str(file):
            def write(_data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
            handle.write = write
        return handle
    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(OSError) as info:
        io.atomic_write_json(path, {"rows": list(range(1000))})
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert str(path) in str(info.value) and f"{len(json.dumps({'rows': list(range(1000))}, indent=2)) + 1} bytes" in str(info.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
