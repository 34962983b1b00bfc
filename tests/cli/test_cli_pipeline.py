"""`rklu finetune -> augment -> unlearn` from the command line, and clear errors with nothing written."""
import json

import pytest

from rklu.cli import main

TINY = ["--preset", "tiny-cpu", "--tiny-vocab-size", "300", "--tiny-hidden-size", "32", "--tiny-layers", "2",
        "--tiny-heads", "2", "--tiny-intermediate-size", "64", "--max-length", "128", "--no-progress"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert main(["finetune", *TINY, "--data", "tofu:full[3960:]", "--epochs", "3", "--batch-size", "8",
                 "--output-dir", str(root / "orig")]) == 0
    assert main(["augment", *TINY, "--model", str(root / "orig/model"), "--forget", "tofu:forget01[:8]",
                 "--epochs", "2", "--output-dir", str(root / "aug")]) == 0
    return root


def _unlearn_args(root, out, *extra):
    return ["unlearn", *TINY, "--model", str(root / "orig/model"), "--augmented", str(root / "aug/model"),
            "--forget", "tofu:forget01[:8]", "--retain", "tofu:full[3600:3616]", "--epochs", "1",
            "--output-dir", str(out), *extra]


def test_unlearn_rklu_kl_with_teacher_cache(pipeline, tmp_path):
    out = tmp_path / "rklu"
    assert main(_unlearn_args(pipeline, out, "--method", "rklu+kl", "--teacher-cache", "disk")) == 0
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "completed" and status["method"] == "rklu+kl" and status["steps"] == 1
    assert status["teacher_cache"]["teacher_model_bytes_freed"] > 0
    assert (out / "teacher_cache" / "augmented-forget.pt").is_file()
    assert json.loads((out / "config.json").read_text())["alpha"] == 8.0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 1 and record["train_forget_kl"] > 0 and record["train_retain_kl"] >= 0
    assert (out / "model" / "model.safetensors").is_file()


def test_task_arithmetic_and_resume_refusal(pipeline, tmp_path):
    out = tmp_path / "ta"
    assert main(_unlearn_args(pipeline, out, "--method", "task-arithmetic")) == 0
    assert (out / "model" / "config.json").is_file()
    # an existing run folder is never silently overwritten
    assert main(_unlearn_args(pipeline, out, "--method", "task-arithmetic")) == 2


def test_lora_augment_and_unlearn_share_one_base(pipeline, tmp_path):
    pytest.importorskip("peft")
    aug = tmp_path / "aug-lora"
    assert main(["augment", *TINY, "--model", str(pipeline / "orig/model"), "--forget", "tofu:forget01[:8]",
                 "--epochs", "1", "--lora", "--output-dir", str(aug)]) == 0
    assert (aug / "model" / "adapter_config.json").is_file()
    out = tmp_path / "rklu-lora"
    args = _unlearn_args(pipeline, out, "--method", "rklu", "--lora")
    args[args.index("--augmented") + 1] = str(aug / "model")
    assert main(args) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("change, message", [
    (["--method", "gd"], "unknown unlearning method"),
    (["--method", "rklu", "--alpha", "-1"], "alpha must be >= 0"),
    (["--method", "rklu+kl", "--retain-weight", "-1"], "lambda"),
    (["--method", "rklu", "--forget", "tofu:forget01[3:3]"], "empty"),
    (["--method", "ga", "--model", "/nonexistent/model"], "model path not found"),
    (["--method", "ga", "--preset", "nope"], "unknown preset"),
    (["--method", "rklu", "--augmented", "./missing-augmented"], "augmented model path not found"),
])
def test_user_errors_exit_2_and_write_nothing(pipeline, tmp_path, capsys, change, message):
    out = tmp_path / "bad"
    args = _unlearn_args(pipeline, out)
    for i in range(0, len(change), 2):
        if change[i] in args:
            args[args.index(change[i]) + 1] = change[i + 1]
        else:
            args += change[i:i + 2]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_rows_without_answers_and_missing_pad(pipeline, tmp_path, capsys):
    bad = tmp_path / "forget.json"
    bad.write_text(json.dumps([{"question": "Who is Basil?", "answer": ""}]))
    out = tmp_path / "bad"
    args = _unlearn_args(pipeline, out, "--method", "ga")
    args[args.index("--forget") + 1] = str(bad)
    assert main(args) == 2 and "missing or empty 'answer'" in capsys.readouterr().err and not out.exists()

    # a tokenizer with no pad, EOS or UNK token
    import shutil

    tok_dir = tmp_path / "tok"
    shutil.copytree(pipeline / "orig/model", tok_dir)
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    for key in ("pad_token", "eos_token", "unk_token"):
        config.pop(key, None)
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
    (tok_dir / "special_tokens_map.json").unlink(missing_ok=True)
    args = _unlearn_args(pipeline, out, "--method", "ga", "--tokenizer", str(tok_dir))
    assert main(args) == 2 and "no pad token" in capsys.readouterr().err and not out.exists()
