"""A poisoned teacher (NaN/inf weights, NaN cached hidden states, another tokenizer) is an error before
training that names the model and the problem; the disk teacher cache reuses only complete entries built
from the same weights, rows and dtype (fingerprint), and rebuilds anything else."""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_setup import tiny_model_and_data

from rklu.cli import main
from rklu.io import atomic_torch_save
from rklu.data.collate import QACollator, tokenize_qa_dataset
from rklu.data.formatting import get_prompt_format
from rklu.data.qa import load_qa
from rklu.models.heads import ModelTeacher
from rklu.models.teacher_cache import build_cached_teacher
from rklu.models.tiny import build_tiny_llama, qa_texts, train_bpe_tokenizer
from rklu.training import finetune

TINY = dict(preset="tiny-cpu", data="tofu:full[3980:]", tiny_vocab_size=300, tiny_hidden_size=32, tiny_layers=2,
            tiny_heads=2, tiny_intermediate_size=64, max_length=96, batch_size=4, progress=False)
ARGS = ["--preset", "tiny-cpu", "--max-length", "96", "--no-progress", "--batch-size", "4", "--epochs", "1",
        "--forget", "tofu:full[3980:3984]", "--retain", "tofu:full[3984:3988]"]


@pytest.fixture(scope="module")
def orig(tmp_path_factory):
    return finetune(output_dir=str(tmp_path_factory.mktemp("orig") / "run"), epochs=1, **TINY) / "model"


def _poisoned_copy(orig, folder, tensor_name, value, row=None):
    shutil.copytree(orig, folder)
    weights = load_file(str(folder / "model.safetensors"))
    target = weights[tensor_name]
    if row is None:
        target.view(-1)[3] = value
    else:
        target[row] = value
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("which, tensor, value, row", [
    ("augmented", "model.layers.1.mlp.down_proj.weight", float("nan"), None),
    # the embedding row of the last token id, which the forget rows never use: NaN would appear at step 300
    ("augmented", "model.embed_tokens.weight", float("inf"), -1),
    ("original", "model.norm.weight", float("-inf"), None),
])
def test_poisoned_teacher_weights_stop_before_training(orig, tmp_path, capsys, which, tensor, value, row):
    poisoned = _poisoned_copy(orig, tmp_path / "poisoned", tensor, value, row)
    augmented = poisoned if which == "augmented" else orig
    extra = ["--original", str(poisoned)] if which == "original" else []
    out = tmp_path / "out"
    code = main(["unlearn", *ARGS, "--model", str(orig), "--augmented", str(augmented), "--method", "rklu+kl",
                 "--output-dir", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"the {which} model ({poisoned}) has NaN or inf weights in {tensor}" in err
    assert not out.exists()  # before the run folder


def test_teacher_with_another_tokenizer_stops_before_training(orig, tmp_path, capsys):
    other = tmp_path / "aug"
    shutil.copytree(orig, other)  # same weights and vocab size ...
    texts = qa_texts(load_qa("tofu:full[3000:3040]"))
    retokenized = train_bpe_tokenizer(texts, vocab_size=300)  # ... but another tokenizer
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (other / name).unlink(missing_ok=True)
    retokenized.save_pretrained(other)
    out = tmp_path / "out"
    code = main(["unlearn", *ARGS, "--model", str(orig), "--augmented", str(other), "--method", "rklu",
                 "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"tokenizer mismatch: the augmented model ({other}) has a different tokenizer" in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------ teacher cache

@pytest.fixture(scope="module")
def tiny():
    return tiny_model_and_data(3990)


class CountingTeacher(ModelTeacher):
    calls = 0

    def __call__(self, role, batch):
        CountingTeacher.calls += 1
        return super().__call__(role, batch)


def _build(tiny, cache_dir, model=None, data=None, write=True, messages=None, teacher=None):
    tok, base, rows = tiny
    model = model if model is not None else base
    teacher = teacher or CountingTeacher(model)
    CountingTeacher.calls = 0
    return build_cached_teacher(teacher, model, {"forget": data if data is not None else rows},
                                QACollator(tok.pad_token_id), 4, "cpu", storage="disk", cache_dir=cache_dir,
                                name="augmented", write=write, report=(messages if messages is not None else []).append)


def test_teacher_cache_reuses_complete_entries_and_rebuilds_the_rest(tiny, tmp_path):
    tok, model, data = tiny
    first = _build(tiny, tmp_path)
    assert CountingTeacher.calls > 0
    entry, record = tmp_path / "augmented-forget.pt", tmp_path / "augmented-forget.json"
    assert entry.is_file() and record.is_file()

    messages = []
    again = _build(tiny, tmp_path, messages=messages)  # a resumed run: the same teacher and rows
    assert CountingTeacher.calls == 0 and "reusing" in messages[0]
    assert all(torch.equal(a, b) for a, b in zip(first.rows["forget"], again.rows["forget"]))

    record.unlink()  # killed between the hidden states and their record: the entry is not complete
    messages = []
    _build(tiny, tmp_path, messages=messages)
    assert CountingTeacher.calls > 0 and "build was cut short" in messages[0]

    entry.write_bytes(entry.read_bytes()[:100])  # a torn file under a complete-looking record
    messages = []
    _build(tiny, tmp_path, messages=messages)
    assert CountingTeacher.calls > 0 and "not the size written" in messages[0]

    for other in ({"data": tokenize_qa_dataset(load_qa("tofu:full[3980:3990]"), tok, get_prompt_format("plain"), 256)},
                  {"model": build_tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=1)},
                  {"model": build_tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0).to(torch.float64)}):
        _build(tiny, tmp_path)  # the entry for the fixture's teacher and rows
        messages = []
        _build(tiny, tmp_path, messages=messages, **other)
        assert CountingTeacher.calls > 0 and "other data, weights or dtype (fingerprint differs)" in messages[0]
        # a rank that only maps rank 0's files refuses an entry built for other inputs
        _build(tiny, tmp_path)
        with pytest.raises(FileNotFoundError, match="not complete for this run"):
            _build(tiny, tmp_path, write=False, **other)


def test_nan_in_cached_hidden_states_is_named(tiny, tmp_path):
    _build(tiny, tmp_path)
    entry = tmp_path / "augmented-forget.pt"
    rows = torch.load(entry, weights_only=True)
    rows[2][1, 0] = float("nan")
    atomic_torch_save(entry, rows)  # written as the cache writes it: same size, only the values corrupted
    with pytest.raises(ValueError, match=rf"augmented teacher's cached forget hidden states \({entry}\): row 2 holds NaN"):
        _build(tiny, tmp_path)

    class NaNTeacher(ModelTeacher):
        def __call__(self, role, batch):
            out = super().__call__(role, batch)
            out.hidden[0, 0, 0] = float("nan")
            return out
    with pytest.raises(ValueError, match="row 0 holds NaN"):
        build_cached_teacher(NaNTeacher(tiny[1]), tiny[1], {"forget": tiny[2]}, QACollator(tiny[0].pad_token_id), 4,
                             "cpu", storage="memory", name="original")
