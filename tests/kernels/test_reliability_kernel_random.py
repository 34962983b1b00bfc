"""Seeded randomized stress cases for the fused kernel (issue 8): every backend against the float64 reference.

Each case draws N, H, V (primes, V below the Triton block of 256, H not a multiple of 64), dtype
(fp32/bf16/fp16), a mask (none, some, all ignored), alpha in [0, 32], a logit scale up to ~1e4, direction,
reduction, with/without augmented teacher and bias; some cases set teacher == student (loss 0, grad 0).
The cases come from ``random.Random(SEED + index)``: the same on every run. Shapes stay small (N <= 64,
V <= 3000 (1100 for Triton), H <= 96) because the Triton interpreter pays per tile.

Tolerances (as in test_kernel_backends.py / test_kernel_behaviour.py), norm-wise relative error against the
float64 reference computed from the same (rounded) inputs:
  fp32: triton 1e-5; torch max(1e-5, 2 x the fp32 materialized reference's own error).
  bf16/fp16: 2e-2.
  logit std above ~100: at least as close as 2 x the materialized reference in the same precision
  (fp32 logits of magnitude 1e4 carry ~1e-3 absolute rounding; nobody can do better than that).
The worst error seen per (backend, dtype) is collected in ``WORST``; tests/kernels/conftest.py prints it in
the terminal summary and writes ``<pytest basetemp>/kernel_worst_errors.json``; docs/reliability.md quotes it.
"""
from __future__ import annotations

import math
import random

import pytest
import torch

from kernel_cases import fused_loss, make_inputs, reference_loss, rel_err, student_params, triton_devices

SEED = 20240608
TORCH_CASES, TRITON_CASES = 130, 90
TRITON_MAX_VOCAB = 1100   # the interpreter's cost grows with the number of [32 x 256] tiles
PRIMES = [2, 3, 5, 7, 13, 31, 61, 97, 127, 251, 257, 509, 521, 1021, 1031, 2003, 2053, 2999]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RATIO = 2.0            # x the materialized reference's own error
WORST: dict[str, dict] = {}   # "backend/dtype" -> {"loss": err, "grad": err, "case": ...}


def draw_case(index: int, max_vocab: int = 3000) -> dict:
    rng = random.Random(SEED + index)
    v = rng.choice([p for p in PRIMES if p <= max_vocab]) if rng.random() < 0.5 else rng.randint(2, max_vocab)
    if rng.random() < 0.25:
        v = rng.randint(2, 255)  # a single partial vocab block
    h = rng.choice([1, 3, 17, 33, 63, 65, 96]) if rng.random() < 0.5 else rng.randint(1, 96)
    n = rng.choice([1, 2, 31, 32, 33, 64]) if rng.random() < 0.3 else rng.randint(1, 64)
    dtype = rng.choices(["fp32", "bf16", "fp16"], weights=[2, 1, 1])[0]
    mask = rng.choices(["none", "some", "all"], weights=[4, 5, 1])[0]
    # std of the logits ~ 4 * scale^2: scale 50 -> ~1e4. Half of the cases stay at the natural scale.
    scale = 1.0 if rng.random() < 0.5 else math.exp(rng.uniform(0.0, math.log(50.0)))
    return dict(
        index=index, n=n, h=h, v=v, dtype=dtype, mask=mask, scale=scale,
        alpha=rng.choice([0.0, 32.0]) if rng.random() < 0.2 else rng.uniform(0.0, 32.0),
        direction=rng.choice(["reverse", "forward"]), reduction=rng.choices(["mean", "sum", "none"], [3, 1, 1])[0],
        augmented=rng.random() < 0.7, bias=rng.random() < 0.4, same=rng.random() < 0.12,
        masked_fraction={"none": 0.0, "some": rng.uniform(0.1, 0.9), "all": 1.0}[mask],
        chunk_tokens=rng.choice([None, 1, 7, 16]),
    )


def case_id(case: dict) -> str:
    return "{index}-N{n}-H{h}-V{v}-{dtype}-{direction[0]}-{mask}-s{scale:.0f}".format(**case)


def _build(case: dict, device: str):
    inputs = make_inputs(case["n"], case["h"], case["v"], dtype=DTYPES[case["dtype"]], device=device,
                         augmented=case["augmented"], bias=case["bias"], scale=case["scale"],
                         masked_fraction=0.0 if case["mask"] == "all" else case["masked_fraction"],
                         seed=case["index"])
    if case["mask"] == "all":
        inputs["labels"] = torch.full_like(inputs["labels"], -100)
    if case["same"]:
        # the teacher is the student itself (and the augmented model too, so relu(l_aug - l_o) = 0)
        for role in ("original", "augmented"):
            if inputs[f"{role}_hidden"] is not None:
                inputs[f"{role}_hidden"] = inputs["student_hidden"].detach().clone()
                inputs[f"{role}_weight"] = inputs["student_weight"].detach().clone()
        if case["bias"]:
            inputs["original_bias"] = inputs["student_bias"].detach().clone()
            if case["augmented"]:
                inputs["augmented_bias"] = inputs["student_bias"].detach().clone()
    return inputs


def _entry(backend: str, case: dict) -> dict:
    return WORST.setdefault(f"{backend}/{case['dtype']}", {"loss": 0.0, "grad": 0.0, "ratio": 0.0, "cases": 0})


def _record(backend: str, case: dict, kind: str, err: float, plain_err: float | None = None) -> None:
    entry = _entry(backend, case)
    if plain_err is not None and err > 1e-6:
        entry["ratio"] = max(entry["ratio"], err / max(plain_err, 1e-30))
    if err > entry[kind]:
        entry[kind] = err
        entry[f"{kind}_case"] = case_id(case)


def check_case(backend: str, device: str, case: dict) -> None:
    inputs = _build(case, device)
    options = dict(alpha=case["alpha"], direction=case["direction"], reduction=case["reduction"])
    extra = {"chunk_tokens": case["chunk_tokens"]} if backend == "torch" else {}
    loss = fused_loss(inputs, backend, **extra, **options)
    weights = torch.rand(loss.shape, generator=torch.Generator().manual_seed(case["index"])) + 0.5

    def scalar(x):
        return (x * weights.to(x.device, x.dtype)).sum() if case["reduction"] == "none" else x

    params = student_params(inputs)
    grads = torch.autograd.grad(scalar(loss), params)
    _entry(backend, case)["cases"] += 1
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss).all(), f"non-finite loss {loss}"
    for p, g in zip(params, grads):
        assert g.dtype == p.dtype and g.shape == p.shape
        assert torch.isfinite(g).all(), "non-finite gradient"

    counted = int((inputs["labels"] != -100).sum())
    if counted == 0:
        assert torch.count_nonzero(loss) == 0
        assert all(torch.count_nonzero(g) == 0 for g in grads)
        return

    expected, leaves = reference_loss(inputs, **options)
    expected_grads = torch.autograd.grad(scalar(expected), leaves)
    if case["same"]:
        # loss 0 and grad 0, up to the rounding of logits of this magnitude
        logit_std = 4.0 * case["scale"] ** 2
        atol = 1e-6 * max(1.0, logit_std)
        assert loss.abs().max().item() <= atol, f"teacher == student but loss {loss.abs().max().item():.2e}"
        for g in grads:
            assert g.abs().max().item() <= atol, f"teacher == student but grad {g.abs().max().item():.2e}"
        _record(backend, case, "loss", loss.abs().max().item())
        return

    # Yardsticks. (1) The materialized reference in fp32 (fp32 inputs) or in the input's own half precision
    # (eager F.linear + log_softmax): at logit std ~1e2..1e4, fp32 logits carry ~1e-5..1e-3 absolute
    # rounding and no fp32 algorithm does better; two fp32 GEMMs with different blocking land within a
    # small factor of each other (RATIO). Saturated gradients (the student's softmax one-hot at logits ~1e4,
    # exact gradient ~1e-40) need no special case: both backends then return exactly 0 like the reference.
    plain_dtype = torch.float32 if case["dtype"] == "fp32" else DTYPES[case["dtype"]]
    plain, plain_leaves = reference_loss(inputs, dtype=plain_dtype, **options)
    plain_grads = torch.autograd.grad(scalar(plain), plain_leaves)
    biggest = _largest_logit(inputs, case)
    # (3) ulp(fp32) of the largest logit, the teacher's -alpha * relu(l_aug - l_o) included: log p_t is only
    # known to that absolute precision, which bounds the relative precision of the log-ratio in the gradient.
    base = max(1e-5 if case["dtype"] == "fp32" else 2e-2, 2.0 ** -23 * biggest)

    def tol(plain_result, truth):
        return max(base, RATIO * rel_err(plain_result, truth) + 1e-6)

    err = rel_err(loss, expected)
    _record(backend, case, "loss", err, rel_err(plain, expected))
    assert err <= tol(plain, expected), f"loss rel err {err:.2e} > {tol(plain, expected):.2e}"
    for name, got, want, ref in zip(("hidden", "weight", "bias"), grads, expected_grads, plain_grads):
        err = rel_err(got, want)
        assert err <= tol(ref, want), f"d{name} rel err {err:.2e} > {tol(ref, want):.2e}"
        _record(backend, case, "grad", err, rel_err(ref, want))


def _largest_logit(inputs, case) -> float:
    def f64(t):
        return None if t is None else t.detach().double()

    def logits(role):
        z = f64(inputs[f"{role}_hidden"]) @ f64(inputs[f"{role}_weight"]).T
        return z + f64(inputs[f"{role}_bias"]) if f"{role}_bias" in inputs else z
    zs, zo = logits("student"), logits("original")
    teacher = zo if inputs["augmented_hidden"] is None else zo - case["alpha"] * (logits("augmented") - zo).clamp(min=0)
    return max(zs.abs().max().item(), zo.abs().max().item(), teacher.abs().max().item())


CASES = [draw_case(i) for i in range(TORCH_CASES)]
TRITON_RANDOM_CASES = [draw_case(1000 + i, TRITON_MAX_VOCAB) for i in range(TRITON_CASES)]
TRITON_DEVICES = triton_devices()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_torch_backend_random(case):
    check_case("torch", "cpu", case)


@pytest.mark.skipif(not TRITON_DEVICES, reason="Triton backend needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("case", TRITON_RANDOM_CASES, ids=case_id)
def test_triton_backend_random(case):
    check_case("triton", TRITON_DEVICES[0] if TRITON_DEVICES else "cpu", case)


def test_case_mix_covers_the_issue():
    """The drawn cases really include every category the issue asks for."""
    cases = CASES + TRITON_RANDOM_CASES
    assert len(cases) >= 200
    assert {c["dtype"] for c in cases} == set(DTYPES)
    assert {c["mask"] for c in cases} == {"none", "some", "all"}
    assert {c["direction"] for c in cases} == {"reverse", "forward"}
    assert any(c["v"] < 256 for c in cases) and any(c["v"] in PRIMES for c in cases)
    assert any(c["h"] % 64 for c in cases) and any(c["same"] for c in cases)
    assert any(4 * c["scale"] ** 2 > 5e3 for c in cases)
    assert min(c["alpha"] for c in cases) == 0.0 and max(c["alpha"] for c in cases) == 32.0
    assert any(c["augmented"] for c in cases) and any(not c["augmented"] for c in cases)
    assert any(c["bias"] for c in cases) and any(not c["bias"] for c in cases)
