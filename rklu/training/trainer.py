"""The one training loop every stage and method shares: a transformers ``Trainer`` whose
``compute_loss`` calls the method's loss on a paired batch. Trainer supplies gradient accumulation,
AdamW, the linear warmup/decay schedule, bf16/multi-GPU via accelerate, progress bars, checkpoints and
exact resume (optimizer, scheduler, RNG and data-order state are all in each checkpoint)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..io import atomic_write_json, atomic_write_text
from ..methods import LossContext, Method


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss; the checkpoints written before it are intact."""

    def __init__(self, step: int, metrics: dict):
        self.step = step
        super().__init__(f"non-finite loss at optimizer step {step} ({metrics}); stopped before updating "
                         "the weights — the last checkpoint is intact (lower the learning rate, or use "
                         "nonfinite: skip)")


class TrainingInterrupted(RuntimeError):
    """SIGTERM during training: a checkpoint was saved at the step boundary; ``--resume`` continues."""

    def __init__(self, step: int, signal_name: str, checkpoint: str | None):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"{signal_name} received: stopped after optimizer step {step} and saved {checkpoint}; "
                         "continue with --resume")


OOM_ADVICE = ("out of GPU memory during training; try: kl_backend auto/triton (the fused KL never builds "
              "[tokens x vocab] logits), teacher_cache memory or disk (frees the teacher models), a smaller "
              "kernel chunk (fewer tokens per KL chunk), or a smaller batch_size with gradient accumulation "
              "(effective_batch_size unchanged), gradient_checkpointing, LoRA")


def _scalar(value) -> float:
    return float(value.detach().float().item()) if torch.is_tensor(value) else float(value)


EPOCH_SUMS_NAME = "rklu_epoch_sums.json"


class UnlearningTrainer(Trainer):
    """``Trainer`` with ``compute_loss`` = ``method.loss(ctx, batch)``; the batch is a dict of padded
    sub-batches by role (forget/retain/idk, or train). Teachers live in the loss context, not in the
    model, so checkpoints hold the student only."""

    def __init__(self, *args, method: Method, loss_context: LossContext, nonfinite: str = "stop", **kwargs):
        super().__init__(*args, **kwargs)
        self.method, self.loss_context, self.nonfinite = method, loss_context, nonfinite
        # the method's loss is a per-micro-batch mean; let Trainer divide by the accumulation steps
        self.loss_is_scaled_for_ga = False
        self.skipped_nonfinite = 0
        self._sums: dict[str, float] = {}
        self._count = 0
        self.epoch_sums: dict[str, float] = {}
        self.epoch_count = 0

    def compute_loss_context_manager(self):
        """bf16 autocast around the whole loss (student, teachers, fused KL): accelerate only wraps the
        model's forward(), which the hidden-state path (``final_hidden_states``) does not call."""
        stack = super().compute_loss_context_manager()
        if self.args.bf16:
            stack.enter_context(torch.autocast(device_type=self.args.device.type, dtype=torch.bfloat16))
        return stack

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.loss_context.model = model
        try:
            loss, metrics = self.method.loss(self.loss_context, inputs)
        except torch.OutOfMemoryError as error:
            raise torch.OutOfMemoryError(f"{OOM_ADVICE}. Original error: {error}") from error
        except ValueError as error:  # e.g. the kernel's "original_hidden contains NaN or inf values"
            raise ValueError(f"optimizer step {self.state.global_step + 1}, method {self.method.name}: {error}") from error
        if not torch.isfinite(loss.detach()):
            values = {k: round(_scalar(v), 4) for k, v in metrics.items()}
            if self.nonfinite == "stop":
                raise NonFiniteLossError(self.state.global_step + 1, values)
            # skip: a zero loss with no gradient path; the micro-batch contributes nothing
            self.skipped_nonfinite += 1
            return torch.zeros((), device=loss.device, requires_grad=True)
        for key, value in {"loss": loss, **metrics}.items():
            v = _scalar(value)
            self._sums[key] = self._sums.get(key, 0.0) + v
            self.epoch_sums[key] = self.epoch_sums.get(key, 0.0) + v
        self._count += 1
        self.epoch_count += 1
        return (loss, {}) if return_outputs else loss

    def training_step(self, *args, **kwargs):
        try:
            return super().training_step(*args, **kwargs)
        except torch.OutOfMemoryError as error:
            if str(error).startswith(OOM_ADVICE):
                raise
            raise torch.OutOfMemoryError(f"{OOM_ADVICE}. Original error: {error}") from error

    def _save_optimizer_and_scheduler(self, output_dir):
        super()._save_optimizer_and_scheduler(output_dir)
        # the running epoch means, so a run resumed mid-epoch reports the same epoch metrics
        atomic_write_json(Path(output_dir) / EPOCH_SUMS_NAME, {"sums": self.epoch_sums, "count": self.epoch_count})

    def load_epoch_sums(self, checkpoint) -> None:
        path = Path(checkpoint) / EPOCH_SUMS_NAME
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            self.epoch_sums, self.epoch_count = dict(saved["sums"]), int(saved["count"])

    def log(self, logs: dict, *args, **kwargs):
        # add the method's own terms (forget/retain losses), averaged since the last log
        if self._count:
            for key, total in self._sums.items():
                if key != "loss":
                    logs[key] = round(total / self._count, 6)
            self._sums, self._count = {}, 0
        if self.skipped_nonfinite:
            logs["skipped_nonfinite"] = self.skipped_nonfinite
        super().log(logs, *args, **kwargs)

    def take_epoch_means(self) -> dict:
        means = {f"train_{k}": total / self.epoch_count for k, total in self.epoch_sums.items()} if self.epoch_count else {}
        self.epoch_sums, self.epoch_count = {}, 0
        return means


class EpochMetricsCallback(TrainerCallback):
    """After each epoch: the epoch's mean training terms plus ``evaluate(model, epoch)`` (if given) as one
    record in ``metrics.jsonl`` (and ``metrics.json``), rewritten atomically. A resumed run that repeats an
    epoch replaces that epoch's record instead of duplicating it."""

    def __init__(self, run_dir, evaluate: Callable | None = None):
        self.run_dir, self.evaluate, self.trainer = Path(run_dir), evaluate, None

    def records(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = int(round(state.epoch))
        record = {"epoch": epoch, "step": state.global_step}
        if self.trainer is not None:
            record.update(self.trainer.take_epoch_means())
            record["learning_rate"] = self.trainer.lr_scheduler.get_last_lr()[0] if self.trainer.lr_scheduler else None
        if self.evaluate is not None and model is not None:
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    record.update(self.evaluate(model, epoch) or {})
            finally:
                model.train(was_training)
        records = [r for r in self.records() if r.get("epoch") != epoch] + [record]
        records.sort(key=lambda r: r["epoch"])
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r, default=_plain) + "\n" for r in records))
        atomic_write_json(self.run_dir / "metrics.json", records)
        return control


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class SaveAtEpochEnd(TrainerCallback):
    """With step checkpoints (``save_every_steps``) Trainer would skip the epoch-end ones; add them back."""

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_save = True
        return control


class GracefulStop(TrainerCallback):
    """SIGTERM -> finish the current optimizer step, save a checkpoint, raise TrainingInterrupted."""

    def __init__(self):
        self.signal_name = None

    def handle(self, signum, frame):
        import signal

        self.signal_name = signal.Signals(signum).name

    def on_step_end(self, args, state, control, **kwargs):
        if self.signal_name:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.signal_name:
            raise TrainingInterrupted(state.global_step, self.signal_name,
                                      str(Path(args.output_dir) / f"checkpoint-{state.global_step}"))
        return control


def training_arguments(cfg, checkpoint_dir, steps_per_epoch: int, bf16: bool) -> TrainingArguments:
    """TrainingArguments from a RunConfig. Warmup = ``warmup_epochs`` x steps per epoch (the paper: one
    epoch), then linear decay to 0 over the remaining steps."""
    total_steps = steps_per_epoch * cfg.epochs
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
    step_saves = cfg.save_every_steps > 0
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accumulation(_world_size()),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_schedule,
        warmup_steps=warmup,
        max_grad_norm=cfg.max_grad_norm,
        optim="adamw_torch",
        bf16=bf16,
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="steps" if step_saves else "epoch",
        save_steps=cfg.save_every_steps if step_saves else 500,
        save_total_limit=cfg.save_total_limit,
        logging_strategy="steps",
        logging_steps=max(1, min(50, steps_per_epoch)),
        eval_strategy="no",
        report_to="none",
        remove_unused_columns=False,   # batches are nested dicts by role
        disable_tqdm=not cfg.progress,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )


def _world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def steps_per_epoch(n_rows: int, cfg) -> int:
    per_step = cfg.batch_size * _world_size()
    return max(1, math.ceil(math.ceil(n_rows / per_step) / cfg.grad_accumulation(_world_size())))


def last_checkpoint(checkpoint_dir) -> str | None:
    """The newest *complete* checkpoint: Trainer writes ``trainer_state.json`` last, so a folder without it
    (a save cut short by a crash or SIGKILL) is skipped and an older complete one is used."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    complete = [p for p in checkpoint_dir.glob("checkpoint-*")
                if p.is_dir() and p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return str(max(complete, key=lambda p: int(p.name.split("-")[-1]))) if complete else None


def run_training(cfg, model, dataset, collator, method: Method, loss_context: LossContext, run_dir,
                 evaluate: Callable | None = None, resume: bool = False, callbacks=(), on_trainer=None) -> UnlearningTrainer:
    """Train ``model`` in place; checkpoints go to ``run_dir/checkpoints/checkpoint-<step>``."""
    run_dir = Path(run_dir)
    bf16 = (next(model.parameters()).dtype == torch.bfloat16 and torch.cuda.is_available()) \
        or getattr(cfg, "mixed_precision", "no") == "bf16"  # bf16 autocast, also on CPUs with bf16 matmuls
    args = training_arguments(cfg, run_dir / "checkpoints", steps_per_epoch(len(dataset), cfg), bf16)
    metrics_cb = EpochMetricsCallback(run_dir, evaluate)
    extra = [metrics_cb, *callbacks]
    if cfg.save_every_steps > 0:
        extra.append(SaveAtEpochEnd())
    trainer = UnlearningTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                                method=method, loss_context=loss_context, nonfinite=cfg.nonfinite,
                                callbacks=extra)
    metrics_cb.trainer = trainer
    if not cfg.progress:
        # Without tqdm, transformers prints every log dict to stdout; per-epoch metrics are in metrics.jsonl.
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    if on_trainer is not None:
        on_trainer(trainer)
    checkpoint = last_checkpoint(run_dir / "checkpoints") if resume else None
    if checkpoint:
        trainer.load_epoch_sums(checkpoint)
    import signal
    import threading

    stop = GracefulStop()
    trainer.add_callback(stop)
    handled = (signal.SIGTERM,) if threading.current_thread() is threading.main_thread() else ()
    previous = {sig: signal.signal(sig, stop.handle) for sig in handled}
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return trainer
