"""Tiny models, tokenizer pad handling, hidden-state heads, LoRA teachers and the teacher cache."""
import pytest
import torch
from tiny_setup import tiny_model_and_data

from rklu.data.collate import QACollator
from rklu.models import loading
from rklu.models.heads import AdapterTeacher, ModelTeacher, final_hidden_states, output_head, student_forward
from rklu.models.teacher_cache import build_cached_teacher
from rklu.models.tiny import train_bpe_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tok, model, data = tiny_model_and_data(3950)
    batch = QACollator(tok.pad_token_id)([data[i] for i in range(5)])
    return tok, model, data, batch


def test_tokenizer_special_tokens_and_roundtrip(tiny):
    tok = tiny[0]
    assert tok.pad_token_id is not None and tok.eos_token_id is not None and tok.bos_token_id is not None
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3
    text = "Hina Ameen was born in Karachi, Pakistan!"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_ensure_pad_token(tiny, tmp_path):
    tok = train_bpe_tokenizer(["a b c"] * 5, vocab_size=280)
    tok.pad_token = None
    loading.ensure_pad_token(tok)
    assert tok.pad_token == tok.eos_token  # falls back to EOS
    tok.pad_token, tok.eos_token, tok.unk_token = None, None, None
    with pytest.raises(ValueError, match="no pad token"):
        loading.ensure_pad_token(tok)


def test_hidden_states_and_head_give_model_logits(tiny):
    _, model, _, batch = tiny
    out = student_forward(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert out.hidden.shape[:2] == batch["input_ids"].shape
    torch.testing.assert_close(out.logits(), logits, atol=1e-5, rtol=1e-5)
    weight, bias = output_head(model)
    assert weight is model.lm_head.weight and bias is None


def test_load_and_save_roundtrip(tiny, tmp_path):
    tok, model, _, batch = tiny
    out = loading.save_model(model, tok, tmp_path / "m")
    assert not (tmp_path / "m.tmp").exists()
    loaded = loading.load_model(str(out), dtype="float32")
    again = loading.load_tokenizer(str(out))
    assert again.pad_token_id == tok.pad_token_id
    torch.testing.assert_close(loaded(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
                               model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits)
    with pytest.raises(FileNotFoundError, match="model path not found"):
        loading.load_model(str(tmp_path / "missing"))


def test_lora_teachers_share_one_base(tiny):
    pytest.importorskip("peft")
    _, model, _, batch = tiny
    base_hidden = final_hidden_states(model, batch["input_ids"], batch["attention_mask"]).detach()
    import copy

    peft_model = loading.add_lora(copy.deepcopy(model), loading.lora_config(r=4, alpha=8))
    # make the student adapter non-trivial, then check the "original" teacher ignores it
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    student_hidden = final_hidden_states(peft_model, batch["input_ids"], batch["attention_mask"])
    original = AdapterTeacher(peft_model, None)("forget", batch)
    torch.testing.assert_close(original.hidden, base_hidden, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(student_hidden, base_hidden, atol=1e-3)
    assert peft_model.active_adapter == "default"


def test_teacher_cache_is_exact(tiny, tmp_path):
    tok, model, data, batch = tiny
    teacher = ModelTeacher(model)
    for storage in ("memory", "disk"):
        cached = build_cached_teacher(teacher, model, {"forget": data}, QACollator(tok.pad_token_id), 3, "cpu",
                                      storage=storage, cache_dir=tmp_path, name="original")
        # a batch in a different order/padding than when cached
        order = [4, 0, 2]
        shuffled = QACollator(tok.pad_token_id)([data[i] for i in order])
        direct, from_cache = teacher("forget", shuffled), cached("forget", shuffled)
        mask = shuffled["attention_mask"].bool()
        torch.testing.assert_close(from_cache.hidden[mask], direct.hidden[mask], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(from_cache.weight, direct.weight)
    assert (tmp_path / "original-forget.pt").is_file()
