"""The metric registry: a metric defined in a module outside rklu (written to tmp_path) and registered with
one line is computed by `rklu eval aggregate`, by ``aggregate`` and by the in-memory evaluator the demo
uses; the registry is restored afterwards. Bad registrations fail with a clear error."""
import importlib
import json
import sys
import textwrap

import numpy as np
import pytest

from test_eval_aggregate import write_logs

from rklu.cli import main
from rklu.eval import metrics
from rklu.eval.aggregate import aggregate
from rklu.eval.evaluator import Evaluator
from rklu.eval.tofu import EvalSet
from rklu.eval.tofu_logs import FORGET_FILE, RETAIN_FILE, load_eval_logs

TOY_MODULE = '''
"""A toy metric: the fraction of forget answers the model reproduces to at least half (ROUGE-L recall)."""
from rklu.eval.metrics import register_metric
from rklu.eval.tofu_logs import FORGET_FILE, per_sample


def forget_half_recalled(context):
    recall = per_sample(context.logs[FORGET_FILE], "rougeL_recall", FORGET_FILE)
    return {"toy_forget_half_recalled": sum(float(v) >= 0.5 for v in recall.values()) / len(recall)}


register_metric("toy_forget_half_recalled", forget_half_recalled)
'''


@pytest.fixture
def restored_registry():
    before = dict(metrics.METRICS)
    yield
    metrics.METRICS.clear()
    metrics.METRICS.update(before)
    sys.modules.pop("rklu_toy_metric", None)


def test_a_metric_registered_from_a_new_module_is_computed_everywhere(tmp_path, monkeypatch, restored_registry, capsys):
    raw = write_logs(tmp_path / "model", np.random.default_rng(0))
    write_logs(tmp_path / "retain", np.random.default_rng(1))
    expected = float(np.mean(raw[FORGET_FILE][3] >= 0.5))
    assert 0 < expected < 1  # the toy value is not a constant

    before = aggregate(tmp_path / "model", tmp_path / "retain")
    assert "toy_forget_half_recalled" not in before
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "rklu_toy_metric.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    importlib.import_module("rklu_toy_metric")
    assert list(metrics.METRICS)[-1] == "toy_forget_half_recalled"

    # rklu eval aggregate: the new key in aggregate.json, the built-in ones unchanged
    assert main(["eval", "aggregate", "--eval-dir", str(tmp_path / "model"),
                 "--retain-eval-dir", str(tmp_path / "retain")]) == 0
    written = json.loads((tmp_path / "model" / "aggregate.json").read_text())
    assert written["toy_forget_half_recalled"] == pytest.approx(expected)
    for key in ("forget_quality", "model_utility", "forget_truth_ratio_mean"):
        assert written[key] == pytest.approx(before[key], rel=1e-12)

    # the demo's evaluator, on logs held in memory (forget + retain sets only)
    logs = load_eval_logs(tmp_path / "model", required=(FORGET_FILE, RETAIN_FILE))
    evaluator = Evaluator([EvalSet(FORGET_FILE, FORGET_FILE, [], "paraphrased_answer", False),
                           EvalSet(RETAIN_FILE, RETAIN_FILE, [], "paraphrased_answer", False)], max_new_tokens=4)
    evaluator.retain_forget_log = load_eval_logs(tmp_path / "retain", required=(FORGET_FILE,))[FORGET_FILE]
    in_memory = evaluator.metrics(logs)
    assert in_memory["toy_forget_half_recalled"] == pytest.approx(expected)
    assert in_memory["forget_quality"] == pytest.approx(before["forget_quality"], rel=1e-12)


def test_the_registry_was_restored():
    assert "toy_forget_half_recalled" not in metrics.METRICS
    assert list(metrics.METRICS) == ["forget_quality", "model_utility", "forget_truth_ratio_mean", "privacy"]


def test_bad_registrations_and_names_are_clear_errors(restored_registry):
    with pytest.raises(ValueError, match="already registered"):
        metrics.register_metric("model_utility", lambda context: {})
    with pytest.raises(TypeError, match="not callable"):
        metrics.register_metric("broken", 3)
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.compute_metrics(metrics.EvalContext({}), names=["no_such_metric"])
    metrics.register_metric("not_a_mapping", lambda context: 1.0)
    with pytest.raises(TypeError, match="not_a_mapping.*mapping"):
        metrics.compute_metrics(metrics.EvalContext({}), names=["not_a_mapping"])
