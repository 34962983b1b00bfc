"""`rklu eval capability` run for real through lm-eval on the tiny model: the bundled multiple-choice task
(dataset_path: json, offline), the paper's Table 1 layout, and the clear error for an unreachable hub task."""
import json

import pytest

from rklu.cli import main
from rklu.eval import capability

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, save_tiny):
    directory = tmp_path_factory.mktemp("tiny_capability")
    save_tiny(directory)
    return directory


def _accuracy_by_hand(model_dir):
    """Accuracy of the bundled task computed without lm-eval: the choice with the highest summed
    log-likelihood of ' ' + choice after the prompt (lm-eval's multiple_choice `acc`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in (capability.bundled_tasks()["rklu_tiny_mc"].with_suffix(".jsonl")).read_text().splitlines()]
    correct = 0
    for row in rows:
        context = f"Question: {row['question']}\nAnswer:"
        scores = []
        for choice in row["choices"]:
            ctx = tok(context)["input_ids"]
            whole = tok(context + " " + choice)["input_ids"]
            cont = whole[len(ctx):]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
            scores.append(sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["label"])
    return correct / len(rows)


def test_capability_end_to_end_on_the_bundled_task(model_dir, tmp_path, capsys):
    out = tmp_path / "cap.json"
    assert main(["eval", "capability", "--model", str(model_dir), "--tasks", "rklu_tiny_mc", "--batch-size", "8",
                 "--device", "cpu", "--label", "tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(out.read_text())
    acc = summary["accuracy"]["rklu_tiny_mc"]
    assert summary["tasks"] == ["rklu_tiny_mc"] and summary["missing"] == [] and summary["average"] == acc
    assert acc * 12 == pytest.approx(round(acc * 12))  # 12 questions
    assert acc == pytest.approx(_accuracy_by_hand(model_dir))
    # Table 1 layout: one row per model, percent with two decimals, Avg. Acc last
    assert "| Method | rklu_tiny_mc | Avg. Acc |" in printed
    assert f"| tiny | {100 * acc:.2f} | {100 * acc:.2f} |" in printed
    assert summary["table1"] in printed


def test_table1_layout_uses_the_papers_names():
    summaries = [{"tasks": ["piqa", "arc_easy", "wsc273"], "accuracy": {"piqa": 0.7812, "arc_easy": 0.5}, "average": 0.6406},
                 {"tasks": ["piqa", "arc_easy", "wsc273"], "accuracy": {"piqa": 0.75, "arc_easy": 0.25, "wsc273": 0.5}, "average": 0.5}]
    md = capability.table1_markdown(summaries, ["Original", "RKLU"])
    lines = md.splitlines()
    assert lines[0] == "| Method | PIQA | ARC-E | Winograd | Avg. Acc |"
    assert lines[2] == "| Original | 78.12 | 50.00 | n/a | 64.06 |"
    assert lines[3] == "| RKLU | 75.00 | 25.00 | 50.00 | 50.00 |"


def test_local_task_yaml_relative_data_files_are_resolved(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"question": "q", "choices": ["a", "b"], "label": 0}\n')
    (tmp_path / "t.yaml").write_text("task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: d.jsonl\n")
    specs, names = capability.resolve_tasks([str(tmp_path / "t.yaml"), "piqa"])
    assert names == ["mine", "piqa"] and specs[1] == "piqa"
    assert specs[0]["dataset_kwargs"]["data_files"]["test"] == str((tmp_path / "d.jsonl").resolve())
    with pytest.raises(FileNotFoundError):
        capability.resolve_tasks([str(tmp_path / "missing.yaml")])
    with pytest.raises(ValueError, match="invalid task name"):
        capability.resolve_tasks(["piqa; rm -rf /"])


def test_unreachable_hub_task_is_a_clear_error(model_dir, monkeypatch, capsys):
    import datasets
    import huggingface_hub.constants

    # offline mode: fail at once instead of waiting for five network retries (the hub is unreachable here)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["eval", "capability", "--model", str(model_dir), "--tasks", "piqa", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "lm-eval could not run ['piqa']" in err and "Hugging Face hub" in err and "Traceback" not in err
