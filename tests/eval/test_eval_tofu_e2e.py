"""A tiny model evaluated end to end: all four TOFU files with every key; the CLI on a saved model."""
import json

import numpy as np
import pytest

from rklu.cli import main
from rklu.eval import tofu

KEYS = set(tofu.PER_SAMPLE_KEYS)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, save_tiny):
    directory = tmp_path_factory.mktemp("tiny_model")
    model, tok = save_tiny(directory)
    return directory, model, tok


def test_evaluate_tofu_writes_all_files_with_every_key(saved, tmp_path):
    _, model, tok = saved
    out = tmp_path / "eval"
    result = tofu.evaluate_tofu(model, tok, "plain", "forget01", out, batch_size=32, max_new_tokens=6, progress=False)
    sizes = {tofu.RETAIN_FILE: 300, tofu.REAL_AUTHORS_FILE: 100, tofu.WORLD_FACTS_FILE: 117, tofu.FORGET_FILE: 40}
    for name, n in sizes.items():
        log = json.loads((out / name).read_text())
        assert log == json.loads(json.dumps(result[name]))
        expected_keys = KEYS | ({"normalized_gt_loss"} if "wo_options" in name else set())
        assert set(log) == expected_keys, name
        for key in expected_keys:
            assert list(log[key]) == [str(i) for i in range(n)], (name, key)
        g0 = log["generated_text"]["0"]
        assert len(g0) == 3 and g0[0].startswith("Q: ") and isinstance(g0[1], str)
        n_pert = 5 if "eval_log" in name else 3
        assert all(len(v) == n_pert for v in log["average_perturb_loss"].values())
        for i in ("0", str(n - 1)):
            assert log["avg_gt_loss"][i] == pytest.approx(log["gt_loss"][i] / log["num_token_gt"][i])
            assert log["avg_paraphrased_loss"][i] == pytest.approx(log["paraphrased_loss"][i] / log["num_token_paraphrased"][i])
            assert log["average_perturb_loss"][i] == pytest.approx(
                [s / c for s, c in zip(log["perturb_loss"][i], log["num_token_perturb"][i])])
            assert log["truth_ratio"][i] == pytest.approx(
                np.exp(log["avg_paraphrased_loss"][i] - np.mean(log["average_perturb_loss"][i])))
        if "wo_options" in name:  # real authors / world facts: the "paraphrased" answer is the answer itself
            assert log["avg_paraphrased_loss"] == pytest.approx(log["avg_gt_loss"])
        else:
            assert log["avg_paraphrased_loss"]["0"] != pytest.approx(log["avg_gt_loss"]["0"])
    bundle = json.loads((out / tofu.AGGREGATED_FILE).read_text())
    assert set(bundle) == set(sizes)
    agg = tofu.aggregate(out, out)
    assert agg["forget_quality"] == pytest.approx(1.0) and agg["num_samples"]["forget"] == 40
    assert 0.0 <= agg["model_utility"] <= 1.0


def test_cli_eval_tofu_and_aggregate(saved, tmp_path, capsys):
    directory, _, _ = saved
    out = tmp_path / "cli_eval"
    rc = main(["eval", "tofu", "--model", str(directory), "--forget-split", "forget05", "--prompt-format", "plain",
               "--out", str(out), "--max-samples", "4", "--max-new-tokens", "4", "--batch-size", "8",
               "--retain-eval-dir", str(out.parent / "missing")])
    assert rc == 2 and "retain eval dir not found" in capsys.readouterr().err
    rc = main(["eval", "tofu", "--model", str(directory), "--forget-split", "forget05", "--prompt-format", "plain",
               "--out", str(out), "--max-samples", "4", "--max-new-tokens", "4", "--batch-size", "8"])
    assert rc == 0
    for name in tofu.EVAL_FILES:
        assert len(json.loads((out / name).read_text())["avg_gt_loss"]) == 4
    rc = main(["eval", "aggregate", "--eval-dir", str(out), "--retain-eval-dir", str(out), "--epoch", "3"])
    assert rc == 0
    agg = json.loads((out / "aggregate.json").read_text())
    assert agg["epoch"] == 3 and agg["forget_quality"] == pytest.approx(1.0)
    assert "model utility" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["eval", "tofu", "--model", "/nonexistent/model"], "model directory not found"),
    (["eval", "aggregate", "--eval-dir", "/nonexistent/a", "--retain-eval-dir", "/nonexistent/b"], "not found"),
    (["eval", "copyright", "--model", "/nonexistent/model", "--text", "/nonexistent/t.txt"], "text file not found"),
    (["eval", "capability", "--model", "/nonexistent/model"], "model directory not found"),
    (["eval", "case-study", "--model", "orig=/nonexistent/model"], "model directory not found"),
    (["report", "/nonexistent/run"], "run directory not found"),
])
def test_cli_missing_paths_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_loads_hub_ids_through_the_library_loaders(monkeypatch):
    """A hub id (e.g. TOFU's released locuslab/tofu_ft_llama2-7b) is not mistaken for a missing folder."""
    import torch

    from rklu.eval.cli import load_model
    from rklu.models import loading

    calls = []
    monkeypatch.setattr(loading, "load_model", lambda path, **kw: calls.append((path, kw)) or torch.nn.Linear(2, 2))
    monkeypatch.setattr(loading, "load_tokenizer", lambda path: f"tokenizer of {path}")
    model, tokenizer = load_model("locuslab/tofu_ft_llama2-7b", device="cpu")
    assert calls[0][0] == "locuslab/tofu_ft_llama2-7b" and calls[0][1]["dtype"] == torch.float32
    assert tokenizer == "tokenizer of locuslab/tofu_ft_llama2-7b" and not model.training
