"""The start-up equivalence check (rklu.models.head_check): a model whose head path does not give its own
``.logits`` is refused with the model, the difference and the likely config attribute — before a run
folder, a teacher cache, a training step or a TOFU log exists. Also: families the kernels cannot follow
(BERT-style prediction heads) and nested decoders (Llama4ForCausalLM)."""
import pytest
import torch
import transformers

from family_cases import HEAD_GAIN, build

from rklu.cli import main
from rklu.models import heads, loading
from rklu.models.head_check import check_head_path
from rklu.models.logit_transforms import LogitTransform
from rklu.models.tiny import qa_texts, train_bpe_tokenizer
from rklu.data.qa import load_qa

_SMALL = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
              max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)


@pytest.fixture
def forget_softcap(monkeypatch):
    """The head description of a library that ignores every logit transform."""
    monkeypatch.setattr(heads, "logit_transform", lambda model: LogitTransform())


def test_a_dropped_softcap_is_caught(forget_softcap):
    model = build("gemma2")
    with pytest.raises(ValueError) as error:
        check_head_path(model, "student (runs/gemma2)")
    message = str(error.value)
    assert "student (runs/gemma2)" in message and "Gemma2ForCausalLM" in message
    assert "config.final_logit_softcapping=5.0" in message and "differ from the model's own logits by up to" in message


@pytest.mark.parametrize("family, attribute", [("cohere", "config.logit_scale=0.0625"),
                                               ("granite", "config.logits_scaling=8.0"),
                                               ("recurrent_gemma", "config.logits_soft_cap=5.0")])
def test_a_dropped_scale_is_caught(forget_softcap, family, attribute):
    with pytest.raises(ValueError, match=attribute):
        check_head_path(build(family), "original")


def test_an_unlisted_transform_is_caught():
    """A family nobody listed (here: a Llama whose forward doubles its logits) fails the check."""
    class DoublingLlama(transformers.LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2
            return out

    config = transformers.LlamaConfig(vocab_size=96, num_key_value_heads=1, **_SMALL)
    torch.manual_seed(0)
    model = DoublingLlama(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(HEAD_GAIN)
    with pytest.raises(ValueError, match="DoublingLlama has no rule in rklu.*no known logit-scaling attribute"):
        check_head_path(model, "augmented")


def test_bf16_model_passes_with_its_own_rounding():
    model = build("gemma2").to(torch.bfloat16)
    assert check_head_path(model, "student") <= 3e-2 * 5.0


@pytest.mark.parametrize("model_class, config_class, head", [
    ("BertLMHeadModel", "BertConfig", "cls.predictions"),
    ("RobertaForCausalLM", "RobertaConfig", "lm_head"),
])
def test_prediction_head_transform_is_unsupported(model_class, config_class, head):
    config = getattr(transformers, config_class)(vocab_size=96, is_decoder=True, **_SMALL)
    model = getattr(transformers, model_class)(config)
    with pytest.raises(ValueError, match=f"{model_class} .*not supported: its output head {head} applies"):
        check_head_path(model, "student")


def test_llama4_nested_decoder():
    """Llama4ForCausalLM's base_model_prefix ("language_model") names no attribute; its decoder is .model."""
    config = transformers.Llama4TextConfig(vocab_size=96, intermediate_size_mlp=32, num_key_value_heads=1, head_dim=8,
                                           num_local_experts=2, **_SMALL)
    torch.manual_seed(0)
    model = transformers.Llama4ForCausalLM(config).eval()
    assert not hasattr(model, model.base_model_prefix)
    assert check_head_path(model, "student") <= 1e-5


def test_no_base_transformer_is_a_clear_error():
    model = build("llama")
    model.model = None  # neither .<base_model_prefix> nor .model is a module
    with pytest.raises(ValueError, match="LlamaForCausalLM is not supported: neither .model"):
        heads.final_hidden_states(model, torch.ones(1, 3, dtype=torch.long))


# ------------------------------------------------------------------------------ before any run folder

@pytest.fixture(scope="module")
def saved_gemma2(tmp_path_factory):
    """A saved tiny Gemma2 (softcap 5, head x100) with a BPE tokenizer, as `rklu` loads models."""
    rows = load_qa("tofu:full[3950:]")
    tokenizer = train_bpe_tokenizer(qa_texts(rows), vocab_size=300)
    config = transformers.Gemma2Config(vocab_size=len(tokenizer), num_key_value_heads=1, head_dim=8,
                                       final_logit_softcapping=5.0,
                                       **dict(_SMALL, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(HEAD_GAIN)
    return loading.save_model(model, tokenizer, tmp_path_factory.mktemp("models") / "gemma2")


@pytest.mark.parametrize("stage", ["unlearn", "finetune"])
def test_cli_refuses_before_the_run_folder(forget_softcap, saved_gemma2, tmp_path, capsys, stage):
    out = tmp_path / "run"
    args = (["unlearn", "--forget", "tofu:full[3980:3984]", "--method", "npo"] if stage == "unlearn"
            else ["finetune", "--data", "tofu:full[3980:3984]"])
    code = main([*args, "--preset", "tiny-cpu", "--model", str(saved_gemma2), "--epochs", "1", "--max-length", "256",
                 "--no-progress", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "config.final_logit_softcapping=5.0" in err and f"student ({saved_gemma2})" in err
    assert not out.exists()


def test_eval_tofu_refuses_before_any_log(forget_softcap, saved_gemma2, tmp_path):
    from rklu.eval.tofu import evaluate_tofu

    model, tokenizer = loading.load_model(str(saved_gemma2), dtype="float32"), loading.load_tokenizer(str(saved_gemma2))
    out = tmp_path / "eval"
    with pytest.raises(ValueError, match="evaluated .*final_logit_softcapping"):
        evaluate_tofu(model, tokenizer, "plain", "forget01", out, max_samples=2, progress=False)
    assert not out.exists()


def test_softcapped_model_trains_and_scores_with_its_own_logits(saved_gemma2, tmp_path):
    """Without the fault: the check passes, a run completes, and the eval token statistics (Min-K%,
    memorization) are the model's own log-probabilities."""
    import json

    from rklu.eval.token_logprobs import answer_token_stats

    out = tmp_path / "run"
    assert main(["finetune", "--data", "tofu:full[3980:3984]", "--preset", "tiny-cpu", "--model", str(saved_gemma2),
                 "--epochs", "1", "--max-length", "256", "--no-progress", "--output-dir", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    model, tokenizer = loading.load_model(str(saved_gemma2), dtype="float32"), loading.load_tokenizer(str(saved_gemma2))
    prompt, answer = "Q: who? A:", " Someone wrote it."
    stats = answer_token_stats(model, tokenizer, [prompt], [answer])[0]
    ids = tokenizer(prompt + answer)["input_ids"] + [tokenizer.eos_token_id]
    n_prompt = len(tokenizer(prompt)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    expected = [float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids) - 1)]  # the EOS is not scored
    assert stats["logprob"].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert stats["pred"].tolist() == [int(logp[t - 1].argmax()) for t in range(n_prompt, len(ids) - 1)]
