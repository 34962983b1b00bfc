"""``--prompt-format`` guessing: from the last component of the model's path, then its config
(``_name_or_path``, ``model_type``) — never from the folders above it."""
import pytest
import transformers

from rklu.data.formatting import PROMPT_FORMATS, get_prompt_format, guess_prompt_format


@pytest.mark.parametrize("path, expected", [
    ("/home/sophia/models/llama2-7b", "llama2"),      # "phi" in "sophia" says nothing
    ("/home/sophia/models/llama2-7b/", "llama2"),
    ("/data/philipp/phi-1_5", "phi"),
    ("microsoft/phi-1_5", "phi"),
    ("NousResearch/Llama-2-7b-chat-hf", "llama2"),
    ("/srv/llama-zoo/phi-1_5", "phi"),                # the folder above says llama, the model says phi
])
def test_last_path_component(path, expected):
    assert guess_prompt_format(path) is PROMPT_FORMATS[expected]
    assert get_prompt_format(path) is PROMPT_FORMATS[expected]


def test_nothing_in_the_name_and_no_config_is_an_error():
    with pytest.raises(ValueError, match="last path component"):
        guess_prompt_format("/home/sophia/models/my-model")


@pytest.mark.parametrize("config, expected", [
    (transformers.PhiConfig(), "phi"),
    (transformers.LlamaConfig(), "llama2"),
])
def test_model_type_from_a_local_config(tmp_path, config, expected):
    folder = tmp_path / "sophia" / "runs" / "original" / "model"
    config.save_pretrained(folder)
    assert guess_prompt_format(str(folder)) is PROMPT_FORMATS[expected]


def test_name_or_path_before_model_type(tmp_path):
    config = transformers.LlamaConfig()
    config._name_or_path = "/home/sophia/ckpt/phi-1_5-tofu"  # a phi fine-tune stored as llama architecture
    assert guess_prompt_format(str(tmp_path / "model"), config) is PROMPT_FORMATS["phi"]


def test_unknown_model_type_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="model_type"):
        guess_prompt_format("/home/sophia/model", transformers.GPT2Config())
