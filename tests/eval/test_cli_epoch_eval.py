"""`rklu unlearn --eval-tofu`: TOFU logs after every epoch, aggregated into the run's metrics.json."""
import json
import math

import pytest

from rklu.cli import main

TINY = ["--tiny-hidden-size", "32", "--tiny-layers", "1", "--tiny-vocab-size", "300", "--tiny-heads", "2",
        "--tiny-intermediate-size", "64", "--no-progress"]


def test_unlearn_evaluates_every_epoch(tmp_path):
    original = tmp_path / "original"
    assert main(["finetune", "--preset", "tiny-cpu", "--data", "tofu:full[3960:]", "--epochs", "1",
                 "--output-dir", str(original), *TINY]) == 0
    assert main(["eval", "tofu", "--model", str(original / "model"), "--forget-split", "forget01",
                 "--prompt-format", "plain", "--out", str(tmp_path / "oracle_eval"), "--max-samples", "4"]) == 0
    run = tmp_path / "ga"
    assert main(["unlearn", "--preset", "tiny-cpu", "--method", "ga+rt", "--model", str(original / "model"),
                 "--epochs", "2", "--output-dir", str(run), "--eval-tofu", "forget01",
                 "--retain-eval-dir", str(tmp_path / "oracle_eval"), "--eval-max-samples", "4", "--no-progress"]) == 0
    records = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert 0.0 <= record["forget_quality"] <= 1.0 and math.isfinite(record["model_utility"])
        # privacy/memorization against the oracle's eval_privacy.json (issue 14)
        assert math.isfinite(record["privleak"]) and 0.0 <= record["forget_extraction_strength"] <= 1.0
        assert (run / "eval" / f"epoch_{record['epoch']}" / "eval_log_forget.json").is_file()
        assert (run / "eval" / f"epoch_{record['epoch']}" / "aggregate.json").is_file()


def test_missing_retain_eval_dir_is_a_clear_error(tmp_path, capsys):
    code = main(["unlearn", "--preset", "tiny-cpu", "--model", str(tmp_path), "--output-dir", str(tmp_path / "x"),
                 "--eval-tofu", "forget01", "--retain-eval-dir", str(tmp_path / "nowhere")])
    assert code == 2
    assert "--retain-eval-dir" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
