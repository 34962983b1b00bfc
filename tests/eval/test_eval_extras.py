"""Case study, copyright-style evaluation and the lm-eval capability wrapper."""
import builtins
import json

import pytest

from rklu.cli import main
from rklu.eval import capability, case_study, copyright


def test_split_blank():
    assert case_study.split_blank("The father is a civil engineer.") == ("The father is a civil", "engineer")
    assert case_study.split_blank("He won the Hugo Award.", "Hugo Award") == ("He won the", "Hugo Award")
    with pytest.raises(ValueError):
        case_study.split_blank("He won.", "Nobel")


def test_case_study_side_by_side(tiny, tiny_model, tmp_path):
    model, tok = tiny
    other = tiny_model(tok, seed=1)
    items = case_study.load_items(forget_split="forget01", indices=[0, 3])
    result = case_study.case_study({"original": (model, tok), "unlearned": (other, tok)}, "plain", items,
                                   top_k=5, max_new_tokens=5)
    assert len(result["cases"]) == 2
    for case in result["cases"]:
        assert set(case["models"]) == {"original", "unlearned"}
        for out in case["models"].values():
            probs = [t["prob"] for t in out["top_tokens"]]
            assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    top_orig = [t["token"] for t in result["cases"][0]["models"]["original"]["top_tokens"]]
    top_other = [t["token"] for t in result["cases"][0]["models"]["unlearned"]["top_tokens"]]
    assert top_orig != top_other  # different weights, different distributions
    md = case_study.case_study_markdown(result)
    assert "| original |" in md and "Al-Kuwaiti" in md


def test_copyright_eval_scores(tiny):
    model, tok = tiny
    text = " ".join(f"Harry went to the castle number {i} and met a friend there." for i in range(60))
    passages = copyright.split_passages(text, tok, prompt_tokens=20, continuation_tokens=10, max_passages=3)
    assert len(passages) == 3 and all(p and c for p, c in passages)
    perfect = copyright.continuation_scores(["the cat sat on the mat today"], ["the cat sat on the mat today"])
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["rouge_l_f1"] == pytest.approx(1.0)
    assert copyright.continuation_scores(["zzz"], ["the cat sat"])["bleu"] == pytest.approx(0.0)
    result = copyright.copyright_eval(model, tok, text, prompt_tokens=20, max_new_tokens=10, max_passages=3, progress=False)
    assert result["num_passages"] == 3 and 0 <= result["bleu"] <= 100 and len(result["samples"]) == 3
    ppl = copyright.perplexity(model, tok, text, segment_tokens=32, num_segments=4)
    assert ppl["num_segments"] == 4 and 1 < ppl["perplexity"] < 2 * len(tok)  # untrained: ~ vocab size
    with pytest.raises(ValueError, match="too short"):
        copyright.split_passages("short", tok)


def test_copyright_cli(save_tiny, tmp_path, capsys):
    directory = tmp_path / "m"
    save_tiny(directory)
    text = tmp_path / "book.txt"
    text.write_text(" ".join(f"Line {i} of a story about a wizard." for i in range(80)))
    out = tmp_path / "cr.json"
    rc = main(["eval", "copyright", "--model", str(directory), "--text", str(text), "--prompt-tokens", "16",
               "--max-new-tokens", "8", "--max-passages", "2", "--ppl-file", str(text), "--ppl-segments", "3",
               "--segment-tokens", "32", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["num_passages"] == 2 and data["perplexity"]["num_segments"] == 3


def test_capability_without_lm_eval_is_a_clear_error(monkeypatch, tmp_path, capsys):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ImportError("No module named 'lm_eval'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(capability.CapabilityUnavailable, match="pip install"):
        capability.run_capability(str(tmp_path))
    assert main(["eval", "capability", "--model", str(tmp_path)]) == 2
    assert "lm-eval" in capsys.readouterr().err


def test_extract_accuracies():
    results = {"piqa": {"acc,none": 0.75, "acc_norm,none": 0.8}, "copa": {"acc": 0.5}, "mathqa": {"alias": "mathqa"}}
    out = capability.extract_accuracies(results, ["piqa", "copa", "mathqa", "hellaswag"])
    assert out["accuracy"] == {"piqa": 0.75, "copa": 0.5}
    assert out["average"] == pytest.approx(0.625) and out["missing"] == ["mathqa", "hellaswag"]
    md = capability.capability_markdown({"tasks": ["piqa", "copa"], "accuracy": out["accuracy"], "average": 0.625})
    assert "0.7500" in md and "0.6250" in md
