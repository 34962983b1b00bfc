"""--kl-backend in a run: a name the kernels' registry does not know fails with the config, before the run
folder exists; "auto" is decided once per run, each fused op gets its resolved backend explicitly, and run.json
records them."""
import json

import pytest

from rklu.cli import main
from rklu.kernels.common import backends
from rklu.training import finetune, unlearn
from rklu.training.config import resolve_config

TINY = dict(preset="tiny-cpu", data="tofu:full[3980:]", tiny_vocab_size=300, tiny_hidden_size=32, tiny_layers=2,
            tiny_heads=2, tiny_intermediate_size=64, max_length=96, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def orig(tmp_path_factory):
    return finetune(output_dir=str(tmp_path_factory.mktemp("orig") / "run"), epochs=1, **TINY) / "model"


def test_unknown_kl_backend_fails_before_the_run_folder(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"kl_backend must be one of auto, triton, chunked, torch, reference, got 'tritn'"):
        resolve_config("unlearn", "tiny-cpu", None, dict(model="m", output_dir="o", kl_backend="tritn")).validate("unlearn")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="kl_backend must be one of"):
        unlearn(model=str(tmp_path / "no-model"), output_dir=str(out), method="rklu", kl_backend="chunkd")
    assert not out.exists()
    # the CLI's choices come from the same registry
    assert main(["unlearn", "--model", "m", "--output-dir", str(out), "--kl-backend", "tritn"]) == 2
    assert "invalid choice: 'tritn'" in capsys.readouterr().err
    assert not out.exists()


def test_auto_is_resolved_once_per_run_and_recorded(orig, tmp_path, monkeypatch):
    """The run's only "auto" decision answers "reference" (a choice no per-call default would make on CPU):
    every KL and log-prob call of every step then runs on it, and run.json says so."""
    decisions, calls = [], []
    real_function = backends.function

    def auto_once(op, device, problem=None):
        decisions.append((op, problem))
        return "reference"

    def recording_function(op, backend):
        calls.append((op, backend))
        return real_function(op, backend)

    monkeypatch.setattr(backends, "auto_backend", auto_once)
    monkeypatch.setattr(backends, "function", recording_function)
    out = tmp_path / "run"
    unlearn(model=str(orig), augmented=str(orig), method="rklu+rt", forget="tofu:full[3980:3984]",
            retain="tofu:full[3990:3994]", kl_backend="auto", epochs=1, output_dir=str(out), **TINY)

    assert len(decisions) == 1 and decisions[0][0] == "kl"
    problem = decisions[0][1]
    assert problem["n"] == TINY["batch_size"] * TINY["max_length"] and problem["augmented"]
    assert (problem["h"], problem["v"], problem["dtype"]) == (TINY["tiny_hidden_size"], TINY["tiny_vocab_size"], "fp32")
    assert {op for op, _ in calls} == {"kl", "logprob"} and {b for _, b in calls} == {"reference"}
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "completed"
    assert status["kernel_backends"] == {"kl": "reference", "logprob": "reference"}


def test_a_kl_only_backend_gives_the_logprob_its_own_choice(monkeypatch):
    """"chunked" implements only the KL: the log-prob gets its own auto choice, stated, not reinterpreted."""
    import torch

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the Triton backends may run on CPU
    assert backends.resolve_for_run("chunked", torch.device("cpu")) == {"kl": "chunked", "logprob": "torch"}
    assert backends.resolve_for_run("reference", torch.device("cpu")) == {"kl": "reference", "logprob": "reference"}
