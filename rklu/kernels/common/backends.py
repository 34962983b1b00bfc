"""The one registry of backends for both fused ops (``"kl"``: the unlearning KL, ``"logprob"``: the label
log-prob). A backend is a name, the ops it implements (each an importable ``"module:function"``, imported on
first use so that importing ``rklu.kernels`` does not import Triton), and a check that it can run on a device.
Both ops' public entry points, the accepted ``backend=`` names and ``RunConfig.kl_backend`` come from here.

Adding a backend: a module with the op function(s) and one ``register(Backend(...))`` line below. An op
function receives the counted rows only (ignored tokens dropped, teachers detached):

    kl       fn(xs, ws, bs, xo, wo, bo, xa, wa, ba, *, alpha, direction, grad_in_forward, chunk_tokens,
                grad_filter, transforms, teacher_source="models", jsd_beta=0.5, targets=None,
                target_shift=None) -> per-token loss [N]
    logprob  fn(x, w, b, labels, *, chunk_tokens, transform) -> per-token log p(label) [N]
(``transforms``: the student's, original's and augmented's ``LogitTransform``, with the objective's temperature
already folded in; ``transform``: the head's; common/logit_transform.py.)

The KL op's objective (kl/objective.py; ``KLObjective.check`` ran in the API, backends do not validate):
``direction`` is the divergence, "reverse" | "forward" | "jsd" (0 < ``jsd_beta`` < 1) | "argmax_ce";
``teacher_source`` "models" (the original, edited by the augmented model when xa is given), "self" (the
student's own logits, detached: xo, wo, bo are the student's and transforms[1] is transforms[0], so a backend
may reuse its student tile instead of a second GEMM) or "labels" (one-hot on ``targets``, xo ignored);
``targets`` int64 [N] in [0, V), given with the labels teacher or a ``target_shift``; ``target_shift`` [N]
(float32, float64 for float64 inputs; any finite value or +inf) subtracted from the teacher's logit at
``targets`` after the source. The API passes these four only when the objective needs them (a teacher other
than "models", a target edit, or a divergence other than the reverse / forward KL), so the default calls
every backend exactly as before.

``"auto"`` is not a backend but the policy ``auto_backend``: torch off CUDA, on CUDA the chunk policy's choice
(``kl.chunk_policy.choose_cuda_backend``) for the KL and Triton for the log-prob. The chunked KL op also takes
``max_chunk_bytes`` and ``memory_fraction`` (kl/api.py passes them to it alone).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

OPS = ("kl", "logprob")
AUTO = "auto"


@dataclass(frozen=True)
class Backend:
    name: str
    ops: dict = field(default_factory=dict)  # op -> "module:function"
    # check(name, device) raises (ValueError / RuntimeError naming the reason) when it cannot run on device.
    check: Callable[[str, torch.device], None] | None = None

    def function(self, op: str) -> Callable:
        module, _, attr = self.ops[op].partition(":")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    if backend.name == AUTO or backend.name in _REGISTRY:
        raise ValueError(f"backend name {backend.name!r} is reserved or already registered")
    unknown = sorted(set(backend.ops) - set(OPS))
    if not backend.ops or unknown:
        raise ValueError(f"backend {backend.name!r}: ops must be a non-empty subset of {OPS}, got {sorted(backend.ops)}")
    _REGISTRY[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> Backend:
    check_name(name)
    if name == AUTO:
        raise ValueError("'auto' is a policy, not a backend: resolve it first")
    return _REGISTRY[name]


def names(op: str | None = None) -> tuple[str, ...]:
    """Registered backends (those implementing ``op`` when given), in registration order."""
    return tuple(n for n, b in _REGISTRY.items() if op is None or op in b.ops)


def choices(op: str | None = None) -> tuple[str, ...]:
    """What ``backend=`` accepts: ``"auto"`` and the registered backends (of ``op`` when given)."""
    return (AUTO, *names(op))


def check_name(backend: str, op: str | None = None) -> None:
    """ValueError unless ``backend`` is ``"auto"`` or a registered backend (implementing ``op`` when given)."""
    if backend not in choices():
        raise ValueError(f"unknown backend {backend!r}; expected one of {choices()}")
    if op is not None and backend not in choices(op):
        raise ValueError(f"backend {backend!r} does not implement the {op} op; expected one of {choices(op)}")


def resolve(op: str, backend: str, device: torch.device, problem: dict | None = None) -> str:
    """The backend ``op`` runs on: ``auto_backend`` for ``"auto"``, else ``backend`` once it is known to
    implement ``op`` and to run on ``device``."""
    check_name(backend, op)
    if backend == AUTO:
        return auto_backend(op, device, problem)
    check = get(backend).check
    if check is not None:
        check(backend, device)
    return backend


def resolve_for_run(backend: str, device: torch.device, problem: dict | None = None) -> dict[str, str]:
    """Each op's backend for a whole run, resolved once, so that every call of a run (the forget and retain
    terms of one step, every step) runs the same one: ``{"kl": ..., "logprob": ...}``. ``backend`` is the
    run's KL backend (``problem`` as for ``auto_backend``: the largest call of the run); the log-prob takes
    the same name when it implements the log-prob, else (a KL-only backend such as ``"chunked"``) its own
    ``"auto"`` choice, stated in the result rather than reinterpreted per call."""
    kl = resolve("kl", backend, device, problem)
    logprob = kl if kl in names("logprob") else resolve("logprob", AUTO, device)
    return {"kl": kl, "logprob": logprob}


def function(op: str, backend: str) -> Callable:
    """The op function of a resolved backend."""
    check_name(backend, op)
    return get(backend).function(op)


def auto_backend(op: str, device: torch.device, problem: dict | None = None) -> str:
    """``"torch"`` off CUDA (or without Triton). On CUDA: the log-prob runs on ``"triton"``; the KL, given the
    ``problem`` (n, h, v, dtype "bf16"/"fp32", augmented, reverse, grad_filter), on ``"chunked"`` whenever its
    smallest chunk plan (128-token chunks, or all N) fits in a quarter of the free GPU memory
    (torch.cuda.mem_get_info; ``kl.chunk_policy.choose_cuda_backend``); else (also when no problem is given)
    on the O(N)-memory ``"triton"`` kernel."""
    if device.type != "cuda" or not triton_available(device):
        return "torch"
    if op != "kl" or problem is None:
        return "triton"
    from ..kl.chunk_policy import choose_cuda_backend

    free, _ = torch.cuda.mem_get_info(device)
    return choose_cuda_backend(free_bytes=free, **problem)


def triton_available(device: torch.device) -> bool:
    """Triton runs on CUDA devices, or anywhere under TRITON_INTERPRET=1 (CPU tensors, numpy-backed)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return device.type == "cuda"


def needs_triton(backend: str, device: torch.device) -> None:
    if not triton_available(device):
        raise ValueError(
            f"backend={backend!r} needs a CUDA device or TRITON_INTERPRET=1 (tensors are on {device}); "
            "use backend='torch' or 'auto'")
    if device.type != "cuda":
        _check_interpreter_version()


# Triton 3.6's interpreter cannot run a loop whose bounds depend on tl.program_id ("only 0-dimensional arrays
# can be converted to Python scalars"); 3.7, 3.8 and 3.9 can. Compiled CUDA runs are not affected.
MIN_INTERPRETER_TRITON = (3, 7)


def _check_interpreter_version() -> None:
    import triton

    version = tuple(int(p) for p in triton.__version__.split("+")[0].split(".")[:2])
    if version < MIN_INTERPRETER_TRITON:
        raise RuntimeError(
            f"TRITON_INTERPRET=1 (the Triton backends on CPU) needs triton >= "
            f"{'.'.join(map(str, MIN_INTERPRETER_TRITON))}, found {triton.__version__}: its interpreter cannot "
            "run the kernels' vocabulary loops. Use backend='torch' (or 'auto') on CPU, or upgrade triton.")


_K = "rklu.kernels."
register(Backend("triton", {"kl": _K + "kl.triton_fused:unlearning_kl", "logprob": _K + "logprob.triton_fused:token_logprob"},
                 check=needs_triton))
register(Backend("chunked", {"kl": _K + "kl.triton_chunked:unlearning_kl"}, check=needs_triton))
register(Backend("torch", {"kl": _K + "kl.torch_chunked:unlearning_kl", "logprob": _K + "logprob.torch_chunked:token_logprob"}))
register(Backend("reference", {"kl": _K + "kl.reference:unlearning_kl_linear",
                               "logprob": _K + "logprob.reference:token_logprob_linear"}))
