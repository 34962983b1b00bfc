"""Multi-process `rklu unlearn` on CPU (gloo, 2 ranks through torchrun): FSDP2 (fully_shard, the loss
inside a registered FSDP forward) and DDP end at the weights of a single-process run with the same
global batch and seed; a run stopped after step k resumes to the same weights; only rank 0 writes.

Why the runs must agree exactly: each method's loss is a mean over one micro-batch of ``batch_size``
rows. Two ranks x 2 rows x 2 accumulation steps and one process x 2 rows x 4 accumulation steps see the
same micro-batches (accelerate gives rank r the batches r, r+2, ... of the same seeded order) and average
the same four gradients; only the summation order differs (float rounding, ~1e-7 relative). No dropout
anywhere (Llama has none, attention_dropout 0, lora_dropout 0): ranks draw from different RNG streams.
The student is a tiny Llama with tied embeddings (lm_head = embed_tokens, as SmolLM2), the hard case for
FSDP: the head weight the fused kernel reads must be the gathered one, and its gradient reduce-scattered.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rklu.cli import main

HERE = Path(__file__).parent
COMMON = ["--preset", "tiny-cpu", "--max-length", "96", "--no-progress", "--forget", "tofu:forget01[:16]",
          "--retain", "tofu:full[3600:3632]", "--epochs", "2", "--batch-size", "2", "--effective-batch-size", "8",
          "--lr-schedule", "linear", "--warmup-epochs", "0.5", "--learning-rate", "3e-3"]
STOP_AT = 2  # of 4 optimizer steps (2 per epoch): the resume starts mid-epoch 1, from checkpoint-1
TIMES = {}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tied-embedding tiny Llama as the original, and a perturbed copy as the augmented model."""
    from rklu.data.tofu import idk_answers
    from rklu.data.qa import load_qa
    from rklu.models.tiny import build_tiny_llama, qa_texts, train_bpe_tokenizer

    root = tmp_path_factory.mktemp("dist-models")
    texts = qa_texts(load_qa("tofu:forget01")) + qa_texts(load_qa("tofu:full[3600:3632]")) + idk_answers()
    tokenizer = train_bpe_tokenizer(texts, vocab_size=1000)
    model = build_tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                             max_position_embeddings=96, seed=0, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(root / "orig")
    tokenizer.save_pretrained(root / "orig")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    model.save_pretrained(root / "aug")
    tokenizer.save_pretrained(root / "aug")
    return root


def _args(models, out, method, *extra):
    return ["unlearn", *COMMON, "--model", str(models / "orig"), "--augmented", str(models / "aug"),
            "--method", method, "--output-dir", str(out), *extra]


def _accelerate_env(config):
    """The FSDP settings `accelerate launch --config_file config` gives each process (not its bf16 mixed
    precision: CPU runs compare fp32 weights)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(["--config_file", str(config), "x.py"]))
    return {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))}


def _launch(tmp_path, runs, name, extra_env=None):
    """One torchrun launch of 2 ranks running ``runs`` in turn; returns the log folder."""
    log_dir = tmp_path / f"log-{name}"
    log_dir.mkdir()
    spec = tmp_path / f"spec-{name}.json"
    spec.write_text(json.dumps({"log_dir": str(log_dir), "runs": runs}))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **(extra_env or {}))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(HERE / "distributed_worker.py"), str(spec)],
                          env=env, capture_output=True, text=True, timeout=600)
    TIMES[name] = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return log_dir


def _weights(run):
    return load_file(str(run / "model" / "model.safetensors"))


def max_relative_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp_min(1e-30)) for k in a)


def _check_equal_to_single(run, single, models):
    got, want = _weights(run), _weights(single)
    difference = max_relative_difference(got, want)
    # the runs really trained: the weights moved far more than the tolerance
    start = load_file(str(models / "orig" / "model.safetensors"))
    moved = max(float((want[k] - start[k]).norm() / start[k].norm()) for k in start)
    print(f"{run.name}: max relative weight difference vs single process {difference:.2e} (moved {moved:.1e})")
    assert difference <= 1e-5
    assert moved > 1e-3
    # epoch metrics: means over every micro-batch of every rank = the single process's
    mine, ref = (json.loads((r / "metrics.json").read_text()) for r in (run, single))
    assert [r["epoch"] for r in mine] == [1, 2]
    for a, b in zip(mine, ref):
        for key in ("train_loss", "train_forget_loss", "train_retain_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7)
    return difference


def _check_rank0_writes(log_dir, runs_root, parallel):
    rank1 = log_dir / "writes-rank1.txt"
    assert not rank1.exists(), f"rank 1 wrote files: {rank1.read_text()[:500]}"
    written = (log_dir / "writes-rank0.txt").read_text().splitlines()
    assert any(p.endswith("run.json") for p in written) and any(p.endswith("metrics.json") for p in written)
    # every result file written once per event (no duplicate writers racing on one path)
    for run in runs_root.iterdir():
        if not (run / "run.json").is_file():
            continue
        status = json.loads((run / "run.json").read_text())
        assert status["world_size"] == 2 and status["parallel"] == parallel
        for checkpoint in (run / "checkpoints").iterdir():
            names = sorted(p.name for p in checkpoint.iterdir())
            weights = [n for n in names if n in ("model.safetensors", "adapter_model.safetensors")]
            assert len(weights) == 1 and "trainer_state.json" in names
            assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(names)


@pytest.fixture(scope="module")
def single(models, tmp_path_factory):
    """The single-process references (same global batch 8 = 2 rows x 4 accumulation steps)."""
    root = tmp_path_factory.mktemp("single")
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank; the CI machine has 2 cores
    try:
        for method in ("rklu+kl", "npo+rt"):
            assert main(_args(models, root / method, method)) == 0
        # LoRA: original teacher = the student's base with adapters off; saved merged
        assert main(_args(models, root / "rklu+kl-lora", "rklu+kl", "--lora", "--lora-r", "4")) == 0
    finally:
        torch.set_num_threads(threads)
    TIMES["single"] = time.perf_counter() - start
    return root


@pytest.mark.parametrize("parallel", ["fsdp2", "ddp"])
def test_multi_process_equals_single_process_and_resumes(parallel, models, single, tmp_path):
    runs = tmp_path / "runs"
    # FSDP2 as the shipped accelerate config selects it (parallel auto); DDP as torchrun users ask for it
    extra = ["--parallel", "auto" if parallel == "fsdp2" else "ddp"]
    env = _accelerate_env(HERE.parents[1] / "configs" / "accelerate" / "2gpu-fsdp2-full-7b.yaml") if parallel == "fsdp2" else {}
    # DDP's rklu+kl takes the teachers from a disk cache (rank 0 writes it, rank 1 maps it); FSDP2 shards them
    kl_extra = extra + (["--teacher-cache", "disk"] if parallel == "ddp" else [])
    # checkpoints every step, a crash after step STOP_AT, then --resume; FSDP2 with the teacher cache in
    # memory here (each rank computes it; the student is sharded afterwards), to be compared with the run
    # with sharded live teachers
    cut_extra = ["--save-every-steps", "1", *extra] + (["--teacher-cache", "memory"] if parallel == "fsdp2" else [])
    cut_runs = [
        {"argv": _args(models, runs / "npo+rt-cut", "npo+rt", *cut_extra), "stop_at": STOP_AT},
        {"argv": _args(models, runs / "npo+rt-cut", "npo+rt", "--resume", *cut_extra)},
    ]
    lora_runs = [  # DDP only: FSDP2 is full-parameter
        {"argv": _args(models, runs / "rklu+kl-lora", "rklu+kl", "--lora", "--lora-r", "4", *extra)},
    ] if parallel == "ddp" else []
    log_dir = _launch(tmp_path, [
        {"argv": _args(models, runs / "rklu+kl", "rklu+kl", *kl_extra)},
        {"argv": _args(models, runs / "npo+rt", "npo+rt", *extra)},
        *cut_runs, *lora_runs,
    ], parallel, env)
    for rank in (0, 1):
        assert json.loads((log_dir / f"exit-rank{rank}.txt").read_text()) == [0, 0, "crashed", 0] + [0] * len(lora_runs)

    compared = ("rklu+kl", "npo+rt") + (("rklu+kl-lora",) if lora_runs else ())
    differences = [_check_equal_to_single(runs / m, single / m, models) for m in compared]
    TIMES[f"{parallel}-max-rel-diff"] = max(differences)
    _check_rank0_writes(log_dir, runs, parallel)
    if parallel == "ddp":
        assert (runs / "rklu+kl" / "teacher_cache" / "augmented-forget.pt").is_file()
    # the last checkpoint is a whole model folder (gathered weights + tokenizer): `rklu eval` can load it
    last = runs / "npo+rt" / "checkpoints" / "checkpoint-4"
    assert (last / "tokenizer.json").is_file()
    assert max_relative_difference(load_file(str(last / "model.safetensors")), _weights(runs / "npo+rt")) == 0
    # stopped after step 2 (checkpoint-2 not yet written), resumed mid-epoch from checkpoint-1, ends where the
    # uninterrupted run did
    cut = runs / "npo+rt-cut"
    status = json.loads((cut / "run.json").read_text())
    assert status["status"] == "completed" and ("teacher_cache" in status) == (parallel == "fsdp2")
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == [f"checkpoint-{i}" for i in (1, 2, 3, 4)]
    resumed = max_relative_difference(_weights(cut), _weights(runs / "npo+rt"))
    print(f"{parallel}: resumed run vs uninterrupted: max relative weight difference {resumed:.2e}")
    assert resumed <= 1e-5
    print(f"times: {TIMES}")
