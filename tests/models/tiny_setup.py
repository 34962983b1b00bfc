"""The tiny Llama these tests share: a BPE tokenizer trained on a slice of TOFU's full split, the seeded tiny
model and the slice tokenized in the plain prompt format."""
from rklu.data.collate import tokenize_qa_dataset
from rklu.data.formatting import get_prompt_format
from rklu.data.qa import load_qa
from rklu.models.tiny import build_tiny_llama, qa_texts, train_bpe_tokenizer


def tiny_model_and_data(first_row: int):
    """(tokenizer, model, tokenized rows) for ``tofu:full[first_row:]``."""
    rows = load_qa(f"tofu:full[{first_row}:]")
    tok = train_bpe_tokenizer(qa_texts(rows), vocab_size=300)
    model = build_tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    return tok, model, tokenize_qa_dataset(rows, tok, get_prompt_format("plain"), 256)
