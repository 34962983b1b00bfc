"""The shipped accelerate configs (1, 2, 4, 8 GPUs; DDP+LoRA and FSDP2 full-parameter) and the memory plan
of docs/multi-gpu.md."""
import re
from pathlib import Path

import pytest

from rklu.training import distributed
from rklu.training.memory_plan import GIB, LLAMA2_7B, SETUPS, Setup, markdown_table, plan

ROOT = Path(__file__).parents[2]
CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def _launch_env(path):
    """The environment `accelerate launch --config_file path` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(path), "script.py"])
    args, _, _ = _validate_launch_command(args)
    return (prepare_multi_gpu_env(args) if args.num_processes > 1 else {}), args.num_processes


def test_shipped_configs_cover_1_2_4_8_gpus():
    names = {p.name for p in CONFIGS}
    assert "1gpu.yaml" in names
    for n in (2, 4, 8):
        assert {f"{n}gpu-ddp-lora-7b.yaml", f"{n}gpu-fsdp2-full-7b.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_selects_the_parallel_mode(path, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    gpus = int(re.match(r"(\d+)gpu", path.name).group(1))
    assert config.num_processes == gpus and config.mixed_precision == "bf16"
    if "fsdp2" in path.name:
        assert str(config.distributed_type) == "DistributedType.FSDP"
        assert config.fsdp_config["fsdp_version"] == 2
    env, processes = _launch_env(path)
    assert processes == gpus
    for key in ("ACCELERATE_USE_FSDP", "FSDP_VERSION"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        if key.startswith(("ACCELERATE_USE_FSDP", "FSDP_VERSION")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("WORLD_SIZE", str(gpus))
    expected = {True: "fsdp2", False: "ddp"}["fsdp2" in path.name] if gpus > 1 else "none"
    assert distributed.resolve_mode("auto") == expected


def test_fsdp1_and_lora_with_fsdp2_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match="FSDP version 1"):
        distributed.resolve_mode("auto")
    from rklu.training.config import resolve_config

    cfg = resolve_config("unlearn", "tiny-cpu", None, dict(model="m", output_dir="o", lora=True, parallel="fsdp2"))
    with pytest.raises(ValueError, match="with lora use parallel ddp"):
        cfg.validate("unlearn")


def test_memory_formula_on_a_hand_computed_case():
    # Llama-2-7B's published parameter count, from its shape
    assert LLAMA2_7B.params() == 6_738_415_616
    # FSDP2 on 4 GPUs, fp32 master weights, two sharded bf16 teachers, batch 4 x 512, rklu+kl (by hand):
    P, head, layer = 6_738_415_616, 32000 * 4096, 202_383_360
    assert LLAMA2_7B.layer_params() == layer
    terms = plan(LLAMA2_7B, SETUPS[0], 4)
    assert terms["student weights"] == terms["student gradients"] == P * 4 / 4
    assert terms["AdamW moments"] == 2 * P * 4 / 4
    assert terms["teachers (2 frozen, bf16)"] == 2 * (2 * (P - head) / 4 + 2 * head)
    assert terms["FSDP gathered units"] == 2 * head * 6 + layer * 8
    per_pass = 32 * 4 * 512 * 4096 * 2 + 4 * 512 * 4096 * 2 + 4 * 512 * (8 * 4096 + 3 * 11008) * 2
    assert terms["activations (checkpointed)"] == 2 * per_pass + 3 * 4 * 512 * 4096 * 2
    total = 4 * P + 2 * (2 * (P - head) / 4 + 2 * head) + 2 * head * 6 + layer * 8 + 2 * per_pass \
        + 3 * 4 * 512 * 4096 * 2 + 32000 * 4096 * 4 + 2 * GIB
    assert sum(terms.values()) == pytest.approx(total)
    assert 38 < total / GIB < 40  # 38.8 GiB: fits 4 x 80 GB, not 4 x 24 GB
    # halving the GPUs doubles every sharded term; DDP does not shard
    assert plan(LLAMA2_7B, SETUPS[0], 2)["AdamW moments"] == 2 * terms["AdamW moments"]
    ddp = Setup("ddp", parallel="ddp", teachers="replicated")
    assert plan(LLAMA2_7B, ddp, 8)["AdamW moments"] == 8 * P


def test_docs_table_is_the_scripts_output():
    text = (ROOT / "docs" / "multi-gpu.md").read_text(encoding="utf-8")
    assert markdown_table() in text, "docs/multi-gpu.md: regenerate with python -m rklu.training.memory_plan"


def test_multi_process_refusals(monkeypatch):
    """What would leave ranks out of step is refused before anything runs."""
    from rklu.training.config import resolve_config
    from rklu.training.stages import _parallel_mode

    monkeypatch.setenv("WORLD_SIZE", "2")
    base = dict(model="m", output_dir="o")
    skip = resolve_config("unlearn", "tiny-cpu", None, dict(base, nonfinite="skip")).validate("unlearn")
    with pytest.raises(ValueError, match="single-process"):
        _parallel_mode(skip, None)
    fsdp = resolve_config("unlearn", "tiny-cpu", None, dict(base, parallel="fsdp2")).validate("unlearn")
    with pytest.raises(ValueError, match="--eval-tofu"):
        _parallel_mode(fsdp, evaluate=lambda model, epoch: {})
