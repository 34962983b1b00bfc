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
from rklu.methods.registry import ALPHA, MethodAlias, MethodSpec, hyperparameters, specs
from rklu.models.tiny import build_tiny_llama
from rklu.training.config import RunConfig, resolve_config
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
    "simnpo": {}, "simnpo+rt": {}, "simnpo+kl": {"original": ("retain",)},
    "wga": {}, "wga+rt": {}, "wga+kl": {"original": ("retain",)},
    "satimp": {}, "satimp+rt": {}, "satimp+kl": {"original": ("retain",)},
    "gradiff": {},  # = ga+rt
    "whp": {"original": ("forget",), "augmented": ("forget",)},
    "undial": {"original": ("forget",)}, "undial+rt": {"original": ("forget",)},
    "undial+kl": {"original": ("forget", "retain")},
    "ce-u": {}, "unilogit": {}, "unilogit+rt": {}, "unilogit+kl": {"original": ("retain",)},
    "jensun": {}, "jensun+jsd": {"original": ("retain",)},
    "rmu": {"original": ()},  # loaded, never cached: RMU reads a middle layer's activations, not hidden states
}


def test_builtin_methods_declare_their_teachers_and_data():
    assert set(method_names()) == set(EXPECTED_TEACHER_ROLES)
    for name, expected in EXPECTED_TEACHER_ROLES.items():
        method = get_method(name)
        assert dict(method.teacher_roles) == expected, name
        # RMU's retain activation term is part of its own loss
        assert method.needs_retain == ("+" in method.name or name == "rmu")
        assert method.needs_idk == name.startswith(("dpo", "idk", "jensun"))
        assert method.trains == (name != "task-arithmetic")
    data = {"forget": "F", "retain": "R", "idk": "I"}
    assert cache_roles(get_method("dpo+kl"), data) == {"original": {"forget": "F", "idk": "I", "retain": "R"}}
    assert cache_roles(get_method("ga+rt"), data) == {}
    assert cache_roles(get_method("rmu"), data) == {"original": {}}


def test_hyperparameters_are_config_options_with_their_declared_defaults():
    config = RunConfig(model="m", output_dir="o")
    for hp in hyperparameters():
        assert getattr(config, hp.name) == hp.default and LossContext().hp(hp.name) == hp.default, hp.name
        assert config.to_dict()[hp.name] == hp.default  # recorded with the run's config
    assert "npo_beta" not in {f.name for f in dataclasses.fields(RunConfig)}  # declared once, in the spec
    config = RunConfig(model="m", output_dir="o", npo_beta=0.5)
    assert config.npo_beta == 0.5 and config.method_hyperparameters()["npo_beta"] == 0.5
    assert LossContext(hyperparameters=config.method_hyperparameters()).hp("npo_beta") == 0.5
    for bad, message in ((dict(npo_beta=0.0), "npo_beta must be > 0, got 0.0"),
                         (dict(ta_scale=-1.0), "ta_scale must be >= 0"), (dict(alpha=-1.0), "alpha must be >= 0"),
                         (dict(dpo_beta="x"), "dpo_beta must be a number")):
        with pytest.raises(ValueError, match=message):
            RunConfig(model="m", output_dir="o", **bad).validate("finetune")
    with pytest.raises(TypeError, match="unexpected option 'npo_betta'"):
        RunConfig(npo_betta=0.1)
    with pytest.raises(ValueError, match="unknown option.*npo_betta"):
        RunConfig(model="m", output_dir="o", hyperparameters={"npo_betta": 0.1}).validate("finetune")
    with pytest.raises(KeyError, match="no hyperparameter 'nope'"):
        LossContext().hp("nope")


def test_hyperparameters_come_from_config_files_and_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("npo_beta: 0.2\nunlearn:\n  dpo_beta: 0.3\n")
    cfg = resolve_config("unlearn", "tiny-cpu", path, {"alpha": "2"})
    assert (cfg.npo_beta, cfg.dpo_beta, cfg.alpha, cfg.retain_weight) == (0.2, 0.3, 2.0, 1.0)
    path.write_text("npo_beta: many\n")
    with pytest.raises(ValueError, match="npo_beta: cannot read 'many' as a number"):
        resolve_config("unlearn", None, path)
    unlearn = build_parser()._subparsers._group_actions[0].choices["unlearn"]
    assert unlearn.parse_args(["--npo-beta", "0.7"]).npo_beta == "0.7"  # coerced by the config


@pytest.mark.parametrize("spec, message", [
    (MethodSpec("rklu", None, trains=False, retain_terms=()), "already registered"),
    (MethodSpec("x+y", lambda ctx, batch: None), "without '\\+'"),
    (MethodSpec("x", lambda ctx, batch: None, teachers={"student": ("forget",)}), "unknown teacher 'student'"),
    (MethodSpec("x", lambda ctx, batch: None, teachers={"original": ("retain",)}), "loss reads only"),
    (MethodSpec("x", lambda ctx, batch: None, retain_terms=("rt", "ce")), "unknown retain term"),
    (MethodSpec("x", None), "a method that trains has a loss"),
    (MethodSpec("gradiff", lambda ctx, batch: None), "already registered"),
    (MethodAlias("ga", "rklu"), "already registered"),
    (MethodAlias("x", "ga+ce"), "unknown unlearning method 'ga\\+ce'"),
])
def test_inconsistent_methods_are_refused_at_registration(spec, message):
    before = method_names()
    with pytest.raises(ValueError, match=message):
        register(spec)
    assert method_names() == before


TOY_METHOD = textwrap.dedent('''
    """A toy method: reverse KL to the original model alone on the forget data (no augmented teacher),
    scaled by its own hyperparameter."""
    import torch

    from rklu.methods.common import unlearning_kl
    from rklu.methods.registry import ALPHA, Hyperparameter, MethodSpec


    def toy_loss(ctx, batch):
        loss = unlearning_kl(ctx, "forget", batch, direction="reverse", with_augmented=False)
        scale = ctx.hp("toy_scale")
        return scale * loss, {"toy_kl": loss.detach(), "toy_scale": torch.tensor(scale)}


    METHOD = MethodSpec("toy", toy_loss, teachers={"original": ("forget",)},
                        hyperparameters=(ALPHA, Hyperparameter("toy_scale", 1.0, strict=True, help="toy scale")),
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
    assert RunConfig(model="m", output_dir="o").toy_scale == 1.0  # an option with its declared default
    with pytest.raises(ValueError, match="toy_scale must be > 0"):
        RunConfig(model="m", output_dir="o", toy_scale=0).validate("unlearn")
    assert "--toy-scale" in build_parser()._subparsers._group_actions[0].choices["unlearn"].format_help()

    # one training step through `rklu unlearn`, the teacher cache built from the declared roles
    tok, _, _, _ = tiny_paired_batch(4, max_length=128)
    model_dir = tmp_path / "tiny"
    build_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "toy"
    assert main(["unlearn", "--preset", "tiny-cpu", "--model", str(model_dir), "--method", "toy+kl",
                 "--forget", "tofu:forget01[:4]", "--retain", "tofu:full[3600:3604]", "--max-length", "128",
                 "--epochs", "1", "--batch-size", "4", "--effective-batch-size", "4", "--teacher-cache", "disk",
                 "--toy-scale", "0.25", "--no-progress", "--output-dir", str(out)]) == 0
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "completed" and status["method"] == "toy+kl" and status["steps"] == 1
    assert sorted(p.name for p in (out / "teacher_cache").glob("*.pt")) == ["original-forget.pt", "original-retain.pt"]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["train_toy_kl"] >= 0 and record["train_retain_kl"] >= 0
    assert record["train_toy_scale"] == 0.25  # the flag, derived from the spec, reached the loss
    assert json.loads((out / "config.json").read_text())["toy_scale"] == 0.25  # and the run's config
    assert (out / "model" / "model.safetensors").is_file()
