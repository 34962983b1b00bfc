"""Aggregation on small synthetic logs, checked against scipy directly (ks_2samp, hmean)."""
import json

import numpy as np
import pytest
from scipy.stats import hmean, ks_2samp

from rklu.eval import tofu

FILES = tofu.EVAL_FILES


def synthetic_log(rng, n, n_pert, shift=0.0, with_extras=True):
    gt = rng.uniform(0.2, 3.0, n)
    para = rng.uniform(0.2, 3.0, n) + shift
    pert = rng.uniform(0.5, 4.0, (n, n_pert))
    rouge = rng.uniform(0, 1, n)
    log = {
        "avg_gt_loss": {str(i): float(gt[i]) for i in range(n)},
        "avg_paraphrased_loss": {str(i): float(para[i]) for i in range(n)},
        "average_perturb_loss": {str(i): [float(x) for x in pert[i]] for i in range(n)},
        "rougeL_recall": {str(i): float(rouge[i]) for i in range(n)},
    }
    if with_extras:
        log["generated_text"] = {str(i): ["q", "g", "a"] for i in range(n)}
    return log, (gt, para, pert, rouge)


def write_logs(directory, rng, n=12, shift=0.0):
    directory.mkdir(parents=True, exist_ok=True)
    raw = {}
    for name in FILES:
        log, arrays = synthetic_log(rng, n, 5 if "eval_log" in name else 3, shift if name == tofu.FORGET_FILE else 0.0)
        (directory / name).write_text(json.dumps(log))
        raw[name] = arrays
    return raw


def expected(raw, retain_raw):
    """An independent transcription of TOFU's aggregate_eval_stat.py."""
    out = {}
    for name, (gt, para, pert, rouge) in raw.items():
        if "eval_log" in name:
            prob = np.mean(np.exp(-gt))
        else:
            p_true = np.exp(-gt)
            prob = np.mean(p_true / (p_true + np.exp(-pert).sum(-1)))
        r = np.exp(pert.mean(-1) - para)
        tr = np.mean(np.minimum(r, 1 / r)) if name == tofu.FORGET_FILE else np.mean(np.maximum(0, 1 - 1 / r))
        out[name] = (prob, rouge.mean(), tr)
    r_ours = np.exp(raw[tofu.FORGET_FILE][2].mean(-1) - raw[tofu.FORGET_FILE][1])
    r_ret = np.exp(retain_raw[tofu.FORGET_FILE][2].mean(-1) - retain_raw[tofu.FORGET_FILE][1])
    ks = ks_2samp(r_ours, r_ret)
    mu = hmean([v for name in (tofu.RETAIN_FILE, tofu.REAL_AUTHORS_FILE, tofu.WORLD_FACTS_FILE) for v in out[name]])
    return out, ks, mu, r_ours


def test_aggregate_matches_scipy(tmp_path):
    rng = np.random.default_rng(0)
    raw = write_logs(tmp_path / "model", rng, shift=1.5)   # forget truth ratios clearly different
    retain_raw = write_logs(tmp_path / "retain", rng)
    out, ks, mu, r_ours = expected(raw, retain_raw)
    result = tofu.aggregate(tmp_path / "model", tmp_path / "retain")
    assert result["forget_quality"] == pytest.approx(ks.pvalue, rel=1e-12)
    assert result["ks_statistic"] == pytest.approx(ks.statistic)
    assert result["forget_quality"] < 0.05  # the shift is detected
    assert result["model_utility"] == pytest.approx(mu, rel=1e-12)
    for name, short in ((tofu.RETAIN_FILE, "retain"), (tofu.REAL_AUTHORS_FILE, "real_authors"),
                        (tofu.WORLD_FACTS_FILE, "world_facts"), (tofu.FORGET_FILE, "forget")):
        prob, rouge, tr = out[name]
        assert result[f"{short}_prob"] == pytest.approx(prob, rel=1e-12)
        assert result[f"{short}_rouge_l"] == pytest.approx(rouge, rel=1e-12)
        assert result[f"{short}_truth_ratio"] == pytest.approx(tr, rel=1e-12)
    assert result["forget_truth_ratio_mean"] == pytest.approx(r_ours.mean())
    assert result["tofu"]["Model Utility"] == result["model_utility"]
    assert result["tofu"]["Truth Ratio Real World"] == result["world_facts_truth_ratio"]
    # the same model against itself: identical distributions
    assert tofu.aggregate(tmp_path / "retain", tmp_path / "retain")["forget_quality"] == pytest.approx(1.0)


def test_reads_tofu_published_layout_and_sample_major(tmp_path):
    """TOFU's published folders may hold only eval_log_aggregated.json ({file: log}); our per-set files
    and a sample-major variant must give identical numbers."""
    rng = np.random.default_rng(1)
    write_logs(tmp_path / "ours", rng)
    retain_raw = write_logs(tmp_path / "retain_ours", rng)
    bundle = {name: json.loads((tmp_path / "retain_ours" / name).read_text()) for name in FILES}
    published = tmp_path / "published" / "ds_size300"
    published.mkdir(parents=True)
    (published / tofu.AGGREGATED_FILE).write_text(json.dumps(bundle, indent=4))
    a = tofu.aggregate(tmp_path / "ours", tmp_path / "retain_ours")
    b = tofu.aggregate(tmp_path / "ours", published)
    c = tofu.aggregate(tmp_path / "ours", published / tofu.AGGREGATED_FILE)
    assert a["forget_quality"] == b["forget_quality"] == c["forget_quality"]
    sample_major = tmp_path / "sample_major"
    sample_major.mkdir()
    for name in FILES:
        log = json.loads((tmp_path / "ours" / name).read_text())
        transposed = {}
        for metric, values in log.items():
            for idx, value in values.items():
                transposed.setdefault(idx, {})[metric] = value
        (sample_major / name).write_text(json.dumps(transposed))
    d = tofu.aggregate(sample_major, tmp_path / "retain_ours")
    for key in ("forget_quality", "model_utility", "retain_prob", "forget_truth_ratio", "real_authors_prob"):
        assert d[key] == pytest.approx(a[key], rel=1e-12)


def test_index_order_is_numeric_and_alignment_by_key(tmp_path):
    """Keys "10" and "2" must pair each sample's perturbed and paraphrased losses, whatever the JSON order."""
    log = {"avg_gt_loss": {"10": 1.0, "2": 2.0}, "avg_paraphrased_loss": {"10": 1.0, "2": 2.0},
           "average_perturb_loss": {"2": [2.0, 2.0], "10": [3.0, 1.0]}, "rougeL_recall": {"2": 0.5, "10": 1.0}}
    assert list(tofu.truth_ratios(log)) == pytest.approx([1.0, math_e()])  # order: 2, 10
    m = tofu.set_metrics(log, tofu.REAL_AUTHORS_FILE)
    p10 = np.exp(-1.0) / (np.exp(-1.0) + np.exp(-3.0) + np.exp(-1.0))
    p2 = np.exp(-2.0) / (3 * np.exp(-2.0))
    assert m["prob"] == pytest.approx((p10 + p2) / 2)


def math_e():
    return float(np.e)


def test_missing_logs_and_bad_logs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        tofu.aggregate(tmp_path / "nope", None)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / tofu.FORGET_FILE).write_text("{}")
    with pytest.raises(FileNotFoundError, match="eval_log.json"):
        tofu.aggregate(tmp_path / "partial", None)
    rng = np.random.default_rng(2)
    write_logs(tmp_path / "m", rng)
    (tmp_path / "m" / tofu.RETAIN_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        tofu.aggregate(tmp_path / "m", None)
    write_logs(tmp_path / "m2", rng)
    no_fq = tofu.aggregate(tmp_path / "m2", None)
    assert no_fq["forget_quality"] is None and no_fq["model_utility"] > 0
