"""Ctrl-C during a TOFU evaluation: the interrupted run's logs stay in the staging folder, which no reader
looks at; the folder keeps the earlier evaluation's complete set (never a mix an aggregate would read as
one evaluation); a finished rerun replaces the set and the aggregate derived from the old one."""
import json

import pytest

from rklu.eval import report, tofu
from rklu.eval.staging import STAGING_NAME

SMALL = dict(batch_size=32, max_new_tokens=2, max_samples=3, progress=False)


def _contents(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _interrupt_at_call(monkeypatch, module, name, call):
    real, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        result = real(*args, **kwargs)
        return {**result, "evaluation": 2} if isinstance(result, dict) else result
    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.parametrize("where", ["third-set", "privacy"])
def test_ctrl_c_during_evaluation_leaves_no_partial_logs_in_place(tiny, tmp_path, monkeypatch, where):
    model, tok = tiny
    out = tmp_path / "eval"
    tofu.evaluate_tofu(model, tok, "plain", "forget01", out, privacy=False, **SMALL)
    tofu.write_aggregate(out, out)
    before = _contents(out)
    assert set(tofu.EVAL_FILES) <= set(before) and "aggregate.json" in before

    with monkeypatch.context() as patch:
        if where == "third-set":
            _interrupt_at_call(patch, tofu, "evaluate_set", 3)
        else:
            from rklu.eval import privacy

            _interrupt_at_call(patch, tofu, "evaluate_set", 99)  # every set finishes (marked as evaluation 2)
            _interrupt_at_call(patch, privacy, "evaluate_privacy", 1)
        with pytest.raises(KeyboardInterrupt):
            tofu.evaluate_tofu(model, tok, "plain", "forget01", out, privacy=where == "privacy", **SMALL)
    assert _contents(out) == before  # the earlier complete set, untouched
    staged = sorted(p.name for p in (out / STAGING_NAME).iterdir())
    assert staged == sorted((tofu.RETAIN_FILE, tofu.REAL_AUTHORS_FILE) if where == "third-set"
                            else (*tofu.EVAL_FILES, tofu.AGGREGATED_FILE))
    # readers skip the staging folder: `rklu report` finds only the complete evaluation
    assert report._finished(tmp_path.rglob(tofu.FORGET_FILE)) == [out / tofu.FORGET_FILE]
    assert "evaluation" not in json.loads((out / tofu.RETAIN_FILE).read_text())

    tofu.evaluate_tofu(model, tok, "plain", "forget01", out, privacy=False, **SMALL)  # a finished rerun
    assert not (out / STAGING_NAME).exists() and not (out / "aggregate.json").exists()
    assert set(tofu.EVAL_FILES) <= {p.name for p in out.iterdir()}
    tofu.aggregate(out, out)
