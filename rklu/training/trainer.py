"""The one training loop every stage and method shares: a transformers ``Trainer`` whose
``compute_loss`` calls the method's loss on a paired batch. Trainer supplies gradient accumulation,
AdamW, the linear warmup/decay schedule, bf16/multi-GPU via accelerate, progress bars, checkpoints and
exact resume (optimizer, scheduler, RNG and data-order state are all in each checkpoint)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Callable

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..io import atomic_write_json, atomic_write_text
from ..methods import LossContext, Method
from ..models.heads import managed_call
from . import checkpoints, distributed


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


class RankLost(RuntimeError):
    """Another process of a multi-process job died (a killed rank, a lost node): its collective failed here."""

    def __init__(self, step: int, checkpoint: str | None, error: BaseException):
        self.step, self.checkpoint = step, checkpoint
        where = f"the last complete checkpoint is {checkpoint}" if checkpoint else "no checkpoint is complete yet"
        super().__init__(f"another rank of this job stopped after optimizer step {step} (a killed process or "
                         f"a lost node); {where}: relaunch with --resume. Collective error: {error}")


OOM_ADVICE = ("out of GPU memory during training; try: kl_backend auto/triton (the fused KL never builds "
              "[tokens x vocab] logits), teacher_cache memory or disk (frees the teacher models), a smaller "
              "kernel chunk (fewer tokens per KL chunk), or a smaller batch_size with gradient accumulation "
              "(effective_batch_size unchanged), gradient_checkpointing, LoRA")


def _scalar(value) -> float:
    return float(value.detach().float().item()) if torch.is_tensor(value) else float(value)


def _accumulate(sums: dict, key: str, value) -> None:
    """``sums[key] += value`` kept on the device: no host sync per micro-batch (``.item()`` waits for the
    GPU); the sums are read once, when logging or at the end of the epoch."""
    value = value.detach().float() if torch.is_tensor(value) else float(value)
    sums[key] = sums[key] + value if key in sums else value


def _host(sums: dict) -> dict:
    """The sums as Python floats: one transfer for all tensors on a device."""
    keys = [k for k, v in sums.items() if torch.is_tensor(v)]
    out = {k: float(v) for k, v in sums.items() if not torch.is_tensor(v)}
    if keys:
        device = sums[keys[0]].device
        values = torch.stack([sums[k].reshape(()).to(device) for k in keys]).cpu().tolist()
        out.update(zip(keys, values))
    return out


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
        # running sums of the method's terms: device tensors until logged (see _accumulate)
        self._sums: dict = {}
        self._count = 0
        self.epoch_sums: dict = {}
        self.epoch_count = 0

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if self.args.fsdp_plugin_args is not None and not self.is_fsdp_enabled:
            # accelerate runs FSDP only on accelerators: on CPU (gloo) it would wrap the sharded model in DDP.
            # Put it in FSDP mode, so CPU runs take the same path as GPU ones (no DDP wrap, full-state-dict
            # checkpoints of model and optimizer, DTensor-aware gradient clipping, FSDP2 no-sync).
            from accelerate import PartialState
            from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

            state = self.accelerator.state
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            # AcceleratorState re-copies PartialState's fields each time it is constructed: set both
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            state.distributed_type = DistributedType.FSDP
            self.is_fsdp_enabled = True

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
            # under FSDP2 the whole loss is one managed forward of the root: the fused kernels see the
            # gathered lm_head weight; DDP and single-process runs: a plain call
            loss, metrics = managed_call(model, self.method.loss, self.loss_context, inputs)
        except torch.OutOfMemoryError as error:
            raise torch.OutOfMemoryError(f"{OOM_ADVICE}. Original error: {error}") from error
        except ValueError as error:  # e.g. the kernel's "original_hidden contains NaN or inf values"
            raise ValueError(f"optimizer step {self.state.global_step + 1}, method {self.method.name}: {error}") from error
        # one rank's NaN decides for all: a rank that stops or skips alone would leave the others waiting
        # in the gradient reduction
        if distributed.any_rank(not bool(torch.isfinite(loss.detach()))):
            values = {k: round(_scalar(v), 4) for k, v in metrics.items()}
            if self.nonfinite == "stop":
                raise NonFiniteLossError(self.state.global_step + 1, values)
            # skip (single process only, see stages._parallel_mode): a zero loss with no gradient path; the
            # micro-batch contributes nothing
            self.skipped_nonfinite += 1
            return torch.zeros((), device=loss.device, requires_grad=True)
        # The finiteness test above is this method's one host read per micro-batch (it must stop before the
        # optimizer step); the metrics are only summed on the device here.
        for key, value in {"loss": loss, **metrics}.items():
            _accumulate(self._sums, key, value)
            _accumulate(self.epoch_sums, key, value)
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
        # the running epoch means, so a run resumed mid-epoch reports the same epoch metrics; summed over
        # the ranks (a collective: every rank is here) and written once, by rank 0
        sums, count = distributed.all_reduce_sums(_host(self.epoch_sums), self.epoch_count)
        if distributed.is_main():
            atomic_write_json(Path(output_dir) / EPOCH_SUMS_NAME, {"sums": sums, "count": count})

    def _save(self, output_dir=None, state_dict=None):
        if state_dict is not None and distributed.is_fsdp2(self.model):
            state_dict = distributed.drop_tied_copies(self.model, state_dict)
        super()._save(output_dir, state_dict=state_dict)

    def _save_checkpoint(self, model, trial):
        """Trainer's save, then the completion marker (``checkpoints.write_manifest``) once every rank has
        written its files; older checkpoints are rotated out only after that, so the previous complete one
        survives a save that fails. A full disk removes the incomplete folder and says what it needed."""
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        except OSError as error:
            if checkpoints.is_no_space(error):
                raise self._no_space(error, folder) from error
            raise
        finally:
            self.args.save_total_limit = limit
        distributed.barrier()  # every rank's shards, optimizer and RNG state are on disk
        if distributed.is_main():
            checkpoints.write_manifest(folder, distributed.world_size())
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(output_dir=str(folder.parent), save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        distributed.barrier()

    def _no_space(self, error: OSError, folder: Path) -> checkpoints.CheckpointError:
        previous = checkpoints.last_complete_checkpoint(folder.parent)
        # bytes needed: the previous checkpoint's size, else the weights plus AdamW's two moments
        needed = checkpoints.folder_bytes(previous) if previous else \
            3 * sum(p.numel() * p.element_size() for p in self.model.parameters())
        if distributed.is_main():
            shutil.rmtree(folder, ignore_errors=True)
        return checkpoints.no_space_error(error, folder, needed)

    def load_epoch_sums(self, checkpoint) -> None:
        # the saved sums are over all ranks: rank 0 takes them, the others start from zero, so the
        # all-reduce at the epoch end counts them once
        path = Path(checkpoint) / EPOCH_SUMS_NAME
        if path.is_file() and distributed.is_main():
            saved = json.loads(path.read_text(encoding="utf-8"))
            self.epoch_sums, self.epoch_count = dict(saved["sums"]), int(saved["count"])

    def log(self, logs: dict, *args, **kwargs):
        # add the method's own terms (forget/retain losses), averaged since the last log
        if self._count:
            for key, total in _host(self._sums).items():
                if key != "loss":
                    logs[key] = round(total / self._count, 6)
            self._sums, self._count = {}, 0
        if self.skipped_nonfinite:
            logs["skipped_nonfinite"] = self.skipped_nonfinite
        super().log(logs, *args, **kwargs)

    def take_epoch_means(self) -> dict:
        """The epoch's mean training terms over every micro-batch of every rank (collective)."""
        sums, count = distributed.all_reduce_sums(_host(self.epoch_sums), self.epoch_count)
        means = {f"train_{k}": total / count for k, total in sums.items()} if count else {}
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
        if not distributed.is_main():
            # rank 0 evaluates (DDP: its unwrapped replica, no collectives) and writes; wait for it
            distributed.barrier()
            return control
        try:
            self._evaluate_and_write(record, model)
        finally:
            distributed.barrier()
        return control

    def _evaluate_and_write(self, record, model):
        epoch = record["epoch"]
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
        # torchrun/accelerate forward the signal to every rank, not at the same step: agree on the step
        if distributed.any_rank(self.signal_name is not None):
            self.signal_name = self.signal_name or "SIGTERM"
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.signal_name:
            raise TrainingInterrupted(state.global_step, self.signal_name,
                                      str(Path(args.output_dir) / f"checkpoint-{state.global_step}"))
        return control


def training_arguments(cfg, checkpoint_dir, steps_per_epoch: int, bf16: bool, parallel: str = "none") -> TrainingArguments:
    """TrainingArguments from a RunConfig. Warmup = ``warmup_epochs`` x steps per epoch (the paper: one
    epoch), then linear decay to 0 over the remaining steps. ``parallel="fsdp2"``: accelerate in FSDP2
    mode (the model arrives already sharded; checkpoints hold full state dicts written by rank 0)."""
    fsdp = {}
    if parallel == "fsdp2":
        # NO_WRAP: the layers are already units (distributed.shard_fsdp2), accelerate must not look for them
        fsdp = dict(fsdp=True, fsdp_config={"fsdp_version": 2, "reshard_after_forward": True, "auto_wrap_policy": "NO_WRAP",
                                            "state_dict_type": "FULL_STATE_DICT"})
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
        **fsdp,
    )


def _world_size() -> int:
    return distributed.world_size()


def steps_per_epoch(n_rows: int, cfg) -> int:
    per_step = cfg.batch_size * _world_size()
    return max(1, math.ceil(math.ceil(n_rows / per_step) / cfg.grad_accumulation(_world_size())))


def last_checkpoint(checkpoint_dir, report=None) -> str | None:
    """The newest complete, intact checkpoint (see ``checkpoints``): one whose save was cut short, or
    whose files were truncated or removed since, is reported (naming the file) and an older one used."""
    return checkpoints.last_complete_checkpoint(checkpoint_dir, report=report)


def run_training(cfg, model, dataset, collator, method: Method, loss_context: LossContext, run_dir,
                 evaluate: Callable | None = None, resume: bool = False, callbacks=(), on_trainer=None,
                 parallel: str = "none", tokenizer=None) -> UnlearningTrainer:
    """Train ``model`` in place; checkpoints go to ``run_dir/checkpoints/checkpoint-<step>``.
    ``parallel``: "none", "ddp" or "fsdp2" (``model`` then already sharded, see ``distributed``).
    ``tokenizer``: saved into each checkpoint, so a checkpoint is a model folder ``rklu eval`` can load."""
    run_dir = Path(run_dir)
    bf16 = (next(model.parameters()).dtype == torch.bfloat16 and torch.cuda.is_available()) \
        or getattr(cfg, "mixed_precision", "no") == "bf16"  # bf16 autocast, also on CPUs with bf16 matmuls
    args = training_arguments(cfg, run_dir / "checkpoints", steps_per_epoch(len(dataset), cfg), bf16, parallel)
    metrics_cb = EpochMetricsCallback(run_dir, evaluate)
    extra = [metrics_cb, *callbacks]
    if cfg.save_every_steps > 0:
        extra.append(SaveAtEpochEnd())
    trainer = UnlearningTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                                method=method, loss_context=loss_context, nonfinite=cfg.nonfinite,
                                callbacks=extra, processing_class=tokenizer)
    metrics_cb.trainer = trainer
    if not cfg.progress:
        # Without tqdm, transformers prints every log dict to stdout; per-epoch metrics are in metrics.jsonl.
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    if on_trainer is not None:
        on_trainer(trainer)
    checkpoint = checkpoints.resume_checkpoint(run_dir / "checkpoints") if resume else None
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
    except RuntimeError as error:
        if distributed.is_distributed() and distributed.is_peer_failure(error):
            raise RankLost(trainer.state.global_step, last_checkpoint(run_dir / "checkpoints"), error) from error
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return trainer
