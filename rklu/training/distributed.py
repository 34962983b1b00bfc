"""Several processes (``torchrun`` / ``accelerate launch``): which parallel mode a run uses, rank-0-only
writes, and FSDP2 sharding of the student and the frozen teachers.

Modes (``RunConfig.parallel``):

* ``ddp``: every rank holds the whole student; Trainer/accelerate wraps it in DDP. The student's hidden
  states go through the DDP wrapper's forward (see ``rklu.models.heads``), so its gradient all-reduce is
  armed; the lm_head weight is replicated, so the fused kernels read it directly.
* ``fsdp2``: ``torch.distributed.fsdp.fully_shard`` on every decoder layer and on the whole model (the
  root unit holds embeddings, final norm and lm_head — tied or not, one unit). The method's whole loss
  runs inside a forward method registered with ``register_fsdp_forward_method`` on the root, so the
  lm_head weight the fused kernel reads is the all-gathered one and its gradient is reduce-scattered
  (see :func:`rklu.models.heads.managed_call`). Frozen teachers are sharded the same way except their
  lm_head, which stays replicated (their head is read after their forward has resharded).
* ``auto``: ``fsdp2`` when launched by ``accelerate launch`` with an FSDP config, else ``ddp``.

We shard the model ourselves, before Trainer sees it: accelerate's ``fsdp2_prepare_model`` leaves an
already sharded model as it is, and its own layout puts the lm_head in a separate unit that is gathered
only when the head module itself runs — which ours never does.
"""
from __future__ import annotations

import contextlib
import os

import torch

PARALLEL_MODES = ("auto", "ddp", "fsdp2")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def resolve_mode(parallel: str) -> str:
    """``none`` (one process), ``ddp`` or ``fsdp2``."""
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {', '.join(PARALLEL_MODES)}, got {parallel!r}")
    if not is_distributed():
        return "none"
    from_accelerate = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if from_accelerate and os.environ.get("FSDP_VERSION", "2") != "2":
        raise ValueError("FSDP version 1 is not supported: the fused loss needs FSDP2 (fsdp_version: 2 in the "
                         "accelerate config)")
    if parallel == "auto":
        return "fsdp2" if from_accelerate else "ddp"
    if parallel == "ddp" and from_accelerate:
        raise ValueError("parallel ddp, but accelerate was launched with an FSDP config")
    return parallel


def init() -> None:
    """Start the process group early (gloo on CPU, nccl on GPU), through accelerate's state so Trainer
    reuses it: stages need barriers before the Trainer exists."""
    if not is_distributed():
        return
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())


def barrier() -> None:
    if is_distributed() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. writes a file), the others after it has finished."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_reduce_sums(values: dict[str, float], count: int) -> tuple[dict[str, float], int]:
    """Sum per-rank running sums and counts over the ranks (every rank gets the totals). Keys are the
    same on every rank (the method's terms), sorted for a fixed order."""
    if not (is_distributed() and torch.distributed.is_initialized()):
        return values, count
    keys = sorted(values)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    packed = torch.tensor([values[k] for k in keys] + [float(count)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(packed)
    totals = packed.tolist()
    return dict(zip(keys, totals[:-1])), int(round(totals[-1]))


def is_peer_failure(error: BaseException) -> bool:
    """A collective that failed because another rank went away (gloo: the peer's socket closed; NCCL: a
    backend error or a watchdog timeout), not an error of this rank's own."""
    backend_error = getattr(torch.distributed, "DistBackendError", ())
    if backend_error and isinstance(error, backend_error):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("gloo" in text or "NCCL" in text) and \
        any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "remote worker", "Timed out"))


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (collective): decisions that change the sequence of
    collectives (stop, skip a micro-batch) must be taken by all ranks together, or the others hang."""
    if not (is_distributed() and torch.distributed.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def _mesh():
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (world_size(),))


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated transformer blocks (HF's ``_no_split_modules`` classes), each one FSDP unit."""
    from ..models.heads import unwrap

    inner = unwrap(model)
    names = set(getattr(inner, "_no_split_modules", None) or ())
    layers = [m for m in inner.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"cannot find the decoder layers of {type(inner).__name__} to shard with FSDP2 "
                         "(no _no_split_modules)")
    return layers


def mixed_precision_policy(model):
    """fp32 master weights -> compute in bf16 on GPU with fp32 gradient reduction; bf16 weights -> as they are."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = next(model.parameters()).dtype
    if dtype == torch.float32 and torch.cuda.is_available() and os.environ.get("ACCELERATE_MIXED_PRECISION") == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_fsdp2(model, *, frozen: bool = False):
    """``fully_shard`` each decoder layer and the root, in place; registers the root's managed forward
    method. ``frozen`` (a teacher): the lm_head weight (and bias) is left out of FSDP — replicated — since
    the fused kernel reads it after the teacher's forward has returned and resharded the root."""
    try:
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    except ImportError:
        raise ImportError(f"FSDP2 needs torch >= 2.7 (fully_shard with ignored_params); this is torch "
                          f"{torch.__version__}: upgrade, or use parallel: ddp") from None

    from ..models.heads import MANAGED_METHOD, output_head, unwrap

    inner = unwrap(model)
    if inner is not model:
        raise ValueError("FSDP2 here is for full-parameter training of a plain Hugging Face model "
                         "(no LoRA/peft wrapper); use parallel: ddp with --lora")
    mesh = _mesh()
    policy = mixed_precision_policy(model)
    if frozen and torch.cuda.is_available():
        # ignored params are not moved by fully_shard; the replicated head must be on the GPU itself
        weight, bias = output_head(model)
        weight.data = weight.data.to(mesh.device_type)
        if bias is not None:
            bias.data = bias.data.to(mesh.device_type)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    ignored = None
    if frozen:
        weight, bias = output_head(model)
        ignored = {p for p in (weight, bias) if p is not None}
    # The student's root stays gathered from forward to backward (FSDP2's root default): the loss reads
    # the head in the forward and the backward needs it again. A teacher has no backward: reshard.
    fully_shard(model, mesh=mesh, mp_policy=policy, ignored_params=ignored,
                reshard_after_forward=True if frozen else None)
    model.__dict__[MANAGED_METHOD] = _run.__get__(model, type(model))
    register_fsdp_forward_method(model, MANAGED_METHOD)
    return model


def _run(self, fn, *args, **kwargs):
    return fn(*args, **kwargs)


def full_state_dict(model) -> dict:
    """The unsharded state dict of an FSDP2 model on CPU (collective: every rank calls it; rank 0 gets
    the tensors, the others an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return drop_tied_copies(model, get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))


def drop_tied_copies(model, state_dict: dict) -> dict:
    """A gathered state dict holds tied weights (lm_head = embed_tokens) as separate tensors, so
    ``save_pretrained`` cannot see they are shared; keep the first name of each shared parameter, as an
    unsharded model's save would."""
    seen, drop = {}, set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            drop.add(name)
        else:
            seen[id(param)] = name
    return {k: v for k, v in state_dict.items() if k not in drop}


def is_fsdp2(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
