"""Loading other people's models and our own caches never runs code from files by default: every
``from_pretrained`` passes ``trust_remote_code`` (off unless the user passes --trust-remote-code), every
``torch.load`` passes ``weights_only=True``, nothing unpickles; a model folder whose config names its own
Python code is refused without running it."""
import ast
import json
from pathlib import Path

import pytest

from rklu.models import loading

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.joinpath("rklu").rglob("*.py"), *ROOT.joinpath("benchmarks").rglob("*.py"),
                  *ROOT.joinpath("scripts").rglob("*.py")])
# peft's adapter loader takes no trust_remote_code (an adapter is a config + tensors): it reads safetensors,
# or .bin files through torch.load(weights_only=True) (checked below)
NO_CODE_LOADERS = {"PeftModel"}


def _calls(name):
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
                yield path, node


def _where(path, node):
    return f"{path.relative_to(ROOT)}:{node.lineno}"


def test_every_from_pretrained_passes_trust_remote_code():
    found = 0
    for path, node in _calls("from_pretrained"):
        owner = node.func.value
        if isinstance(owner, ast.Attribute) and owner.attr in NO_CODE_LOADERS or \
                isinstance(owner, ast.Name) and owner.id in NO_CODE_LOADERS:
            continue
        found += 1
        explicit = any(k.arg == "trust_remote_code" for k in node.keywords)
        forwarded = any(k.arg is None and isinstance(k.value, ast.Call) and
                        getattr(k.value.func, "attr", getattr(k.value.func, "id", None)) == "remote_code_kwargs"
                        for k in node.keywords)
        assert explicit or forwarded, f"{_where(path, node)}: from_pretrained without trust_remote_code"
        for k in node.keywords:
            if k.arg == "trust_remote_code":
                assert isinstance(k.value, ast.Constant) and k.value.value is False, _where(path, node)
    assert found >= 6  # the model, tokenizer and config loaders are all seen


def test_every_torch_load_is_weights_only_and_nothing_unpickles():
    loads = list(_calls("load"))
    torch_loads = [(p, n) for p, n in loads if isinstance(n.func.value, ast.Name) and n.func.value.id == "torch"]
    assert torch_loads  # the teacher cache
    for path, node in torch_loads:
        flag = [k for k in node.keywords if k.arg == "weights_only"]
        assert flag and isinstance(flag[0].value, ast.Constant) and flag[0].value.value is True, _where(path, node)
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "joblib", "cloudpickle", "marshal"} & {n.split(".")[0] for n in names}, \
                    f"{path.relative_to(ROOT)}:{node.lineno} imports an unpickler"
            if isinstance(node, ast.Call) and any(k.arg == "allow_pickle" for k in node.keywords):
                raise AssertionError(f"{_where(path, node)}: allow_pickle")
    assert "trust_remote_code=" in ROOT.joinpath("rklu/eval/capability.py").read_text()  # lm-eval's HF loader too


def test_libraries_load_checkpoints_and_adapters_weights_only():
    """The loads rklu leaves to its libraries on resume (Trainer's RNG/optimizer/scheduler files) and for
    adapters (peft) are weights_only too."""
    import inspect

    from peft.utils import save_and_load
    from transformers import Trainer

    assert inspect.signature(save_and_load.torch_load).parameters["weights_only"].default is True
    for method in (Trainer._load_rng_state, Trainer._load_optimizer_and_scheduler, Trainer._load_from_checkpoint):
        source = inspect.getsource(method)
        assert "torch.load(" not in source.replace("weights_only=True", "") or \
            source.count("torch.load(") == source.count("weights_only=True"), method.__name__


def _model_with_own_code(folder: Path, marker: Path, tiny_config: dict):
    """A model folder whose config points (auto_map) at a Python file that writes ``marker`` when run."""
    folder.mkdir()
    code = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import LlamaConfig\n" \
           "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
    (folder / "configuration_evil.py").write_text(code)
    (folder / "modeling_evil.py").write_text(code.replace("LlamaConfig", "LlamaForCausalLM").replace(
        "class EvilConfig(LlamaForCausalLM):\n    model_type = 'evil'", "class EvilModel(LlamaForCausalLM):\n    pass"))
    config = {**tiny_config, "model_type": "evil", "architectures": ["EvilModel"],
              "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                           "AutoModelForCausalLM": "modeling_evil.EvilModel"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["configuration_evil.EvilConfig", None]},
                                                                "tokenizer_class": "EvilTokenizer"}))


@pytest.mark.parametrize("loader", ["model", "tokenizer", "context"])
def test_a_model_with_its_own_code_is_refused_without_running_it(tmp_path, loader):
    from transformers import LlamaConfig

    marker = tmp_path / "code-ran"
    folder = tmp_path / "evil"
    _model_with_own_code(folder, marker, LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, vocab_size=64).to_dict())
    load = {"model": lambda: loading.load_model(str(folder), dtype="float32", flash_attention="no"),
            "tokenizer": lambda: loading.load_tokenizer(str(folder)),
            "context": lambda: __import__("rklu.training.stages", fromlist=["_fit_context"])._fit_context(
                __import__("rklu.training.config", fromlist=["RunConfig"]).RunConfig(max_length=4096), str(folder))}[loader]
    if loader == "context":
        load()  # the max_length check reads the config; a refused one is left to the model loader's message
    else:
        with pytest.raises(Exception, match="trust_remote_code"):
            load()
    assert not marker.exists()
    loading.allow_remote_code(True)  # what --trust-remote-code does: now the folder's code runs
    try:
        with pytest.raises(Exception):
            load()
    except BaseException:
        pass
    finally:
        loading.allow_remote_code(False)
    assert marker.exists()


def test_trust_remote_code_is_a_flag_of_every_loading_command(capsys):
    from rklu.cli import build_parser

    parser = build_parser()
    for argv in (["unlearn", "--trust-remote-code"], ["eval", "tofu", "--model", "m", "--trust-remote-code"]):
        args, _ = parser.parse_known_args(argv)
        assert args.trust_remote_code is True
    assert parser.parse_known_args(["unlearn"])[0].trust_remote_code in (None, False)
