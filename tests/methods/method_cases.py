"""Shared builder for the method tests: a tiny BPE tokenizer trained on TOFU text and one paired batch."""
from rklu.data.collate import PairedCollator, PairedDataset, idk_dataset, tokenize_qa_dataset
from rklu.data.formatting import get_prompt_format
from rklu.data.qa import load_qa
from rklu.data.tofu import idk_answers
from rklu.models.tiny import qa_texts, train_bpe_tokenizer


def tiny_paired_batch(rows: int, max_length: int = 96):
    """``(tokenizer, forget, retain, batch)``: the first ``rows`` forget01 rows, as many retain rows from
    ``full``, their tokenized datasets, and one PairedCollator batch (forget / retain / idk)."""
    fmt = get_prompt_format("plain")
    forget_raw, retain_raw = load_qa(f"tofu:forget01[:{rows}]"), load_qa(f"tofu:full[3600:{3600 + rows}]")
    tok = train_bpe_tokenizer(qa_texts(forget_raw) + qa_texts(retain_raw) + idk_answers(), vocab_size=400)
    forget = tokenize_qa_dataset(forget_raw, tok, fmt, max_length)
    retain = tokenize_qa_dataset(retain_raw, tok, fmt, max_length)
    idk = tokenize_qa_dataset(idk_dataset(forget_raw, idk_answers()), tok, fmt, max_length)
    batch = PairedCollator(tok.pad_token_id)([PairedDataset(forget, retain, idk)[i] for i in range(rows)])
    return tok, forget, retain, batch
