"""Memorization and membership-inference metrics (open-unlearning's definitions) on hand-worked cases,
the per-token statistics against materialized logits, and the TOFU evaluation/aggregation keys."""
import json
import math

import numpy as np
import pytest
import torch

from rklu.eval import privacy, tofu
from rklu.eval import token_logprobs as tl
from rklu.eval.memorization import exact_memorization, extraction_strength


# ------------------------------------------------------------------------------------ hand-worked
def test_exact_memorization_by_hand():
    assert exact_memorization([1, 2, 3, 4], [1, 9, 3, 4]) == 0.75
    assert exact_memorization([5], [5]) == 1.0
    assert exact_memorization([], []) is None
    with pytest.raises(ValueError):
        exact_memorization([1, 2], [1])


def _open_unlearning_es(preds, labels):
    """The loop of open-unlearning's ``extraction_strength``, literally."""
    n = len(labels)
    if n == 0:
        return 0
    for k in range(n):
        if list(preds[k:]) == list(labels[k:]):
            break
    return 1 - k / n


def test_extraction_strength_by_hand_and_against_the_loop():
    assert extraction_strength([1, 2, 3, 4], [1, 9, 3, 4]) == 0.5   # suffix [3, 4] from k = 2
    assert extraction_strength([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0   # the whole answer from the prompt
    assert extraction_strength([0, 0, 0, 0], [1, 2, 3, 4]) == 0.25  # open-unlearning's floor 1/n
    assert extraction_strength([0, 0, 0, 4], [1, 2, 3, 4]) == 0.25  # only the last token: k = 3
    assert extraction_strength([], []) == 0.0
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 8))
        labels = rng.integers(0, 3, n)
        preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 3, n))
        assert extraction_strength(preds, labels) == pytest.approx(_open_unlearning_es(preds, labels))


def test_min_k_scores_by_hand():
    # 5 tokens, k = 0.4 -> the 2 lowest log-probs (-5, -4): score = 4.5
    assert privacy.min_k_score([-1, -2, -3, -4, -5]) == pytest.approx(4.5)
    assert privacy.min_k_score([-2.0]) == pytest.approx(2.0)          # at least one token
    assert privacy.min_k_score([]) == 0.0
    # Min-K%++: z = (lp - mu) / sqrt(var) = [0.5, -1]; 2 tokens x 0.4 -> 1 token: score = 1
    assert privacy.min_k_plus_plus_score([-1, -3], [-2, -2], [4, 1]) == pytest.approx(1.0)
    # var clamped at 1e-6: z = (-1 - -2) / 1e-3 = 1000
    assert privacy.min_k_plus_plus_score([-1], [-2], [0.0]) == pytest.approx(-1000.0)
    with pytest.raises(ValueError, match="one value per token"):
        privacy.min_k_plus_plus_score([-1, -2], [-2], [1])


def test_mia_auc_and_privleak_by_hand():
    # holdout (label 1) beats forget in (3>1), (3>2), (2>1), ties (2=2) count 1/2: AUC = 3.5 / 4
    assert privacy.mia_auc([1, 2], [3, 2]) == pytest.approx(0.875)
    assert privacy.mia_auc([5, 6], [1, 2]) == 0.0
    assert privacy.mia_auc([1, 1], [1, 1]) == 0.5
    # privleak: ((1 - 0.875) - (1 - 0.5)) / (1 - 0.5) * 100 = -75
    assert privacy.privleak(0.875, 0.5) == pytest.approx(-75.0)
    assert privacy.privleak(0.6, 0.6) == pytest.approx(0.0)
    assert privacy.privleak(0.3, 0.5) == pytest.approx(40.0)
    with pytest.raises(ValueError, match="at least one"):
        privacy.mia_auc([], [1])
    with pytest.raises(ValueError, match="NaN"):
        privacy.mia_auc([float("nan")], [1])


def test_mia_auc_equals_sklearn_when_installed():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    f, h = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 20).astype(float)  # many ties
    labels = np.r_[np.zeros(30), np.ones(20)]
    assert privacy.mia_auc(f, h) == pytest.approx(metrics.roc_auc_score(labels, np.r_[f, h]), rel=1e-12)


# ------------------------------------------------------------------------------------ token stats
def test_token_vocab_stats_by_hand():
    # one token, 2-word vocab, logits [0, log 3] -> p = [1/4, 3/4]
    hidden = torch.tensor([[1.0]])
    weight = torch.tensor([[0.0], [math.log(3.0)]])
    lp = tl.token_logprobs(hidden, weight, torch.tensor([1]))
    assert lp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    stats = tl.token_vocab_stats(hidden, weight)
    mu = 0.25 * math.log(0.25) + 0.75 * math.log(0.75)
    var = 0.25 * math.log(0.25) ** 2 + 0.75 * math.log(0.75) ** 2 - mu ** 2
    assert stats["argmax"].item() == 1
    assert stats["mu"].item() == pytest.approx(mu, abs=1e-6)
    assert stats["var"].item() == pytest.approx(var, abs=1e-6)
    uniform = tl.token_vocab_stats(torch.zeros(3, 2), torch.randn(7, 2))
    assert torch.allclose(uniform["mu"], torch.full((3,), -math.log(7)), atol=1e-6)
    assert torch.allclose(uniform["var"], torch.zeros(3), atol=1e-6)


def test_token_logprobs_match_log_softmax_in_chunks():
    torch.manual_seed(0)
    hidden, weight, bias = torch.randn(2, 5, 8), torch.randn(37, 8), torch.randn(37)
    labels = torch.randint(0, 37, (2, 5))
    labels[0, 0] = labels[1, 3] = -100
    ref = torch.log_softmax(hidden @ weight.T + bias, -1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    ref = torch.where(labels == -100, torch.zeros_like(ref), ref)
    got = tl.token_logprobs(hidden, weight, labels, bias=bias, chunk_size=3)  # chunks split the rows
    assert torch.allclose(got, ref, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        tl.token_logprobs(hidden, weight, torch.full((2, 5), 37))
    with pytest.raises(ValueError, match="align"):
        tl.token_logprobs(hidden, weight, labels[:, :4])


def test_token_logprobs_go_through_the_fused_kernel(monkeypatch):
    import rklu.kernels

    calls = []

    def fake(hidden, weight, labels, *, bias=None, ignore_index=-100, chunk_tokens=None):
        calls.append((tuple(hidden.shape), ignore_index, chunk_tokens))
        return torch.full(labels.shape, -1.5)

    monkeypatch.setattr(rklu.kernels, "fused_linear_token_logprob", fake)
    out = tl.token_logprobs(torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, -100, 2]), chunk_size=7)
    assert calls == [((4, 3), -100, 7)] and torch.all(out == -1.5)


def test_answer_token_stats_match_the_model_logits(tiny):
    model, tok = tiny
    prompts = ["Q: Who wrote it?\nA: ", "Q: Where?\nA: ", "Q: x\nA: "]
    answers = ["The author of the book.", "In a city", "y"]
    stats = tl.answer_token_stats(model, tok, prompts, answers, batch_size=2)
    for p, a, s in zip(prompts, answers, stats):
        ids, labels = tofu.encode_qa(tok, p, a)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[:-1], -1)
        positions = [t for t, y in enumerate(labels) if y != -100][:-1]  # all answer tokens but the EOS
        assert s["label"].tolist() == [ids[t] for t in positions]
        ref = [logp[t - 1, ids[t]].item() for t in positions]
        assert s["logprob"] == pytest.approx(ref, abs=1e-5)
        assert s["pred"].tolist() == [int(logp[t - 1].argmax()) for t in positions]
        probs = logp[[t - 1 for t in positions]].exp()
        mu = (probs * logp[[t - 1 for t in positions]]).sum(-1)
        assert s["mu"] == pytest.approx(mu.tolist(), abs=1e-5)


# ----------------------------------------------------------------------------- TOFU evaluation + keys
def test_tofu_eval_writes_privacy_log_and_aggregate_keys(tiny, tmp_path, capsys):
    model, tok = tiny
    out = tmp_path / "eval"
    tofu.evaluate_tofu(model, tok, "plain", "forget01", out, batch_size=32, max_new_tokens=2, max_samples=6,
                       progress=False)
    log = json.loads((out / privacy.PRIVACY_FILE).read_text())
    assert log["forget_split"] == "forget01" and log["holdout_split"] == "holdout01"
    assert set(log["forget"]) == {"min_k", "min_k_plus_plus", "num_tokens", "exact_memorization", "extraction_strength"}
    assert list(log["holdout"]["min_k"]) == [str(i) for i in range(6)]
    assert set(json.loads((out / tofu.AGGREGATED_FILE).read_text())) == set(tofu.EVAL_FILES)  # TOFU's bundle as is
    # against itself as the oracle: privleak 0; without an oracle privacy log: reference AUC 0.5
    agg = tofu.aggregate(out, out)
    for key in ("forget_exact_memorization", "forget_extraction_strength", "mia_min_k_auc", "mia_min_k_plus_plus_auc"):
        assert 0.0 <= agg[key] <= 1.0, key
    assert agg["privleak"] == pytest.approx(0.0) and agg["privleak_min_k_plus_plus"] == pytest.approx(0.0)
    assert agg["privleak_reference"] == "retain oracle"
    from rklu.cli import main

    assert main(["eval", "aggregate", "--eval-dir", str(out), "--retain-eval-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "privleak (Min-K%): 0.00" in printed and "extraction strength" in printed
    assert json.loads((out / "aggregate.json").read_text())["privleak"] == pytest.approx(0.0)
    published = tmp_path / "published"
    published.mkdir()
    (published / tofu.FORGET_FILE).write_text((out / tofu.FORGET_FILE).read_text())
    agg2 = tofu.aggregate(out, published)
    assert agg2["privleak"] == pytest.approx(privacy.privleak(agg["mia_min_k_auc"], 0.5))
    assert "default" in agg2["privleak_reference"] and agg2["retain_mia_min_k_auc"] is None
    assert set(agg2["tofu"]) == set(agg["tofu"])  # TOFU's column names untouched
    # --no-privacy: no privacy log, no privacy keys
    tofu.evaluate_tofu(model, tok, "plain", "forget01", out, batch_size=32, max_new_tokens=2, max_samples=3,
                       progress=False, privacy=False)
    assert not (out / privacy.PRIVACY_FILE).exists() and "privleak" not in tofu.aggregate(out, out)


def test_privacy_logs_of_different_splits_are_an_error(tmp_path):
    def write(folder, split):
        folder.mkdir()
        log = {"forget_split": split, "forget": {"min_k": {"0": 1.0}, "min_k_plus_plus": {"0": 1.0},
                                                 "exact_memorization": {"0": 1.0}, "extraction_strength": {"0": 1.0}},
               "holdout": {"min_k": {"0": 2.0}, "min_k_plus_plus": {"0": 2.0}}}
        (folder / privacy.PRIVACY_FILE).write_text(json.dumps(log))

    write(tmp_path / "a", "forget01")
    write(tmp_path / "b", "forget10")
    assert privacy.privacy_aggregate(tmp_path / "a", tmp_path / "a")["mia_min_k_auc"] == 1.0
    with pytest.raises(ValueError, match="different forget splits"):
        privacy.privacy_aggregate(tmp_path / "a", tmp_path / "b")
    (tmp_path / "a" / privacy.PRIVACY_FILE).write_text("{}")
    with pytest.raises(ValueError, match="not a privacy log"):
        privacy.privacy_aggregate(tmp_path / "a")


def test_report_shows_the_privacy_columns_when_runs_have_them(tmp_path):
    from rklu.eval import report

    run = tmp_path / "rklu+kl_seed1"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps([
        {"epoch": 1, "forget_quality": 0.1, "model_utility": 0.5, "forget_rouge_l": 0.4, "privleak": -80.0,
         "forget_extraction_strength": 0.6, "forget_exact_memorization": 0.7},
        {"epoch": 2, "forget_quality": 0.3, "model_utility": 0.45, "forget_rouge_l": 0.3, "privleak": -12.5,
         "forget_extraction_strength": 0.2, "forget_exact_memorization": 0.4}]))
    summary = report.write_report([run], tmp_path / "out", plots=False)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| forget ROUGE-L | privleak | forget extraction strength | forget exact memorization |" in md
    assert "| rklu+kl | 1 | 2 | 0.3000 | 0.4500 | 0.3000 | -12.50 | 0.2000 | 0.4000 |" in md  # at the peak epoch
    assert summary["groups"][0]["epochs"][0]["privleak"] == -80.0
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "metrics.json").write_text(json.dumps([{"epoch": 1, "forget_quality": 0.1, "model_utility": 0.5}]))
    report.write_report([plain], tmp_path / "out2", plots=False)
    assert "privleak" not in (tmp_path / "out2" / "report.md").read_text()
