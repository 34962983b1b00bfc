"""Per-GPU memory of a full-parameter RKLU run, by formula (the table in docs/multi-gpu.md comes from
``python -m rklu.training.memory_plan``). An estimate for choosing a launch config, not a measurement.

Terms, for P parameters sharded over N GPUs (FSDP2; DDP replicates, N = 1 in the sharded terms):

* student weights, gradients, AdamW's two moments: P * bytes each / N; bytes = 4 with fp32 master
  weights (bf16 compute through FSDP's MixedPrecisionPolicy), 2 with bf16 weights (AdamW then keeps its
  moments in bf16 too — cheaper, and lossier);
* two frozen bf16 teachers (original, augmented): their blocks sharded, 2 (P - V H) / N bytes each, and
  their lm_head replicated, 2 V H bytes each (the fused kernel reads it after the teacher's forward); with
  the teacher cache only the two heads stay on the GPU (hidden states live in host memory or on disk);
* FSDP's gathered working set: the student's root unit (embeddings + lm_head, bf16, gathered from the
  loss's forward to its backward) with its unsharded gradient (reduced in fp32), two gathered decoder
  layers (current + prefetch) and one layer's unsharded gradient;
* activations with gradient checkpointing: every layer's input [B, T, H] kept, one layer recomputed at a
  time (~ B T (8 H + 3 I) values: q/k/v/o, residuals, the MLP's gate/up/act; attention by SDPA/flash, no
  T^2 term), for each student pass held until backward (rklu+kl: forget and retain), plus the teachers'
  final hidden states fed to the loss (rklu+kl: 3 of [B, T, H]);
* the fused loss's workspace: one fp32 [V, H] buffer for the head's gradient (no [tokens x V] logits);
* a fixed 2 GiB for the CUDA context, NCCL buffers and allocator slack.
"""
from __future__ import annotations

from dataclasses import dataclass

GIB = 1024 ** 3


@dataclass(frozen=True)
class ModelShape:
    name: str
    vocab: int
    hidden: int
    layers: int
    intermediate: int
    tied: bool = False

    def layer_params(self) -> int:
        # q, k, v, o (no GQA in Llama-2-7B) + gate, up, down + two RMSNorm weights
        return 4 * self.hidden ** 2 + 3 * self.hidden * self.intermediate + 2 * self.hidden

    def head_params(self) -> int:
        return self.vocab * self.hidden

    def params(self) -> int:
        embeddings = self.head_params() * (1 if self.tied else 2)
        return embeddings + self.layers * self.layer_params() + self.hidden  # + final norm


LLAMA2_7B = ModelShape("Llama-2-7B", vocab=32000, hidden=4096, layers=32, intermediate=11008)


@dataclass(frozen=True)
class Setup:
    name: str
    parallel: str = "fsdp2"        # fsdp2 | ddp | ddp-lora
    master: str = "fp32"           # fp32 (bf16 compute) | bf16
    teachers: str = "sharded"      # sharded (fsdp2) / replicated (ddp) | cache
    batch: int = 4                 # rows per GPU per micro-batch (the paper: 4)
    seq: int = 512                 # tokens per row (TOFU: max_length 500)
    student_passes: int = 2        # rklu+kl: forget + retain
    teacher_hiddens: int = 3       # rklu+kl: original on forget and retain, augmented on forget
    lora_params: int = 4_194_304   # r=8 on q_proj, v_proj of 32 layers: 32 * 2 * 8 * (4096 + 4096)


SETUPS = (
    Setup("FSDP2, fp32 master, 2 teachers sharded"),
    Setup("FSDP2, fp32 master, teacher cache", teachers="cache"),
    Setup("FSDP2, bf16 weights, 2 teachers sharded", master="bf16"),
    Setup("FSDP2, bf16 weights, teacher cache", master="bf16", teachers="cache"),
    Setup("DDP + LoRA (bf16 base = both teachers)", parallel="ddp-lora", master="bf16", teachers="adapters"),
    Setup("DDP full-parameter, fp32 master, 2 teachers", parallel="ddp", teachers="replicated"),
)
CARDS = ((2, 80), (4, 80), (8, 80), (2, 24), (4, 24), (8, 24))  # (GPUs, GiB each)


def plan(shape: ModelShape, setup: Setup, gpus: int) -> dict[str, float]:
    """Bytes per GPU, by term."""
    P, V, H, I, L = shape.params(), shape.vocab, shape.hidden, shape.intermediate, shape.layers
    head, layer = shape.head_params(), shape.layer_params()
    B, T = setup.batch, setup.seq
    terms: dict[str, float] = {}
    if setup.parallel == "ddp-lora":
        terms["base weights (bf16, shared by student and teachers)"] = 2 * P
        # adapters: fp32 weights, grads, two moments; the augmented teacher's adapter in bf16
        terms["LoRA adapters + AdamW"] = 16 * setup.lora_params + 2 * setup.lora_params
    else:
        n = gpus if setup.parallel == "fsdp2" else 1
        nbytes = 4 if setup.master == "fp32" else 2
        terms["student weights"] = P * nbytes / n
        terms["student gradients"] = P * nbytes / n
        terms["AdamW moments"] = 2 * P * nbytes / n
        if setup.teachers == "cache":
            terms["teachers (cache: lm_heads only)"] = 2 * 2 * head
        else:
            terms["teachers (2 frozen, bf16)"] = 2 * (2 * (P - head) / n + 2 * head)
        if setup.parallel == "fsdp2":
            root = head * (1 if shape.tied else 2)
            terms["FSDP gathered units"] = root * (2 + 4) + 2 * layer * 2 + layer * 4
    act_per_pass = L * B * T * H * 2 + B * T * H * 2 + B * T * (8 * H + 3 * I) * 2
    terms["activations (checkpointed)"] = setup.student_passes * act_per_pass + setup.teacher_hiddens * B * T * H * 2
    terms["fused loss workspace"] = V * H * 4
    terms["CUDA context, NCCL, allocator slack"] = 2 * GIB
    return terms


def total_gib(shape: ModelShape, setup: Setup, gpus: int) -> float:
    return sum(plan(shape, setup, gpus).values()) / GIB


def cell(gib: float, capacity: int) -> str:
    if gib > capacity:
        return f"{gib:.1f} ✗"
    return f"{gib:.1f} ✓" + (" (tight)" if gib > 0.9 * capacity else "")


def markdown_table(shape: ModelShape = LLAMA2_7B, setups=SETUPS, cards=CARDS) -> str:
    header = "| per-GPU GiB | " + " | ".join(f"{n} × {c} GB" for n, c in cards) + " |"
    lines = [header, "|---|" + "---|" * len(cards)]
    for setup in setups:
        lines.append(f"| {setup.name} | " + " | ".join(cell(total_gib(shape, setup, n), c) for n, c in cards) + " |")
    return "\n".join(lines)


def breakdown(shape: ModelShape, setup: Setup, gpus: int) -> str:
    rows = [f"| {k} | {v / GIB:.2f} |" for k, v in plan(shape, setup, gpus).items()]
    return "\n".join([f"| {setup.name}, {gpus} GPUs | GiB |", "|---|---|", *rows,
                      f"| **total** | **{total_gib(shape, setup, gpus):.2f}** |"])


if __name__ == "__main__":
    print(f"{LLAMA2_7B.name}: {LLAMA2_7B.params():,} parameters; batch {SETUPS[0].batch} x {SETUPS[0].seq} "
          "tokens per GPU, gradient checkpointing, rklu+kl\n")
    print(markdown_table())
    print()
    print(breakdown(LLAMA2_7B, SETUPS[0], 2))
