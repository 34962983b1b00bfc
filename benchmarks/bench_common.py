"""Shared pieces of the kernel benchmarks: the implementations compared, input builders, timing and
peak-memory measurement (CUDA allocator stats on GPU, peak RSS of an isolated subprocess on CPU).

Every implementation computes the same thing where it can: the RKLU forget loss (reverse KL to the teacher
l_o - alpha * relu(l_aug - l_o), mean over tokens) forward + backward w.r.t. the student's hidden states and
lm_head weight. Liger's FusedLinearJSD (beta=1, reverse KL) has no augmented teacher: it is fed the original
model's hidden states as a precomputed teacher, so it does 2 logit GEMMs where the others do 3. The rows
``chunked_noaug`` and ``floor_noaug`` do Liger's work exactly (reverse KL to l_o, no augmented teacher: 4
GEMMs), so "x faster than Liger" can be read at equal work; the 5-GEMM rows stay for the unlearning loss.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

IMPLS = ("eager", "compiled", "torch_chunked", "triton", "triton_nofilter", "triton_atomic", "triton_store", "chunked",
         "chunked_half", "chunked_twice", "chunked_noaug", "chunked_noaug_fwd", "liger", "liger_kldiv", "floor",
         "floor_noaug", "floor_kldiv")
# Implementations doing Liger's work (no augmented teacher: 4 GEMMs, or 3 for FusedLinearKLDivLoss, whose
# teacher distribution is an input), and the floor each is measured against.
LIGER_WORK = ("chunked_noaug", "chunked_noaug_fwd", "liger", "liger_kldiv", "floor_noaug", "floor_kldiv")
FLOORS = ("floor", "floor_noaug", "floor_kldiv")
# Chunked rows at other memory budgets than the default (Liger FusedLinearJSD's working set for the shape,
# rklu/kernels/kl/chunk_policy.py): that budget times this factor.
CHUNK_BUDGET_FACTORS = {"chunked_half": 0.5, "chunked_twice": 2.0}
LABELS = {
    "eager": "eager PyTorch (materialized logits)",
    "compiled": "torch.compile(eager)",
    "torch_chunked": "rklu torch chunked",
    "triton": "rklu triton fused (grad filter on)",
    "triton_nofilter": "rklu triton fused, grad filter off",
    "triton_atomic": "rklu triton fused, atomic dX/dW backward",
    "triton_store": "rklu triton fused, store-G + cuBLAS backward",
    "chunked": "rklu chunked cuBLAS (default budget: Liger's memory)",
    "chunked_half": "rklu chunked cuBLAS, half the default budget",
    "chunked_twice": "rklu chunked cuBLAS, twice the default budget",
    "chunked_noaug": "rklu chunked cuBLAS, Liger's work (no augmented teacher)",
    "chunked_noaug_fwd": "rklu chunked cuBLAS, forward KL, no augmented teacher (FusedLinearKLDivLoss's work + the teacher GEMM)",
    "liger": "Liger FusedLinearJSD beta=1",
    "liger_kldiv": "Liger FusedLinearKLDivLoss (teacher probabilities given as an [N, V] input)",
    "floor": "GEMM floor (5 GEMMs)",
    "floor_noaug": "GEMM floor, Liger's work (4 GEMMs)",
    "floor_kldiv": "GEMM floor, FusedLinearKLDivLoss's work (3 GEMMs)",
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ALPHA = 8.0


def gemms(impl: str) -> int:
    """GEMMs of the work ``impl`` does: 3 logit GEMMs + dX + dW, one logit GEMM less without the augmented
    teacher (Liger's work), two less when the teacher distribution is an input (FusedLinearKLDivLoss)."""
    if impl in ("liger_kldiv", "floor_kldiv"):
        return 3
    return 4 if impl in LIGER_WORK else 5


def floor_of(impl: str) -> str:
    """The GEMM floor of the same work as ``impl``."""
    if impl in ("liger_kldiv", "floor_kldiv"):
        return "floor_kldiv"
    return "floor_noaug" if impl in LIGER_WORK else "floor"


def liger_import_error() -> str | None:
    """None when Liger's FusedLinearJSD imports here, else the error (so a report says why it is missing)."""
    try:
        from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD  # noqa: F401
    except Exception as e:  # noqa: BLE001 -- any import failure means "not measured", with the reason
        return f"{type(e).__name__}: {e}"[:300]
    return None


def liger_available() -> bool:
    return liger_import_error() is None


def liger_kldiv_import_error() -> str | None:
    """None when Liger's FusedLinearKLDivLoss imports (liger_kernel/transformers/fused_linear_kl_div.py, in
    recent releases only), else the error."""
    try:
        from liger_kernel.transformers.fused_linear_kl_div import LigerFusedLinearKLDivLoss  # noqa: F401
    except Exception as e:  # noqa: BLE001 -- any import failure means "not measured", with the reason
        version = "unknown"
        try:
            from importlib.metadata import version as _version
            version = _version("liger-kernel")
        except Exception:  # noqa: BLE001
            pass
        return f"liger-kernel {version} has no FusedLinearKLDivLoss ({type(e).__name__}: {e})"[:300]
    return None


def unavailable_reason(impl: str, device: str) -> str | None:
    """None when ``impl`` can run on ``device`` here, else why not (printed and stored, never silent)."""
    if ((impl.startswith("triton") or impl.startswith("chunked")) and device != "cuda"
            and os.environ.get("TRITON_INTERPRET") != "1"):
        return "Triton backends need CUDA (TRITON_INTERPRET=1 runs them on CPU, far too slowly to time)"
    if impl in ("liger", "liger_kldiv"):
        if device != "cuda":
            return "Liger kernels are Triton/CUDA only"
        error = liger_import_error()
        if error:
            return f"liger_kernel does not import ({error}); pip install 'rklu[bench]'"
        if impl == "liger_kldiv":
            return liger_kldiv_import_error()
    return None


def make_case(n: int, h: int, v: int, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """Student (trainable), original and augmented teacher inputs; logits have std ~4 like trained LMs."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*size, std=1.0):
        return (torch.randn(*size, generator=gen) * std).to(device=device, dtype=dtype)

    w_std = 4.0 / h ** 0.5
    return dict(
        xs=rand(n, h).requires_grad_(), ws=rand(v, h, std=w_std).requires_grad_(),
        xo=rand(n, h), wo=rand(v, h, std=w_std), xa=rand(n, h), wa=rand(v, h, std=w_std),
    )


def eager_loss(xs, ws, xo, wo, xa, wa):
    """The usual implementation: materialize the three logit tensors with F.linear in the input dtype (tensor
    cores for bf16), then float32 log-softmaxes and the KL (rklu's reference math)."""
    from rklu.kernels import unlearning_kl_reference

    student = torch.nn.functional.linear(xs, ws)
    with torch.no_grad():
        original = torch.nn.functional.linear(xo, wo)
        augmented = torch.nn.functional.linear(xa, wa)
    return unlearning_kl_reference(student, original, augmented, alpha=ALPHA, direction="reverse")


def fused_variant(impl: str, case: dict | None = None) -> tuple[str, dict, str | None]:
    """(backend, extra keyword arguments, fused backward mode or None) of an rklu implementation name.
    ``case`` (its shape) sets the budget of the chunked rows at other budgets."""
    if impl in CHUNK_BUDGET_FACTORS:
        from rklu.kernels.kl.chunk_policy import liger_extra_bytes

        n, h = case["xs"].shape
        budget = int(CHUNK_BUDGET_FACTORS[impl] * liger_extra_bytes(n, h, case["ws"].shape[0]))
        return "chunked", {"max_chunk_bytes": budget}, None
    if impl == "chunked_noaug_fwd":
        return "chunked", {"direction": "forward"}, None
    if not impl.startswith("triton"):
        return {"torch_chunked": "torch", "chunked_noaug": "chunked"}.get(impl, impl), {}, None
    return "triton", {"grad_filter": impl != "triton_nofilter"}, {"triton_atomic": "atomic",
                                                                  "triton_store": "store"}.get(impl)


@contextlib.contextmanager
def fused_backward_mode(mode: str | None):
    """RKLU_FUSED_BACKWARD=mode for the calls inside (the fused backward reads it at each backward call); the
    previous value, or its absence, is restored. None changes nothing."""
    saved = os.environ.get("RKLU_FUSED_BACKWARD")
    if mode:
        os.environ["RKLU_FUSED_BACKWARD"] = mode
    try:
        yield
    finally:
        if mode:
            os.environ.pop("RKLU_FUSED_BACKWARD", None)
            if saved is not None:
                os.environ["RKLU_FUSED_BACKWARD"] = saved


def build_step(impl: str, case: dict, chunk_tokens: int | None = None):
    """A zero-argument callable running one forward + backward of ``impl`` on ``case`` (grads reset first)."""
    xs, ws, xo, wo, xa, wa = (case[k] for k in ("xs", "ws", "xo", "wo", "xa", "wa"))
    if impl in LIGER_WORK:
        xa = wa = None  # Liger's work: the teacher is the original model alone

    def clear():
        xs.grad = None
        ws.grad = None

    if impl == "eager":
        def step():
            clear()
            eager_loss(xs, ws, xo, wo, xa, wa).backward()
        return step
    if impl == "compiled":
        torch._dynamo.reset()
        compiled = torch.compile(eager_loss, dynamic=False)

        def step():
            clear()
            compiled(xs, ws, xo, wo, xa, wa).backward()
        return step
    if impl == "torch_chunked" or impl.startswith("chunked") or impl.startswith("triton"):
        from rklu.kernels import fused_linear_unlearning_kl

        backend, extra, backward_mode = fused_variant(impl, case)
        extra.setdefault("direction", "reverse")

        def step():
            clear()
            with fused_backward_mode(backward_mode):
                fused_linear_unlearning_kl(xs, ws, xo, wo, xa, wa, alpha=ALPHA, backend=backend,
                                           chunk_tokens=chunk_tokens, check_inputs_finite=False, **extra).backward()
        return step
    if impl == "liger_kldiv":
        from liger_kernel.transformers.fused_linear_kl_div import LigerFusedLinearKLDivLoss

        loss_fn = LigerFusedLinearKLDivLoss(reduction="mean")
        with torch.no_grad():  # its input: the teacher distribution, built once outside the timed step
            target = torch.softmax(torch.nn.functional.linear(xo, wo).float(), dim=-1).to(xs.dtype)

        def step():
            clear()
            loss_fn(xs, ws, target).backward()
        return step
    if impl == "liger":
        from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD

        try:
            loss_fn = LigerFusedLinearJSD(jsd_beta=1.0)
        except AssertionError:  # old releases only accept beta in (0, 1)
            loss_fn = LigerFusedLinearJSD(jsd_beta=1.0 - 1e-6)

        def step():
            clear()
            loss_fn(xs, ws, xo, wo, None).backward()  # shift_labels=None: every token counts
        return step
    if impl in FLOORS:
        n, v = xs.shape[0], ws.shape[0]
        pairs = [(x, w) for x, w in ((xs, ws), (xo, wo), (xa, wa)) if x is not None]
        if impl == "floor_kldiv":
            pairs = pairs[:1]  # the teacher's distribution is an input: the student's logit GEMM only
        with torch.no_grad():
            logits = [torch.empty(n, v, dtype=xs.dtype, device=xs.device) for _ in pairs]
            grad = torch.randn(n, v, device=xs.device).to(xs.dtype)
            dx, dw = torch.empty_like(xs), torch.empty_like(ws)

        def step():
            with torch.no_grad():
                for out, (x, w) in zip(logits, pairs):
                    torch.mm(x, w.T, out=out)
                torch.mm(grad, ws, out=dx)
                torch.mm(grad.T, xs, out=dw)
        return step
    raise ValueError(f"unknown implementation {impl!r}")


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def time_step(step, device: str, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


# ---- peak memory ---------------------------------------------------------------------------------------------

def _read_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0); returns that RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _read_status("VmRSS")


def peak_rss() -> int:
    return _read_status("VmHWM")


def measure_cuda_peak(step) -> int:
    """Bytes allocated above what was live before the step (inputs, weights), peak over the step."""
    gc.collect()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def measure_cpu_peak(step) -> int:
    """Peak RSS above the RSS before the step. Run in a fresh subprocess with a fixed malloc mmap threshold
    (see run_isolated) so freed [N, V] buffers go back to the OS and the counter tracks live memory."""
    gc.collect()
    base = reset_peak_rss()
    step()
    return peak_rss() - base


def run_case(impl: str, n: int, h: int, v: int, dtype: str, device: str, repeats: int, threads: int | None = None,
             chunk_tokens: int | None = None) -> dict:
    """Time and measure one (implementation, shape) in this process; errors (OOM, compile failure) are kept."""
    if threads:
        torch.set_num_threads(threads)
    row = dict(impl=impl, n=n, h=h, v=v, dtype=dtype, device=device, threads=torch.get_num_threads())
    reason = unavailable_reason(impl, device)
    if reason:
        return dict(row, status="skipped", reason=reason)
    try:
        case = make_case(n, h, v, DTYPES[dtype], device)
        step = build_step(impl, case, chunk_tokens)
        t0 = time.perf_counter()
        step()  # warm-up: compilation, autotuning, allocator caches, first-touch of grad buffers
        sync(device)
        row["first_call_s"] = time.perf_counter() - t0
        if impl not in FLOORS:
            # The warm-up's gradients would be freed inside the measured step (its clear()): counted in the
            # baseline, they would hide that much of the step's own allocations. Drop them first.
            for t in (case["xs"], case["ws"]):
                t.grad = None
            row["peak_extra_bytes"] = measure_cuda_peak(step) if device == "cuda" else measure_cpu_peak(step)
            grads = [t.grad for t in (case["xs"], case["ws"]) if t.grad is not None]
            row["grad_bytes"] = sum(g.numel() * g.element_size() for g in grads)
        times = time_step(step, device, repeats, warmup=0)
        row.update(status="ok", times_s=times, median_s=statistics.median(times))
        row["tokens_per_s"] = n / row["median_s"]
        if impl in FLOORS:
            row["tflops"] = gemms(impl) * 2 * n * h * v / row["median_s"] / 1e12
        if impl.startswith("chunked"):
            from rklu.kernels.kl.triton_chunked import last_chunk_plan

            plan = last_chunk_plan()  # what the timed calls used
            row["chunk_tokens"] = plan.logit_tokens
            row["grad_tokens"] = plan.grad_tokens
            row["chunk_budget_bytes"] = plan.budget_bytes
            row["chunk_working_set_bytes"] = plan.working_set_bytes
        if impl.startswith("triton") or impl.startswith("chunked"):
            row["autotune"] = autotune_choices()
        if impl.startswith("triton"):
            from rklu.kernels.kl.triton_fused import last_backward_tile_stats

            row["backward_tiles"] = last_backward_tile_stats()  # kept fraction f of the gradient filter
    except Exception as e:  # noqa: BLE001 -- OOM and compile failures are results too
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        row.update(status="oom" if "out of memory" in str(e).lower() else "error", reason=msg)
    finally:
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return row


def autotune_choices() -> dict:
    """The Triton configs the autotuner picked so far, per kernel and (H, V, dtypes) key."""
    out = {}
    for module in ("triton_fused", "triton_chunked"):
        try:
            mod = __import__(f"rklu.kernels.kl.{module}", fromlist=["TUNED_KERNELS"])
        except Exception:
            continue
        for name, kernel in getattr(mod, "TUNED_KERNELS", {}).items():
            out[f"{module}.{name}"] = {str(key): str(cfg) for key, cfg in getattr(kernel, "cache", {}).items()}
    return out


def run_isolated(impl: str, n: int, h: int, v: int, dtype: str, device: str, repeats: int,
                 threads: int | None, chunk_tokens: int | None = None, timeout: float = 1800) -> dict:
    """run_case in a fresh Python process (CPU memory: a clean peak-RSS counter and no allocator state
    left over from other cases). glibc's mmap threshold is pinned so large buffers are mmapped and
    unmapped on free instead of staying in the heap."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    args = json.dumps(dict(impl=impl, n=n, h=h, v=v, dtype=dtype, device=device, repeats=repeats, threads=threads,
                           chunk_tokens=chunk_tokens))
    code = ("import json, sys; sys.path.insert(0, %r); import bench_common as b; "
            "print('RESULT' + json.dumps(b.run_case(**json.loads(sys.argv[1]))))" % os.path.dirname(__file__))
    try:
        proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(impl=impl, n=n, h=h, v=v, dtype=dtype, device=device, status="error", reason=f"timeout {timeout}s")
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return dict(impl=impl, n=n, h=h, v=v, dtype=dtype, device=device, status="error",
                reason=f"subprocess rc={proc.returncode}: {tail[0][:300]}")


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} logical CPUs visible)"
    except OSError:
        pass
    import platform
    return platform.processor() or "CPU"


def failed_row(row: dict, error: Exception) -> dict:
    """Mark a measurement row as out-of-memory or failed, with the first line of the error."""
    row.update(status="oom" if "out of memory" in str(error).lower() else "error",
               reason=f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300])
    return row


def measure_in_subprocess(module: str, here: str, **kw) -> dict:
    """``module.measure(**kw)`` in a fresh interpreter, so one case's peak memory (RSS) is not another's.
    glibc returns freed blocks to the OS early (the malloc thresholds), so RSS tracks the live set."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    code = ("import json, sys; sys.path.insert(0, %r); import %s as b; "
            "print('RESULT' + json.dumps(b.measure(**json.loads(sys.argv[1]))))" % (here, module))
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kw)], capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return dict(kw, status="error", reason=f"rc={proc.returncode}: {tail[0][:300]}")


def training_step(optimizer, loss_fn):
    """One timed unit: zero the gradients, loss, backward, optimizer step; returns the detached loss."""
    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step
