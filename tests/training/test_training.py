"""The shared Trainer loop: config/presets, per-epoch metrics, exact resume, non-finite loss handling."""
import json

import pytest
import torch
from safetensors.torch import load_file

from rklu.training import finetune
from rklu.training.config import list_presets, resolve_config

TINY = dict(preset="tiny-cpu", data="tofu:full[3980:]", tiny_vocab_size=300, tiny_hidden_size=32, tiny_layers=2,
            tiny_heads=2, tiny_intermediate_size=64, max_length=96, batch_size=4, epochs=2, progress=False)


def _weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_presets_exact_numbers():
    assert set(list_presets()) >= {"tofu-llama2-7b", "tofu-phi-1.5", "hp-llama2-7b", "tiny-cpu"}
    llama = resolve_config("unlearn", "tofu-llama2-7b")
    assert (llama.learning_rate, llama.effective_batch_size, llama.weight_decay, llama.alpha, llama.retain_weight,
            llama.epochs, llama.warmup_epochs, llama.lr_schedule) == (1e-5, 32, 0.01, 8.0, 1.0, 10, 1.0, "linear")
    assert resolve_config("finetune", "tofu-llama2-7b").epochs == 5
    assert resolve_config("augment", "tofu-llama2-7b").epochs == 10
    assert resolve_config("unlearn", "tofu-phi-1.5").learning_rate == 2e-5
    hp = resolve_config("unlearn", "hp-llama2-7b")
    assert (hp.alpha, hp.epochs, resolve_config("finetune", "hp-llama2-7b").epochs) == (4.0, 5, 1)
    assert llama.grad_accumulation(world_size=2) == 4 and llama.grad_accumulation(world_size=1) == 8


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 3e-5\nunlearn:\n  alpha: 2\n  epochs: 3\n")
    cfg = resolve_config("unlearn", "tofu-llama2-7b", path, {"epochs": "4"})
    assert (cfg.learning_rate, cfg.alpha, cfg.epochs) == (3e-5, 2.0, 4)
    path.write_text("learnin_rate: 1\n")
    with pytest.raises(ValueError, match="unknown option"):
        resolve_config("unlearn", None, path)
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        resolve_config("unlearn", "nope")
    for bad, message in ((dict(alpha=-1), "alpha"), (dict(retain_weight=-0.5), "lambda")):
        with pytest.raises(ValueError, match=message):
            resolve_config("unlearn", "tiny-cpu", None, dict(model="m", output_dir="o", **bad)).validate("unlearn")


def test_epoch_metrics_and_run_layout(tmp_path):
    seen = []

    def evaluate(model, epoch):
        seen.append((epoch, model.training))
        return {"probe": float(epoch) * 10}

    run = finetune(output_dir=str(tmp_path / "run"), evaluate=evaluate, **TINY)
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and [r["probe"] for r in records] == [10.0, 20.0]
    assert seen == [(1, False), (2, False)]  # evaluated in eval mode
    assert records[1]["train_nll"] < records[0]["train_nll"]
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "completed" and status["steps"] == 10
    assert json.loads((run / "config.json").read_text())["learning_rate"] == 2e-3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-10", "checkpoint-5"]
    assert (run / "model" / "tokenizer.json").is_file()


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    cfg = dict(TINY, epochs=3, lr_schedule="linear", warmup_epochs=1.0, save_every_steps=2)
    full = finetune(output_dir=str(tmp_path / "full"), **cfg)

    class Interrupt(Exception):
        pass

    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 7:
                raise Interrupt()

    import rklu.training.stages as stages

    original = stages.run_training

    def interrupted(*args, **kwargs):
        kwargs["callbacks"] = [StopAt()]
        return original(*args, **kwargs)

    stages.run_training = interrupted
    try:
        with pytest.raises(Interrupt):
            finetune(output_dir=str(tmp_path / "cut"), **cfg)
    finally:
        stages.run_training = original
    cut = tmp_path / "cut"
    assert json.loads((cut / "run.json").read_text())["status"] == "failed"  # a crash; resumable all the same
    assert not (cut / "model").exists()
    resumed = finetune(output_dir=str(cut), resume=True, **cfg)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    # a fresh run from the same config is not trivially identical to an untrained one
    assert (a["lm_head.weight"] - load_file(str(full / "checkpoints" / "checkpoint-2" / "model.safetensors"))["lm_head.weight"]).abs().max() > 1e-4


def test_nonfinite_loss_stops_and_keeps_checkpoint(tmp_path):
    from rklu.training.trainer import NonFiniteLossError

    from rklu.methods import FINETUNE, Method

    def nan_after(ctx, batch):
        loss, metrics = FINETUNE.forget_loss(ctx, batch)
        nan_after.calls += 1
        return (loss * float("nan") if nan_after.calls > 6 else loss), metrics
    nan_after.calls = 0

    import rklu.training.stages as stages

    stages_finetune = stages.FINETUNE
    stages.FINETUNE = Method("finetune", nan_after)
    try:
        with pytest.raises(NonFiniteLossError, match="step 7"):
            finetune(output_dir=str(tmp_path / "nan"), **dict(TINY, epochs=3))
        run = tmp_path / "nan"
        status = json.loads((run / "run.json").read_text())
        assert status["status"] == "failed" and status["failed_step"] == 7
        assert status["last_checkpoint"].endswith("checkpoint-5")
        ckpt = load_file(str(run / "checkpoints" / "checkpoint-5" / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in ckpt.values())
        assert not (run / "model").exists()

        nan_after.calls = 0
        run = finetune(output_dir=str(tmp_path / "skip"), nonfinite="skip", **dict(TINY, epochs=2))
        status = json.loads((run / "run.json").read_text())
        assert status["status"] == "completed" and status["skipped_nonfinite"] == 4
        assert all(torch.isfinite(t).all() for t in _weights(run).values())
    finally:
        stages.FINETUNE = stages_finetune
