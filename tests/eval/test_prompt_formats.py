"""Every built-in prompt format against TOFU's definitions (config/model_config.yaml, copied in
tests/eval/tofu_reference.py): the strings, the token masks of training and evaluation rows (vs TOFU's
convert_raw_data_to_model_format), and the generation prompt / reference answer (vs TOFU's run_generation).
Plus the ``chat`` format built from a tokenizer's chat template."""
import pytest
import torch

from tofu_reference import MODEL_CONFIGS, convert_raw_data_to_model_format

from rklu.data.collate import IGNORE_INDEX, tokenize_qa
from rklu.data.formatting import PROMPT_FORMATS, get_prompt_format
from rklu.data.tofu import load_tofu
from rklu.eval.tofu import encode_qa, generation_fields

TOFU_FORMATS = [("llama2", "llama2-7b"), ("phi", "phi")]
Q, A = "Who wrote 'The Silent Sea'?", "Basil Mahfouz Al-Kuwaiti wrote it in 1999."


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer()


def _tofu(tok, question, answer, family, max_length=200):
    ids, labels, mask = convert_raw_data_to_model_format(tok, max_length, question, answer, MODEL_CONFIGS[family])
    n = int(mask.sum())
    return ids[:n].tolist(), labels[: min(n + 1, max_length)].tolist()


@pytest.mark.parametrize("name,family", TOFU_FORMATS)
def test_strings_are_tofus(name, family):
    fmt, tags = get_prompt_format(name), MODEL_CONFIGS[family]
    assert fmt.prompt(Q) == tags["question_start_tag"] + Q + tags["question_end_tag"]
    assert fmt.answer(A) == tags["answer_tag"] + A
    assert fmt.full(Q, A) == fmt.prompt(Q) + fmt.answer(A)


def test_phi_masks_only_the_question_and_scores_the_answer_tag():
    fmt = get_prompt_format("phi")
    assert fmt.prompt(Q) == f"Question: {Q}\n"
    assert fmt.answer(A) == f"Answer: {A}"
    assert get_prompt_format("microsoft/phi-1_5") is fmt and get_prompt_format("NousResearch/Llama-2-7b-chat-hf").name == "llama2"


@pytest.mark.parametrize("name,family", TOFU_FORMATS)
@pytest.mark.parametrize("truncate", [False, True])  # True: cut inside the answer (no EOS label, as TOFU)
def test_token_masks_match_tofu(tok, name, family, truncate):
    fmt = get_prompt_format(name)
    for row in list(load_tofu("forget01_perturbed"))[:6]:
        max_length = len(tok(fmt.prompt(row["question"]))["input_ids"]) + 5 if truncate else 200
        ids, labels = _tofu(tok, row["question"], row["answer"], family, max_length)
        ours_ids, ours_labels = encode_qa(tok, fmt.prompt(row["question"]), fmt.answer(row["answer"]), max_length)
        assert ours_labels == labels[: len(ours_labels)] and len(ours_labels) == len(labels)
        assert ours_ids[: len(ids)] == ids
        train = tokenize_qa(row["question"], row["answer"], tok, fmt, max_length)
        assert train["labels"] == labels and train["input_ids"][: len(ids)] == ids
        # the answer tag's tokens are scored: the first scored token starts the answer tag
        n_prompt = sum(1 for x in labels if x == IGNORE_INDEX)
        scored, expected = tok.decode(ids[n_prompt:]), fmt.answer(row["answer"])
        assert len(scored) >= 5 and scored == expected[: len(scored)]


@pytest.mark.parametrize("name,family", TOFU_FORMATS)
def test_generation_prompt_and_reference_are_tofus(tok, name, family):
    """TOFU's run_generation: decode the scored text, split at " [/INST]" (llama2) or "Answer: " (others)."""
    fmt = get_prompt_format(name)
    split = " [/INST]" if family == "llama2-7b" else "Answer: "
    for row in list(load_tofu("forget01_perturbed"))[:4]:
        ids, _ = _tofu(tok, row["question"], row["answer"], family)
        decoded = tok.decode(ids, skip_special_tokens=True)
        prompt = decoded.split(split)[0] + (split if family == "llama2-7b" else "")
        assert generation_fields(tok, fmt, row["question"], row["answer"]) == (prompt, decoded.split(split)[1])
    assert generation_fields(tok, fmt, Q, A)[0] == fmt.prompt(Q)  # generation starts from start + question + end


def test_plain_format_is_unchanged():
    fmt = PROMPT_FORMATS["plain"]
    assert fmt.full(Q, A) == f"Q: {Q} A: {A}" and fmt.prompt(Q) == f"Q: {Q} A:"


# ----------------------------------------------------------------------------------------------- chat
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def chat_checks(tokenizer):
    fmt = get_prompt_format("chat", tokenizer)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": Q}], tokenize=False, add_generation_prompt=True)
    assert fmt.prompt(Q) == prompt and fmt.answer(A) == A and not fmt.add_special_tokens
    row = tokenize_qa(Q, A, tokenizer, fmt, 512)
    n_prompt = sum(1 for x in row["labels"] if x == IGNORE_INDEX)
    assert row["input_ids"][:n_prompt] == tokenizer(prompt, add_special_tokens=False)["input_ids"]  # no 2nd BOS
    assert tokenizer.decode(row["input_ids"][n_prompt:], skip_special_tokens=True).strip() == A
    assert row["input_ids"][-1] == tokenizer.eos_token_id  # the model learns to end its turn
    gen_prompt, reference = generation_fields(tokenizer, fmt, Q, A)
    assert gen_prompt == prompt and reference.strip() == A


def test_chat_format_with_a_tiny_tokenizer_template(tiny_tokenizer):
    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE
    chat_checks(tok)


def test_chat_format_needs_a_template(tiny_tokenizer):
    with pytest.raises(ValueError, match="chat template"):
        get_prompt_format("chat", tiny_tokenizer())
    with pytest.raises(ValueError, match="needs the tokenizer"):
        get_prompt_format("chat")


def test_chat_format_through_tofu_evaluation(tiny_tokenizer, tiny_model):
    from rklu.eval.tofu import evaluate_set

    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    rows = [dict(r) for r in list(load_tofu("forget01_perturbed"))[:3]]
    logs = evaluate_set(tiny_model(tok), tok, get_prompt_format("chat", tok), rows, base_answer_key="paraphrased_answer",
                        normalize_gt=False, max_new_tokens=4)
    assert logs["generated_text"]["0"][0].startswith("<|user|>\n") and logs["generated_text"]["0"][0].endswith("<|assistant|>\n")
    assert logs["generated_text"]["0"][2].strip() == rows[0]["answer"]
    assert all(n > 0 for n in logs["num_token_gt"].values())
