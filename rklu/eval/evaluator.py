"""TOFU evaluation of a model on chosen rows: the sets a caller picks (e.g. a forget split, the retain rows
a small model was trained on, the first rows of TOFU's utility sets), TOFU's per-sample logs for each
(``rklu.eval.tofu.evaluate_sets``) and the registered metrics over them (``rklu.eval.metrics``).

Model utility is the harmonic mean over the utility sets evaluated (``rklu.eval.tofu_metrics``): with
the retain rows alone it is ``hmean(retain prob, ROUGE-L, truth-ratio score)``, with real authors and
world facts too it is TOFU's 9-value mean. Forget quality needs the retain model's forget log
(``retain_forget_log``), which the caller sets once the retain model is evaluated.

Generation batches prompts of similar length (``sort_by_length``): faster, and these logs are compared
with each other, not with TOFU's own logs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

from rklu.eval.metrics import EvalContext, compute_metrics
from rklu.eval.staging import staged_logs
from rklu.eval.tofu import EvalSet, evaluate_sets
from rklu.eval.tofu_logs import FORGET_FILE


class Evaluator:
    """Logs and metrics of one model on ``sets``; ``evaluate`` runs in ``dtype`` (a copy of a model in
    another dtype: the model being trained keeps its weights)."""

    def __init__(self, sets: Sequence[EvalSet], *, max_new_tokens: int | None, batch_size: int = 64,
                 prompt_format: str = "plain", dtype: str = "float32"):
        if not any(s.filename == FORGET_FILE for s in sets):
            raise ValueError(f"the evaluated sets need a forget set ({FORGET_FILE})")
        self.sets = list(sets)
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.prompt_format, self.dtype = prompt_format, dtype
        self.retain_forget_log: Mapping | None = None

    @property
    def files(self) -> tuple:
        return tuple(s.filename for s in self.sets)

    def rows(self, filename: str) -> Sequence[Mapping]:
        return next(s.rows for s in self.sets if s.filename == filename)

    def logs(self, model, tokenizer, out_dir: Path) -> dict:
        from rklu.data.formatting import get_prompt_format

        fmt = get_prompt_format(self.prompt_format, tokenizer)
        with staged_logs(Path(out_dir), replaced=self.files) as staging:  # all sets land together, or none
            return evaluate_sets(model, tokenizer, fmt, self.sets, staging, batch_size=self.batch_size,
                                 max_new_tokens=self.max_new_tokens, sort_by_length=True)

    def metrics(self, logs: Mapping) -> dict:
        retain_logs = None if self.retain_forget_log is None else {FORGET_FILE: self.retain_forget_log}
        return compute_metrics(EvalContext(logs, retain_logs))

    def evaluate(self, model, tokenizer, out_dir: Path) -> dict:
        import copy

        import torch

        dtype = getattr(torch, self.dtype)
        if next(model.parameters()).dtype != dtype:
            model = copy.deepcopy(model).to(dtype)
        return self.metrics(self.logs(model, tokenizer, Path(out_dir)))

    def callback(self, tokenizer, run_dir: Path) -> Callable:
        """An ``evaluate(model, epoch) -> dict`` callback for the training stages (logs in
        ``RUN_DIR/eval/epoch_N``)."""
        def evaluate(model, epoch):
            return self.evaluate(model, tokenizer, Path(run_dir) / "eval" / f"epoch_{epoch}")
        return evaluate
