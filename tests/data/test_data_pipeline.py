"""QA files, text windows, tokenization/collator masking, and forget/retain pairing."""
import json
import warnings

import pytest
import torch

from rklu.data.collate import IGNORE_INDEX, PairedCollator, PairedDataset, QACollator, idk_dataset, tokenize_qa_dataset
from rklu.data.formatting import get_prompt_format
from rklu.data.qa import check_overlap, load_qa, load_qa_file
from rklu.data.text import text_windows
from rklu.data.tofu import idk_answers
from rklu.models.tiny import qa_texts, train_bpe_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    rows = load_qa("tofu:full[3900:]")
    return train_bpe_tokenizer(qa_texts(rows) + idk_answers(), vocab_size=400)


def test_qa_file_json_and_jsonl(tmp_path):
    rows = [{"question": "Who?", "answer": "Me.", "extra": 1}, {"question": "Where?", "answer": "Here."}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for name in ("a.json", "b.jsonl"):
        ds = load_qa_file(tmp_path / name)
        assert ds["question"] == ["Who?", "Where?"] and ds["answer"] == ["Me.", "Here."]


@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ("[{\"question\": \"q\", \"answer\": ", "not valid JSON"),
    ('{"question": "q", "answer": "a"}\n{"question": "q2"', "line 2"),
    ('[{"question": "q"}]', "'answer'"),
    ('[{"answer": "a"}]', "'question'"),
    ('[{"question": "q", "answer": "  "}]', "'answer'"),
    ("[]", "no rows"),
])
def test_qa_file_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_qa_file(path)


def test_missing_file_and_empty_slice():
    with pytest.raises(FileNotFoundError):
        load_qa("/nonexistent/qa.json")
    with pytest.raises(ValueError, match="empty"):
        load_qa("tofu:forget01[5:5]")
    assert len(load_qa("tofu:full[3960:]")) == 40


def test_overlap_warns():
    forget = load_qa("tofu:forget01")
    with pytest.warns(UserWarning, match="40 of 40"):
        assert len(check_overlap(forget, load_qa("tofu:full[3900:]"))) == 40
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_overlap(forget, load_qa("tofu:retain99")) == []


def test_tokenize_masks_prompt_and_collator_masks_pad(tokenizer):
    fmt = get_prompt_format("plain")
    ds = tokenize_qa_dataset(load_qa("tofu:forget01[:3]"), tokenizer, fmt, max_length=256)
    row = ds[0]
    n_prompt = len(tokenizer(fmt.prompt(load_qa("tofu:forget01")[0]["question"]))["input_ids"])
    assert row["input_ids"][0] == tokenizer.bos_token_id and row["input_ids"][-1] == tokenizer.eos_token_id
    assert row["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    answer = tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX], skip_special_tokens=True)
    assert answer.strip() == load_qa("tofu:forget01")[0]["answer"].strip()

    batch = QACollator(tokenizer.pad_token_id)([ds[i] for i in range(3)])
    lengths = [len(ds[i]["input_ids"]) for i in range(3)]
    assert batch["input_ids"].shape == (3, max(lengths))
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i].sum() == n
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()
    assert batch["example_id"].tolist() == [0, 1, 2]


def test_truncation_warns(tokenizer):
    with pytest.warns(UserWarning, match="truncated to max_length=12"):
        ds = tokenize_qa_dataset(load_qa("tofu:forget01[:4]"), tokenizer, get_prompt_format("plain"), max_length=12)
    assert max(len(r) for r in ds["input_ids"]) == 12


def test_paired_dataset_matches_retain_and_idk(tokenizer):
    fmt = get_prompt_format("plain")
    forget_raw = load_qa("tofu:forget01[:10]")
    forget = tokenize_qa_dataset(forget_raw, tokenizer, fmt, 256)
    retain = tokenize_qa_dataset(load_qa("tofu:full[3600:3625]"), tokenizer, fmt, 256)
    idk_raw = idk_dataset(forget_raw, idk_answers(), seed=3)
    assert idk_raw["question"] == forget_raw["question"]
    assert set(idk_raw["answer"]) <= set(idk_answers())
    idk = tokenize_qa_dataset(idk_raw, tokenizer, fmt, 256)
    paired = PairedDataset(forget, retain, idk, seed=7)
    again = PairedDataset(forget, retain, idk, seed=7)
    retain_ids = [paired[i]["retain"]["example_id"] for i in range(10)]
    assert retain_ids == [again[i]["retain"]["example_id"] for i in range(10)]
    assert len(set(retain_ids)) == 10  # drawn without replacement while the retain set lasts
    batch = PairedCollator(tokenizer.pad_token_id)([paired[i] for i in range(4)])
    assert set(batch) == {"forget", "retain", "idk"}
    assert batch["forget"]["example_id"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="forget set is empty"):
        PairedDataset(forget.select([]), retain)


def test_text_windows(tokenizer):
    text = " ".join(load_qa("tofu:full[3900:]")["answer"])
    ds = text_windows(text, tokenizer, window=32)
    n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert all(len(r) <= 32 for r in ds["input_ids"])
    assert all(r[0] == tokenizer.bos_token_id for r in ds["input_ids"])
    assert sum(len(r) - 1 for r in ds["input_ids"]) == n_tokens
    assert ds[0]["labels"] == ds[0]["input_ids"]
    with pytest.raises(ValueError, match="too short"):
        text_windows("a", tokenizer, window=32)
