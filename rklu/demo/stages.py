"""Running the demo's stages with reuse: a finished stage with the same resolved configuration (its
``run.json`` at ``completed``) is not run again, so a cut-off demo continues where it stopped."""
from __future__ import annotations

import json
from pathlib import Path

_VOLATILE = {"output_dir", "overwrite", "progress", "stage", "save_total_limit"}


def finished(run_dir: Path, stage: str, overrides: dict, preset: str = "tiny-cpu") -> bool:
    """True when ``run_dir`` holds a completed run of the same resolved configuration."""
    import dataclasses

    from rklu.training.config import RunConfig, method_hyperparameters, resolve_config

    try:
        status = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        stored = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if status.get("status") != "completed" or not (run_dir / "model").is_dir():
        return False
    wanted = resolve_config(stage, preset, None, {**overrides, "output_dir": str(run_dir)}).to_dict()
    # model paths inside the demo folder are compared relative to it, so a moved folder is still reused
    root = str(run_dir.parent.parent.resolve())
    stored_root = str(Path(stored.get("output_dir", str(run_dir))).resolve().parent.parent)

    def rel(value, base):
        return value.replace(base, "<out>", 1) if isinstance(value, str) and value.startswith(base) else value

    # a field or method hyperparameter added after the run was stored counts as its default
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    defaults.update((name, hp.default) for name, hp in method_hyperparameters().items())
    return all(rel(stored.get(k, defaults.get(k)), stored_root) == rel(v, root)
               for k, v in wanted.items() if k not in _VOLATILE)


def run_stage(fn, stage: str, run_dir: Path, overrides: dict, evaluate=None, progress=True,
              preset: str = "tiny-cpu") -> tuple[Path, bool]:
    """Run a training stage unless a finished identical one is there; (run dir, reused?)."""
    if finished(run_dir, stage, overrides, preset):
        return run_dir, True
    fn(preset=preset, output_dir=str(run_dir), overwrite=True, progress=progress, evaluate=evaluate, **overrides)
    drop_checkpoints(run_dir)
    return run_dir, False


def drop_checkpoints(run_dir: Path) -> None:
    """Remove a finished stage's resume checkpoints: its result is ``model/``, and a checkpoint (weights plus
    AdamW state, ~3x the model: 1.6 GB for SmolLM2-135M) matters only while the stage runs; a grid of
    dozens of runs would otherwise fill the disk."""
    import shutil

    shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)


def load_model_dir(model_dir: Path):
    from rklu.models import loading

    return (loading.load_model(str(model_dir), dtype="float32", flash_attention="no"),
            loading.load_tokenizer(str(model_dir)))


def eval_cached(evaluator, model_dir: Path, out_dir: Path, reuse: bool) -> dict:
    """Evaluate a finished model once; reuse the logs when its stage was reused."""
    from rklu.eval.tofu_logs import load_eval_logs

    if reuse and evaluator.has_logs(out_dir):  # an evaluation without privacy runs again when privacy is on
        try:
            return evaluator.metrics(load_eval_logs(out_dir, required=evaluator.files), out_dir)
        except (FileNotFoundError, ValueError):
            pass
    model, tokenizer = load_model_dir(model_dir)
    return evaluator.evaluate(model, tokenizer, out_dir)


def metrics_complete(run_dir: Path, epochs: int, keys: tuple[str, ...] = ("forget_quality",)) -> bool:
    """Whether ``run_dir/metrics.json`` has every epoch 1..``epochs`` with a value for each of ``keys``."""
    try:
        records = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    got = {r.get("epoch") for r in records if all(r.get(k) is not None for k in keys)}
    return set(range(1, epochs + 1)) <= got
