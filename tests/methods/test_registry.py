"""The method registry: what each built-in method declares, what is derived from it (names, CLI choices,
teacher-cache roles, config validation), and a new method added as one module + one register call."""
import dataclasses
import importlib
import json
import textwrap

import pytest

from method_cases import tiny_paired_batch
from rklu.cli import build_parser, main
from rklu.methods import LossContext, get_method, method_names, register, unregister
from rklu.methods.registry import ALPHA, MethodSpec, hyperparameters, specs
from rklu.models.tiny import build_tiny_llama
from rklu.training.config import RunConfig
from rklu.training.teachers import cache_roles

# teacher -> data roles each built-in method runs its teachers on (what the teacher cache must cover)
EXPECTED_TEACHER_ROLES = {
    "rklu": {"original": ("forget",), "augmented": ("forget",)},
    "rklu+rt": {"original": ("forget",), "augmented": ("forget",)},
    "rklu+kl": {"original": ("forget", "retain"), "augmented": ("forget",)},
    "fklu": {"original": ("forget",), "augmented": ("forget",)},
    "fklu+kl": {"original": ("forget", "retain"), "augmented": ("forget",)},
    "ga": {}, "ga+rt": {}, "ga+kl": {"original": ("retain",)},
    "npo": {"original": ("forget",)}, "npo+rt": {"original": ("forget",)},
    "npo+kl": {"original": ("forget", "retain")},
    "idk": {},
    "dpo": {"original": ("forget", "idk")}, "dpo+rt": {"original": ("forget", "idk")},
    "dpo+kl": {"original": ("forget", "idk", "retain")},
    "task-arithmetic": {"original": (), "augmented": ()},
}


def test_builtin_methods_declare_their_teachers_and_data():
    assert set(method_names()) == set(EXPECTED_TEACHER_ROLES)
    for name, expected in EXPECTED_TEACHER_ROLES.items():
        method = get_method(name)
        assert dict(method.teacher_roles) == expected, name
        assert method.needs_retain == ("+" in name) and method.needs_idk == name.startswith(("dpo", "idk"))
        assert method.trains == (name != "task-arithmetic")
    data = {"forget": "F", "retain": "R", "idk": "I"}
    assert cache_roles(get_method("dpo+kl"), data) == {"original": {"forget": "F", "idk": "I", "retain": "R"}}
    assert cache_roles(get_method("ga+rt"), data) == {}


def test_hyperparameters_are_config_fields_with_the_same_defaults():
    config_defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    context_defaults = {f.name: f.default for f in dataclasses.fields(LossContext)}
    for hp in hyperparameters():
        assert config_defaults[hp.name] == hp.default, hp.name
        if hp.name != "ta_scale":  # task arithmetic does not train: no loss reads it
            assert context_defaults[hp.name] == hp.default, hp.name
    for bad, message in ((dict(npo_beta=0.0), "npo_beta must be > 0, got 0.0"),
                         (dict(ta_scale=-1.0), "ta_scale must be >= 0"), (dict(alpha=-1.0), "alpha must be >= 0")):
        with pytest.raises(ValueError, match=message):
            RunConfig(model="m", output_dir="o", **bad).validate("finetune")


@pytest.mark.parametrize("spec, message", [
    (MethodSpec("rklu", None, trains=False, retain_terms=()), "already registered"),
    (MethodSpec("x+y", lambda ctx, batch: None), "without '\\+'"),
    (MethodSpec("x", lambda ctx, batch: None, teachers={"student": ("forget",)}), "unknown teacher 'student'"),
    (MethodSpec("x", lambda ctx, batch: None, teachers={"original": ("retain",)}), "loss reads only"),
    (MethodSpec("x", lambda ctx, batch: None, retain_terms=("rt", "ce")), "unknown retain term"),
    (MethodSpec("x", None), "a method that trains has a loss"),
])
def test_inconsistent_methods_are_refused_at_registration(spec, message):
    before = method_names()
    with pytest.raises(ValueError, match=message):
        register(spec)
    assert method_names() == before


TOY_METHOD = textwrap.dedent('''
    """A toy method: reverse KL to the original model alone on the forget data (no augmented teacher)."""
    from rklu.methods.common import unlearning_kl
    from rklu.methods.registry import ALPHA, MethodSpec


    def toy_loss(ctx, batch):
        loss = unlearning_kl(ctx, "forget", batch, direction="reverse", with_augmented=False)
        return loss, {"toy_kl": loss.detach()}


    METHOD = MethodSpec("toy", toy_loss, teachers={"original": ("forget",)}, hyperparameters=(ALPHA,),
                        retain_terms=("kl",))
''')


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    """The toy method's module written to tmp_path, imported and registered; the registry is restored."""
    (tmp_path / "toy_unlearning_method.py").write_text(TOY_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = method_names()
    spec = register(importlib.import_module("toy_unlearning_method").METHOD)
    try:
        yield spec
    finally:
        unregister(spec.name)
        monkeypatch.delitem(__import__("sys").modules, "toy_unlearning_method")
        assert method_names() == before


def _method_choices():
    unlearn = build_parser()._subparsers._group_actions[0].choices["unlearn"]
    return next(a.choices for a in unlearn._actions if a.dest == "method")


def test_a_registered_method_is_listed_cached_and_trained(toy_method, tmp_path):
    assert "toy" not in EXPECTED_TEACHER_ROLES and toy_method in specs()
    assert {"toy", "toy+kl"} <= set(method_names()) and {"toy", "toy+kl"} <= set(_method_choices())
    assert "toy+rt" not in method_names()
    method = get_method("toy+kl")
    assert dict(method.teacher_roles) == {"original": ("forget", "retain")} and not method.needs_augmented
    assert ALPHA in method.hyperparameters

    # one training step through `rklu unlearn`, the teacher cache built from the declared roles
    tok, _, _, _ = tiny_paired_batch(4, max_length=128)
    model_dir = tmp_path / "tiny"
    build_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "toy"
    assert main(["unlearn", "--preset", "tiny-cpu", "--model", str(model_dir), "--method", "toy+kl",
                 "--forget", "tofu:forget01[:4]", "--retain", "tofu:full[3600:3604]", "--max-length", "128",
                 "--epochs", "1", "--batch-size", "4", "--effective-batch-size", "4", "--teacher-cache", "disk",
                 "--no-progress", "--output-dir", str(out)]) == 0
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "completed" and status["method"] == "toy+kl" and status["steps"] == 1
    assert sorted(p.name for p in (out / "teacher_cache").glob("*.pt")) == ["original-forget.pt", "original-retain.pt"]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["train_toy_kl"] >= 0 and record["train_retain_kl"] >= 0
    assert (out / "model" / "model.safetensors").is_file()
