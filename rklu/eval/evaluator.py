"""TOFU evaluation of a model on chosen rows: the sets a caller picks (e.g. a forget split, the retain rows
a small model was trained on, the first rows of TOFU's utility sets), TOFU's per-sample logs for each
(``rklu.eval.tofu.evaluate_sets``) and the registered metrics over them (``rklu.eval.metrics``).

Model utility is the harmonic mean over the utility sets evaluated (``rklu.eval.tofu_metrics``): with
the retain rows alone it is ``hmean(retain prob, ROUGE-L, truth-ratio score)``, with real authors and
world facts too it is TOFU's 9-value mean. Forget quality needs the retain model's forget log
(``retain_forget_log``), which the caller sets once the retain model is evaluated.

Generation batches prompts of similar length (``sort_by_length``): faster, and these logs are compared
with each other, not with TOFU's own logs.

With ``privacy`` (``PrivacySets``: forget and holdout rows) each evaluation also writes
``eval_privacy.json`` beside the logs (``rklu.eval.privacy``: Min-K%/Min-K%++ membership inference, forget
vs holdout), so the registered privacy metric adds privleak against the retain oracle's log in
``retain_eval_dir``, as ``rklu eval aggregate`` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from rklu.eval.metrics import EvalContext, compute_metrics
from rklu.eval.privacy import PRIVACY_FILE, evaluate_privacy, privacy_rows, write_privacy
from rklu.eval.staging import staged_logs
from rklu.eval.tofu import EvalSet, evaluate_sets
from rklu.eval.tofu_logs import FORGET_FILE


@dataclass(frozen=True)
class PrivacySets:
    """The rows of the membership-inference attack: answers the model saw (forget) and never saw
    (holdout, the same kind of fictitious authors)."""
    forget_split: str
    holdout_split: str
    forget: Sequence[Mapping]
    holdout: Sequence[Mapping]

    @classmethod
    def tofu(cls, forget_split: str, limit: int = 10 ** 12, source: str = "bundled") -> "PrivacySets":
        """TOFU's ``forget_split`` against its holdout set of the same size (open-unlearning's pairing)."""
        forget, holdout, holdout_split = privacy_rows(forget_split, source, limit)
        return cls(forget_split, holdout_split, forget, holdout)


class Evaluator:
    """Logs and metrics of one model on ``sets``; ``evaluate`` runs in ``dtype`` (a copy of a model in
    another dtype: the model being trained keeps its weights)."""

    def __init__(self, sets: Sequence[EvalSet], *, max_new_tokens: int | None, batch_size: int = 64,
                 prompt_format: str = "plain", dtype: str = "float32", privacy: PrivacySets | None = None):
        if not any(s.filename == FORGET_FILE for s in sets):
            raise ValueError(f"the evaluated sets need a forget set ({FORGET_FILE})")
        if privacy is not None and not (privacy.forget and privacy.holdout):
            raise ValueError("privacy evaluation needs non-empty forget and holdout rows")
        self.sets = list(sets)
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.prompt_format, self.dtype = prompt_format, dtype
        self.privacy = privacy
        self.retain_forget_log: Mapping | None = None
        self.retain_eval_dir: Path | None = None  # the retain oracle's logs: privleak's reference AUC

    @property
    def files(self) -> tuple:
        return tuple(s.filename for s in self.sets)

    @property
    def written_files(self) -> tuple:
        """Every file an evaluation writes: the TOFU logs, and the privacy log when privacy is on."""
        return self.files + ((PRIVACY_FILE,) if self.privacy is not None else ())

    def rows(self, filename: str) -> Sequence[Mapping]:
        return next(s.rows for s in self.sets if s.filename == filename)

    def logs(self, model, tokenizer, out_dir: Path) -> dict:
        from rklu.data.formatting import get_prompt_format

        fmt = get_prompt_format(self.prompt_format, tokenizer)
        if self.privacy is not None:  # its token statistics read the head path: refuse a model it misreads first
            from rklu.models.head_check import check_head_path

            check_head_path(model, "evaluated")
        with staged_logs(Path(out_dir), replaced=self.written_files) as staging:  # all sets land together, or none
            logs = evaluate_sets(model, tokenizer, fmt, self.sets, staging, batch_size=self.batch_size,
                                 max_new_tokens=self.max_new_tokens, sort_by_length=True)
            if self.privacy is not None:
                p = self.privacy
                write_privacy(staging, evaluate_privacy(model, tokenizer, fmt, p.forget, p.holdout,
                                                        forget_split=p.forget_split, holdout_split=p.holdout_split,
                                                        batch_size=self.batch_size))
            return logs

    def has_logs(self, out_dir: Path) -> bool:
        """Whether ``out_dir`` holds every log this evaluator writes."""
        return all((Path(out_dir) / name).is_file() for name in self.written_files)

    def metrics(self, logs: Mapping, eval_dir: Path | None = None) -> dict:
        """The registered metrics of ``logs``; ``eval_dir`` (the folder they are in) lets the privacy metric
        read its log there."""
        retain_logs = None if self.retain_forget_log is None else {FORGET_FILE: self.retain_forget_log}
        return compute_metrics(EvalContext(logs, retain_logs, eval_dir=None if eval_dir is None else Path(eval_dir),
                                           retain_eval_dir=self.retain_eval_dir))

    def evaluate(self, model, tokenizer, out_dir: Path) -> dict:
        import copy

        import torch

        dtype = getattr(torch, self.dtype)
        if next(model.parameters()).dtype != dtype:
            model = copy.deepcopy(model).to(dtype)
        return self.metrics(self.logs(model, tokenizer, Path(out_dir)), Path(out_dir))

    def callback(self, tokenizer, run_dir: Path) -> Callable:
        """An ``evaluate(model, epoch) -> dict`` callback for the training stages (logs in
        ``RUN_DIR/eval/epoch_N``)."""
        def evaluate(model, epoch):
            return self.evaluate(model, tokenizer, Path(run_dir) / "eval" / f"epoch_{epoch}")
        return evaluate
