"""The KL objectives every backend is tested on, and their float64 ground truth (an import-only helper module).

``OBJECTIVE_CASES``: pytest params ``(objective, augmented)``: ``objective`` is a dict of the public API's
objective keyword arguments (divergence, jsd_beta, teacher, target_edit, target_shift, temperature),
``augmented`` whether the inputs carry an augmented model. Every valid (``KLObjective.check``) combination of
divergence x teacher source x target edit, with and without the augmented model where valid; jsd at beta 0.3,
0.5, 0 and 1; some cases at a temperature != 1. ``SMOKE_CASES`` is a subset that still covers every divergence
with every teacher source and every target edit (for the slow Triton interpreter).

``objective_ground_truth``: the per-token loss [N] and d loss / d student logits [N, V] in float64 from the
formulas below, written out here and independent of ``rklu.kernels.kl.reference`` (so a bug there cannot
hide). Per counted token n (label y = y_n, V = vocab, T = temperature, l = a model's logits after its
logit transform):

    teacher t:  "models": l_o / T, or (l_o - alpha relu(l_aug - l_o)) / T with an augmented model
                "self":   l_s / T (detached)                       (CE-U, Yang et al. 2025, arXiv 2503.01224;
                                                                    Unilogit, Vasilev et al. 2025, 2505.06027)
                "labels": t_y = 0, t_i = -inf for i != y           (JensUn's forget term, Singh et al. 2025,
                                                                    arXiv 2509.02820)
    edit of t_y: "subtract": t_y -= target_shift                    (UNDIAL, Dong et al. 2024, arXiv 2402.10052;
                                                                    open-unlearning community/methods/UNDIAL)
                 "uniform":  t_y = logsumexp_{i != y} t_i - log(V - 1), i.e. p_t(y) = 1/V exactly (Unilogit)
                 "exclude":  t_y = -inf                             (CE-U)
    s = l_s / T, p_s = softmax(s), p_t = softmax(t)
    "reverse":   sum_i p_s,i (log p_s,i - log p_t,i)                 grad_s: p_s (log p_s - log p_t - loss)
    "forward":   sum_{p_t,i > 0} p_t,i (log p_t,i - log p_s,i)       grad_s: p_s - p_t
    "jsd":       m = beta p_t + (1 - beta) p_s (Liger-Kernel's generalized JSD: ``jsd_beta``, beta = 0 / 1
                 are the forward / reverse KL);  beta sum_{p_t>0} p_t log(p_t / m) + (1 - beta) sum p_s log(p_s / m)
                 grad_s: p_s (g - sum_i p_s,i g_i),  g = (1 - beta) log(p_s / m)
    "argmax_ce": a = the lowest index of max_i t_i; -log p_s,a       grad_s: p_s - onehot(a)
                 (WHP's generic-label target, Eldan & Russinovich 2023, arXiv 2310.02238)
    d loss / d l_s = grad_s / T. Ignored tokens (label -100): loss 0, gradient 0.
"""
from __future__ import annotations

import math

import pytest
import torch

from rklu.kernels.kl.objective import DIVERGENCES, TARGET_EDITS, TEACHER_SOURCES, KLObjective

IGNORE = -100
UNDIAL_SHIFT = 10.0  # UNDIAL's default strength beta (its paper and open-unlearning's UNDIAL config)
OBJECTIVE_KEYS = ("divergence", "jsd_beta", "teacher", "target_edit", "target_shift", "temperature")


def _divergence_variants():
    """(divergence, jsd_beta) pairs: each divergence once, jsd at 0.3 / 0.5 and at Liger's end points 0 / 1."""
    for divergence in DIVERGENCES:
        if divergence == "jsd":
            yield from (("jsd", 0.3), ("jsd", 0.5), ("jsd", 0.0), ("jsd", 1.0))
        else:
            yield divergence, 0.5


def _build_cases():
    cases, index = [], 0
    for divergence, beta in _divergence_variants():
        for teacher in TEACHER_SOURCES:
            for edit in TARGET_EDITS:
                for augmented in (False, True):
                    objective = KLObjective(divergence=divergence, jsd_beta=beta, teacher=teacher,
                                            target_edit=edit, target_shift=UNDIAL_SHIFT if edit == "subtract" else 0.0)
                    try:
                        objective.check(augmented=augmented, labels=True)
                    except ValueError:
                        continue
                    # Every third case at another temperature (T = 2 softens, T = 0.5 sharpens).
                    temperature = (1.0, 2.0, 0.5)[index % 3]
                    index += 1
                    kwargs = dict(divergence=divergence, jsd_beta=beta, teacher=teacher, target_edit=edit,
                                  target_shift=objective.target_shift, temperature=temperature)
                    name = divergence + (f"{beta:g}" if divergence == "jsd" else "")
                    case_id = f"{name}-{teacher}-{edit}{'-aug' if augmented else ''}-T{temperature:g}"
                    cases.append((case_id, kwargs, augmented))
    return cases


_CASES = _build_cases()
CASES = {case_id: (kwargs, augmented) for case_id, kwargs, augmented in _CASES}
OBJECTIVE_CASES = [pytest.param(kwargs, augmented, id=case_id) for case_id, kwargs, augmented in _CASES]


def _smoke_ids():
    """Greedily: every (divergence variant, teacher source) pair, every (divergence kind, target edit) pair, with
    and without the augmented model, at T = 1 and T != 1."""
    seen, ids = set(), []
    for case_id, kwargs, augmented in _CASES:
        name = kwargs["divergence"] + (f"{kwargs['jsd_beta']:g}" if kwargs["divergence"] == "jsd" else "")
        keys = {("dt", name, kwargs["teacher"]), ("de", kwargs["divergence"], kwargs["target_edit"]),
                ("a", augmented), ("T", kwargs["temperature"] != 1.0)}
        if not keys <= seen:
            seen |= keys
            ids.append(case_id)
    return ids


SMOKE_CASES = [p for p in OBJECTIVE_CASES if p.id in set(_smoke_ids())]


def objective_ground_truth(zs, zo, za, labels, alpha, *, divergence=None, direction="reverse", jsd_beta=0.5,
                           teacher="models", target_edit="none", target_shift=0.0, temperature=1.0):
    """(per-token loss [...], d loss / d zs [..., V]), float64, for logits ``zs`` / ``zo`` / ``za`` [..., V]
    (each after its model's logit transform, before the temperature; ``zo`` None unless teacher="models",
    ``za`` None without the augmented model). ``labels`` [...] (-100: ignored) or None (every token counted).
    """
    divergence = direction if divergence is None else divergence
    vocab = zs.shape[-1]
    lead = zs.shape[:-1]
    s, t, counted = _student_and_teacher(zs, zo, za, labels, alpha, teacher, target_edit, target_shift, temperature)
    n = s.shape[0]
    rows = torch.arange(n)
    log_ps, log_pt = _log_softmax(s), _log_softmax(t)
    ps, pt = log_ps.exp(), log_pt.exp()
    if divergence == "jsd" and jsd_beta in (0.0, 1.0):
        divergence = "forward" if jsd_beta == 0.0 else "reverse"
    if divergence == "reverse":
        ratio = log_ps - log_pt
        loss = (ps * ratio).sum(-1)
        grad = ps * (ratio - loss[:, None])
    elif divergence == "forward":
        loss = torch.where(pt > 0, pt * (log_pt - log_ps), torch.zeros_like(pt)).sum(-1)
        grad = ps - pt
    elif divergence == "jsd":
        beta = jsd_beta
        m = beta * pt + (1 - beta) * ps
        log_m = torch.log(m)
        teacher_term = torch.where(pt > 0, pt * (log_pt - log_m), torch.zeros_like(pt)).sum(-1)
        log_ratio = torch.where(ps > 0, log_ps - log_m, torch.zeros_like(ps))
        student_term = (ps * log_ratio).sum(-1)
        loss = beta * teacher_term + (1 - beta) * student_term
        g = (1 - beta) * log_ratio
        grad = ps * (g - (ps * g).sum(-1, keepdim=True))
    elif divergence == "argmax_ce":
        index = torch.arange(vocab).expand(n, vocab)
        is_max = t == t.max(-1, keepdim=True).values
        target = torch.where(is_max, index, torch.full_like(index, vocab)).min(-1).values
        loss = -log_ps[rows, target]
        grad = ps.clone()
        grad[rows, target] -= 1.0
    else:
        raise ValueError(divergence)
    grad = grad / temperature
    loss = torch.where(counted, loss, torch.zeros_like(loss))
    grad = torch.where(counted[:, None], grad, torch.zeros_like(grad))
    return loss.reshape(lead), grad.reshape(*lead, vocab)


def teacher_probabilities(zs, zo, za, labels, alpha, *, teacher="models", target_edit="none", target_shift=0.0,
                          temperature=1.0, **_divergence):
    """p_t [N, V] (float64) of the ground truth's teacher, for checks on the edits themselves."""
    _, t, _ = _student_and_teacher(zs, zo, za, labels, alpha, teacher, target_edit, target_shift, temperature)
    return _log_softmax(t).exp()


def _student_and_teacher(zs, zo, za, labels, alpha, teacher, target_edit, target_shift, temperature):
    """(s [N, V], t [N, V], counted [N]) in float64 on the CPU: the student's and the edited teacher's logits."""
    vocab = zs.shape[-1]
    s = zs.detach().to(torch.float64).reshape(-1, vocab).cpu() / temperature
    n = s.shape[0]
    rows = torch.arange(n)
    if labels is None:
        counted = torch.ones(n, dtype=torch.bool)
        y = torch.zeros(n, dtype=torch.long)
    else:
        flat = labels.detach().reshape(-1).cpu().long()
        counted = flat != IGNORE
        y = torch.where(counted, flat, torch.zeros_like(flat))  # ignored tokens: any index, result zeroed

    if teacher == "models":
        t = zo.detach().to(torch.float64).reshape(-1, vocab).cpu() / temperature
        if za is not None:
            a = za.detach().to(torch.float64).reshape(-1, vocab).cpu() / temperature
            t = t - alpha * torch.clamp(a - t, min=0.0)
    elif teacher == "self":
        t = s.clone()
    elif teacher == "labels":
        t = torch.full_like(s, -math.inf)
        t[rows, y] = 0.0
    else:
        raise ValueError(teacher)
    t = t.clone()
    if target_edit == "subtract":
        t[rows, y] -= target_shift
    elif target_edit == "exclude":
        t[rows, y] = -math.inf
    elif target_edit == "uniform":
        others = t.clone()
        others[rows, y] = -math.inf
        t[rows, y] = _logsumexp(others) - math.log(vocab - 1)
    elif target_edit != "none":
        raise ValueError(target_edit)
    return s, t, counted


def _log_softmax(x):
    peak = x.max(-1, keepdim=True).values
    return x - peak - torch.log(torch.exp(x - peak).sum(-1, keepdim=True))


def _logsumexp(x):
    peak = x.max(-1, keepdim=True).values
    return (peak + torch.log(torch.exp(x - peak).sum(-1, keepdim=True))).squeeze(-1)


# --------------------------------------------------------------------------------------------------------------
# Inputs for the linear API and the truth of its loss / gradients.

def make_objective_inputs(n, h, v, *, teacher="models", augmented=False, dtype=torch.float32, device="cpu",
                          bias=False, masked_fraction=0.25, logit_std=4.0, offset=0.0, peaked_fraction=0.0,
                          seed=0, lead=None):
    """Keyword arguments of ``fused_linear_unlearning_kl`` (hidden states, weights, labels, biases).

    ``logit_std``: the logits' spread (4 as in trained LMs; 1e4 for extreme logits, near one-hot);
    ``offset``: a constant added to every logit of every model through its bias (1e4: softmax must subtract the
    max first), implies ``bias``; ``peaked_fraction``: that share of the counted tokens gets the label at the
    teacher's (or, for teacher="self", the student's) argmax, so the teacher is near one-hot on y (the
    Unilogit shift's q -> 1 guard); ``masked_fraction`` of the labels are -100. The student's leaves require grad.
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (n,) if lead is None else tuple(lead)
    bias = bias or offset != 0.0

    def rand(*size, std=1.0):
        return torch.randn(*size, generator=gen, dtype=torch.float64) * std

    w_std = logit_std / h ** 0.5
    raw = dict(student_hidden=rand(*shape, h), student_weight=rand(v, h, std=w_std))
    if bias:
        raw["student_bias"] = rand(v) + offset
    if teacher == "models":
        raw["original_hidden"], raw["original_weight"] = rand(*shape, h), rand(v, h, std=w_std)
        if bias:
            raw["original_bias"] = rand(v) + offset
        if augmented:
            raw["augmented_hidden"], raw["augmented_weight"] = rand(*shape, h), rand(v, h, std=w_std)
            if bias:
                raw["augmented_bias"] = rand(v) + offset
    labels = torch.randint(0, v, shape, generator=gen)
    if peaked_fraction:
        source = "original" if teacher == "models" else "student"
        logits = raw[f"{source}_hidden"] @ raw[f"{source}_weight"].T
        if f"{source}_bias" in raw:
            logits = logits + raw[f"{source}_bias"]
        peaked = torch.rand(shape, generator=gen) < peaked_fraction
        labels = torch.where(peaked, logits.argmax(-1), labels)
    if masked_fraction:
        labels[torch.rand(shape, generator=gen) < masked_fraction] = IGNORE
    inputs = {k: t.to(device=device, dtype=dtype) for k, t in raw.items()}
    for k in ("student_hidden", "student_weight", "student_bias"):
        if k in inputs:
            inputs[k].requires_grad_()
    inputs["labels"] = labels.to(device)
    return inputs


STUDENT_LEAVES = ("student_hidden", "student_weight", "student_bias")
TRANSFORM_KEYS = tuple(f"{m}_{k}" for m in ("student", "original", "augmented") for k in ("scale", "softcap"))


def _transformed(logits, scale, softcap):
    """(c tanh(scale l / c), d/dl) in float64 (c = softcap; scale * l without one)."""
    z = logits * scale
    if softcap is None:
        return z, torch.full_like(z, scale)
    capped = softcap * torch.tanh(z / softcap)
    return capped, scale * (1 - torch.tanh(z / softcap) ** 2)


def linear_ground_truth(inputs, *, alpha=8.0, reduction="mean", upstream=None, **kwargs):
    """(loss, {leaf name: gradient}) of ``fused_linear_unlearning_kl(**inputs, alpha=alpha, reduction=reduction,
    **kwargs)`` in float64: ``kwargs`` are objective and transform keyword arguments. For reduction "none" the
    gradients are those of ``(loss * upstream).sum()`` (``upstream`` [lead], ones by default)."""
    objective = {k: v for k, v in kwargs.items() if k in OBJECTIVE_KEYS or k == "direction"}
    transforms = {k: v for k, v in kwargs.items() if k in TRANSFORM_KEYS}
    unknown = set(kwargs) - set(objective) - set(transforms)
    assert not unknown, f"linear_ground_truth: unknown keyword arguments {sorted(unknown)}"

    def d(t):
        return None if t is None else t.detach().to(torch.float64).cpu()

    def logits(model):
        x, w, b = d(inputs.get(f"{model}_hidden")), d(inputs.get(f"{model}_weight")), d(inputs.get(f"{model}_bias"))
        if x is None:
            return None, None
        raw = x @ w.T + (0.0 if b is None else b)
        transform_model = "student" if (model == "original" and kwargs.get("teacher", "models") != "models") else model
        return _transformed(raw, transforms.get(f"{transform_model}_scale", 1.0),
                            transforms.get(f"{transform_model}_softcap"))

    zs, factor = logits("student")
    zo, _ = logits("original")
    za, _ = logits("augmented")
    labels = inputs.get("labels")
    per_token, grad = objective_ground_truth(zs, zo, za, labels, alpha, **objective)
    counted = torch.ones(per_token.shape, dtype=torch.bool) if labels is None else labels.cpu() != IGNORE
    if reduction == "none":
        loss = per_token
        weights = torch.ones_like(per_token) if upstream is None else upstream.detach().to(torch.float64).cpu()
    elif reduction == "sum":
        loss, weights = per_token.sum(), torch.ones_like(per_token)
    else:
        count = max(int(counted.sum()), 1)
        loss, weights = per_token.sum() / count, torch.ones_like(per_token) / count
    g = (grad * factor * weights[..., None]).reshape(-1, grad.shape[-1])  # d loss / d raw student logits
    x, w = d(inputs["student_hidden"]), d(inputs["student_weight"])
    grads = {"student_hidden": (g @ w).reshape(x.shape), "student_weight": g.T @ x.reshape(-1, x.shape[-1])}
    if inputs.get("student_bias") is not None:
        grads["student_bias"] = g.sum(0)
    return loss, grads


def api_inputs(inputs, teacher):
    """``inputs`` without the original model's tensors when the teacher is not "models" (the API's contract)."""
    if teacher == "models":
        return inputs
    return {k: v for k, v in inputs.items() if not k.startswith(("original_", "augmented_"))}
