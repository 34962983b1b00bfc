"""The distillation-family methods (WHP, UNDIAL, CE-U, Unilogit, JensUn) and RMU against float64 ports of
their official losses on materialized logits / activations: the loss and every parameter's gradient, on
the torch and reference KL backends, at default and non-default hyperparameters.

The ports follow, each cited at its function: open-unlearning (commit d3d7cf9) for UNDIAL
(src/trainer/utils.py compute_undial_loss), CE-U (src/trainer/unlearn/ceu.py) and RMU
(src/trainer/unlearn/rmu.py); the papers' formulas for WHP (arXiv 2310.02238, Section 3.1), Unilogit
(arXiv 2505.06027) and JensUn (arXiv 2509.02820), which publish no loss code we could read.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from method_cases import tiny_paired_batch
from rklu.methods import LossContext, get_method
from rklu.methods.ceu import without_first_answer_tokens
from rklu.methods.rmu import control_vector
from rklu.models.heads import ModelTeacher
from rklu.models.tiny import build_tiny_llama

BACKENDS = ("torch", "reference")


def _fit(model, sub, steps, lr):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=sub["input_ids"], attention_mask=sub["attention_mask"], labels=sub["labels"]).loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model


@pytest.fixture(scope="module")
def setup():
    """(original, augmented, student, batch): the original memorizes the forget answers, the augmented
    model is trained further on them, the student is the original slightly perturbed (so a KL to the
    original is not zero)."""
    torch.manual_seed(0)
    tok, _, _, batch = tiny_paired_batch(4, max_length=128)
    original = _fit(build_tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0), batch["forget"], 40, 1e-2)
    augmented = _fit(copy.deepcopy(original), batch["forget"], 5, 1e-2)
    student = copy.deepcopy(original)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return original, augmented, student, batch


def _logits(model, sub):
    return model(input_ids=sub["input_ids"], attention_mask=sub["attention_mask"]).logits[:, :-1]


def _shifted(sub):
    return sub["labels"][:, 1:]


def _mean_counted(per_token, labels):
    counted = labels != -100
    return per_token[counted].sum() / counted.sum()


def _entropy(p):
    return -torch.special.xlogy(p, p).sum(-1)


# ---- ports of the official losses (float64, materialized logits) -----------------------------------

def whp_reference(models, batch, hp):
    """WHP, paper Section 3.1: v_generic = v_baseline - alpha ReLU(v_reinforced - v_baseline); the
    student is fine-tuned on argmax(v_generic) (cross-entropy), here on the forget answer tokens."""
    student, original, augmented = models
    sub = batch["forget"]
    with torch.no_grad():
        lo, la = _logits(original, sub), _logits(augmented, sub)
        generic = (lo - hp.get("alpha", 8.0) * torch.relu(la - lo)).argmax(-1)
    labels = _shifted(sub)
    generic = generic.masked_fill(labels == -100, -100)
    return F.cross_entropy(_logits(student, sub).transpose(1, 2), generic, ignore_index=-100)


def undial_official(model, ref_model, inputs, beta):
    """open-unlearning's compute_undial_loss (src/trainer/utils.py, d3d7cf9), per token (reduction "none"
    before its .mean()), and the teacher's soft labels."""
    outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    logits = outputs.logits
    labels = inputs["labels"]
    shift_labels = labels[..., 1:].contiguous()
    shift_logits = logits[..., :-1, :].contiguous()
    with torch.no_grad():
        teacher_logits = ref_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    shift_teacher_logits = teacher_logits[..., :-1, :].contiguous()
    mask = torch.zeros_like(shift_teacher_logits)
    batch_idx = torch.arange(mask.shape[0]).view(-1, 1, 1)
    seq_idx = torch.arange(mask.shape[1]).view(1, -1, 1)
    mask[batch_idx, seq_idx, shift_labels.unsqueeze(-1)] = 1.0  # label -100 indexes vocab entry V - 100
    pre_softmax = shift_teacher_logits - mask * beta
    soft_label = F.softmax(pre_softmax, dim=-1)
    loss_fct = nn.CrossEntropyLoss(reduction="none")
    loss = loss_fct(shift_logits.view(-1, shift_logits.size(-1)), soft_label.view(-1, soft_label.size(-1)))
    return loss.view(shift_labels.shape), soft_label, shift_teacher_logits


def undial_reference(models, batch, hp):
    """open-unlearning's UNDIAL restricted to the answer tokens, minus the teacher's entropy (CE = KL + H)."""
    student, original, _ = models
    per_token, soft, _ = undial_official(student, original, batch["forget"], hp.get("undial_beta", 10.0))
    labels = _shifted(batch["forget"])
    return _mean_counted(per_token - _entropy(soft), labels)


def cross_entropy_unlearning_loss(logits, labels, ignore_index=-100):
    """open-unlearning's src/trainer/unlearn/ceu.py (d3d7cf9), verbatim apart from comments."""
    valid_mask = labels != ignore_index
    valid_logits = logits[valid_mask]
    valid_labels = labels[valid_mask]
    valid_target_logits = valid_logits.detach().clone()
    valid_target_logits.scatter_(dim=-1, index=valid_labels.unsqueeze(-1), value=float("-inf"))
    valid_target_probabilities = F.softmax(valid_target_logits, dim=-1)
    return F.cross_entropy(input=valid_logits, target=valid_target_probabilities), valid_target_probabilities


def compute_batch_ceu(model, inputs, ignore_first_n_answer_tokens=1):
    """open-unlearning's compute_batch_ceu (src/trainer/unlearn/ceu.py, d3d7cf9), also returning the targets."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    labels = inputs["labels"]
    valid_mask = labels != -100
    update_mask = (valid_mask.cumsum(dim=-1) <= ignore_first_n_answer_tokens) & valid_mask
    labels_without_first_n_answer_tokens = labels.masked_fill(update_mask, -100)
    shifted_labels = labels_without_first_n_answer_tokens[..., 1:].contiguous()
    shifted_logits = logits[..., :-1, :].contiguous()
    return cross_entropy_unlearning_loss(shifted_logits, shifted_labels, ignore_index=-100)


def ceu_reference(models, batch, hp):
    """CE-U's soft cross-entropy minus the (detached) target entropy: the forward KL the fused op reports."""
    loss, targets = compute_batch_ceu(models[0], batch["forget"], int(hp.get("ceu_ignore_first_n", 1)))
    return loss - _entropy(targets).mean()


def unilogit_reference(models, batch, hp):
    """Unilogit (arXiv 2505.06027): teacher = the current model's detached logits with the target logit set
    so that its probability is 1/V: t_y = logsumexp_{i != y} t_i - log(V - 1); reverse KL(p_theta || q)."""
    sub = batch["forget"]
    logits, labels = _logits(models[0], sub), _shifted(sub)
    target = logits.detach().clone()
    index = labels.clamp(min=0).unsqueeze(-1)
    others = target.scatter(-1, index, float("-inf")).logsumexp(-1, keepdim=True)
    target.scatter_(-1, index, others - torch.log(torch.tensor(logits.shape[-1] - 1.0, dtype=logits.dtype)))
    log_q, log_p = target.log_softmax(-1), logits.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return _mean_counted(kl, labels)


def _jsd(log_p_student, p_teacher, beta):
    """beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s (Liger's generalized JSD)."""
    p_s = log_p_student.exp()
    m = beta * p_teacher + (1 - beta) * p_s
    return (beta * (torch.special.xlogy(p_teacher, p_teacher) - torch.special.xlogy(p_teacher, m)).sum(-1)
            + (1 - beta) * (p_s * (log_p_student - m.log())).sum(-1))


def jensun_reference(models, batch, hp):
    """JensUn (arXiv 2509.02820): JSD between the model and the one-hot refusal answer tokens."""
    sub = batch["idk"]
    logits, labels = _logits(models[0], sub), _shifted(sub)
    onehot = F.one_hot(labels.clamp(min=0), logits.shape[-1]).to(logits.dtype)
    return _mean_counted(_jsd(logits.log_softmax(-1), onehot, hp.get("jensun_beta", 0.5)), labels)


def jsd_retain_reference(models, batch, hp):
    """JensUn's retain loss: the symmetric JSD between the model and the original on the retain set."""
    student, original, _ = models
    sub = batch["retain"]
    with torch.no_grad():
        p_o = _logits(original, sub).softmax(-1)
    return _mean_counted(_jsd(_logits(student, sub).log_softmax(-1), p_o, 0.5), _shifted(sub))


def with_term(forget, retain):
    def combined(models, batch, hp):
        return forget(models, batch, hp) + hp.get("retain_weight", 1.0) * retain(models, batch, hp)
    return combined


def nll_retain(models, batch, hp):
    sub = batch["retain"]
    return models[0](input_ids=sub["input_ids"], attention_mask=sub["attention_mask"], labels=sub["labels"]).loss


def forward_kl_retain(models, batch, hp):
    student, original, _ = models
    sub = batch["retain"]
    with torch.no_grad():
        log_q = _logits(original, sub).log_softmax(-1)
    kl = (log_q.exp() * (log_q - _logits(student, sub).log_softmax(-1))).sum(-1)
    return _mean_counted(kl, _shifted(sub))


CASES = [
    ("whp", whp_reference, {}),
    ("whp", whp_reference, {"alpha": 2.0}),
    ("undial", undial_reference, {}),
    ("undial", undial_reference, {"undial_beta": 3.0}),
    ("undial+rt", with_term(undial_reference, nll_retain), {"retain_weight": 0.5}),
    ("undial+kl", with_term(undial_reference, forward_kl_retain), {}),
    ("ce-u", ceu_reference, {}),
    ("ce-u", ceu_reference, {"ceu_ignore_first_n": 0.0}),
    ("ce-u", ceu_reference, {"ceu_ignore_first_n": 3.0}),
    ("unilogit", unilogit_reference, {}),
    ("unilogit+kl", with_term(unilogit_reference, forward_kl_retain), {"retain_weight": 2.0}),
    ("jensun", jensun_reference, {}),
    ("jensun", jensun_reference, {"jensun_beta": 0.3}),
    ("jensun+jsd", with_term(jensun_reference, jsd_retain_reference), {}),
]


def _context(original, augmented, student, backend, hp):
    return LossContext(model=student, original=ModelTeacher(copy.deepcopy(original)),
                       augmented=ModelTeacher(copy.deepcopy(augmented)), hyperparameters=hp, kl_backend=backend,
                       logprob_backend="torch")


def _check_against(name, loss, student, ref, ref_student, hp):
    assert ref.abs().item() > 1e-5, (name, hp)  # not trivially zero
    torch.testing.assert_close(loss.detach().double(), ref.detach(), atol=1e-6, rtol=1e-5)
    for (pname, p), (_, p_ref) in zip(student.named_parameters(), ref_student.named_parameters()):
        if p_ref.grad is None:
            assert p.grad is None or p.grad.abs().max() == 0, pname
            continue
        scale = p_ref.grad.abs().max().item()
        assert p.grad is not None, pname
        torch.testing.assert_close(p.grad.double(), p_ref.grad, atol=1e-5 * max(scale, 1e-3), rtol=1e-4,
                                   msg=lambda m: f"{name} {hp} grad {pname}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, reference, hp", CASES)
def test_loss_and_gradients_match_float64_port(name, reference, hp, backend, setup):
    original, augmented, student0, batch = setup
    student = copy.deepcopy(student0)
    loss, _ = get_method(name).loss(_context(original, augmented, student, backend, hp), batch)
    loss.backward()
    models = tuple(copy.deepcopy(m).double() for m in (student0, original, augmented))
    ref = reference(models, batch, hp)
    ref.backward()
    _check_against(name, loss, student, ref, models[0], hp)


def test_undial_differs_from_open_unlearning_only_at_masked_tokens(setup):
    """open-unlearning lowers vocab entry V - 100 at every position labelled -100 (prompt, padding) and
    averages over all positions; on the answer tokens its teacher is exactly ours."""
    original, _, student, batch = setup
    sub = batch["forget"]
    beta = 10.0
    per_token, soft, teacher_logits = undial_official(copy.deepcopy(student).double(), copy.deepcopy(original).double(),
                                                      sub, beta)
    labels = _shifted(sub)
    counted = labels != -100
    assert (~counted).any() and counted.any()
    ours = teacher_logits.clone()
    ours[counted] = ours[counted].scatter_add(-1, labels[counted].unsqueeze(-1),
                                               torch.full_like(labels[counted], -beta, dtype=ours.dtype).unsqueeze(-1))
    # answer tokens: the same teacher
    torch.testing.assert_close(soft[counted], ours[counted].softmax(-1))
    # masked tokens: open-unlearning's teacher lowered entry V - 100 (ours counts no such token)
    vocab = teacher_logits.shape[-1]
    lowered = teacher_logits[~counted].clone()
    lowered[:, vocab - 100] -= beta
    torch.testing.assert_close(soft[~counted], lowered.softmax(-1))
    assert not torch.allclose(soft[~counted], teacher_logits[~counted].softmax(-1))
    # and so its batch loss (mean over every position) is not the answer-token mean
    assert abs(per_token.mean().item() - per_token[counted].mean().item()) > 1e-3


def test_ceu_ignores_the_first_answer_tokens_of_each_row(setup):
    labels = setup[3]["forget"]["labels"]
    for n in (0, 1, 3):
        kept = without_first_answer_tokens(labels, n)
        counted = (labels != -100).sum(-1)
        assert ((kept != -100).sum(-1) == (counted - n).clamp(min=0)).all()
    with pytest.raises(ValueError, match="ceu_ignore_first_n must be a whole number"):
        without_first_answer_tokens(labels, 1.5)


def test_jensun_refuses_a_degenerate_beta(setup):
    original, augmented, student, batch = setup
    ctx = _context(original, augmented, copy.deepcopy(student), "torch", {"jensun_beta": 1.0})
    with pytest.raises(ValueError, match="jensun_beta must be in \\(0, 1\\)"):
        get_method("jensun").loss(ctx, batch)


# ---- RMU --------------------------------------------------------------------------------------------

def forward_with_cache(model, inputs, module, no_grad=True):
    """open-unlearning's RMU.forward_with_cache (src/trainer/unlearn/rmu.py, d3d7cf9): a full forward with
    a hook caching the module's output."""
    cache = []

    def hook(module, input, output):
        cache.append(output[0] if isinstance(output, tuple) else output)
        return None

    handle = module.register_forward_hook(hook)
    with torch.set_grad_enabled(not no_grad):
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    handle.remove()
    return cache[0], outputs


def compute_activation_loss(activation1, activation2, mask, keepdim=True):
    """open-unlearning's RMU.compute_activation_loss (d3d7cf9), verbatim apart from comments and
    ``keepdim``. As written (``keepdim=True``) the [B] row sums are divided by the [B, 1] token counts,
    which broadcasts to a [B, B] matrix: its mean is mean(row sums) * mean(1 / counts), not the intended
    per-row mean (equal only when every row has as many answer tokens). rklu computes the per-row mean
    (``keepdim=False`` here)."""
    squared_diff = torch.nn.functional.mse_loss(activation1, activation2, reduction="none")
    expanded_mask = mask.unsqueeze(-1).expand_as(squared_diff)
    squared_diff_sum = (squared_diff * expanded_mask).mean(dim=2).sum(dim=(1))
    num_tokens = mask.sum(dim=-1, keepdim=keepdim)
    return (squared_diff_sum / num_tokens).mean()


def rmu_reference(student, original, batch, layer, coeff, alpha, seed):
    """open-unlearning's RMU.compute_loss with retain_loss_type EMBED_DIFF; the control vector is ours
    (open-unlearning draws it from the global RNG at the first step: same formula, rand / norm * c)."""
    forget, retain = batch["forget"], batch["retain"]
    h_forget, _ = forward_with_cache(student, forget, student.model.layers[layer], no_grad=False)
    control = control_vector(h_forget.shape[-1], coeff, seed).to(h_forget.dtype).view(1, 1, -1).expand_as(h_forget)
    forget_loss = compute_activation_loss(h_forget, control, forget["labels"] != -100, keepdim=False)
    h_retain, _ = forward_with_cache(student, retain, student.model.layers[layer], no_grad=False)
    h_ref, _ = forward_with_cache(original, retain, original.model.layers[layer], no_grad=True)
    retain_loss = compute_activation_loss(h_retain, h_ref, retain["labels"] != -100, keepdim=False)
    return forget_loss + alpha * retain_loss


@pytest.mark.parametrize("hp", [{"rmu_layer": 0.0}, {"rmu_layer": 1.0},
                                {"rmu_layer": 1.0, "rmu_steering_coeff": 20.0, "rmu_retain_weight": 0.3, "rmu_seed": 5.0}])
def test_rmu_matches_open_unlearning(hp, setup):
    original, _, student0, batch = setup
    student = copy.deepcopy(student0)
    ctx = LossContext(model=student, original=ModelTeacher(copy.deepcopy(original)), hyperparameters=hp)
    loss, metrics = get_method("rmu").loss(ctx, batch)
    loss.backward()
    ref_student, ref_original = copy.deepcopy(student0).double(), copy.deepcopy(original).double()
    ref = rmu_reference(ref_student, ref_original, batch, int(hp["rmu_layer"]), hp.get("rmu_steering_coeff", 2.0),
                        hp.get("rmu_retain_weight", 1.0), hp.get("rmu_seed", 0.0))
    ref.backward()
    assert metrics["retain_activation_mse"] > 0
    _check_against("rmu", loss, student, ref, ref_student, hp)
    # the forward stopped at the layer: nothing above it (nor the head) has a gradient
    layer = int(hp["rmu_layer"])
    above = [p for i, block in enumerate(student.model.layers) if i > layer for p in block.parameters()]
    assert all(p.grad is None for p in above + [student.lm_head.weight, student.model.norm.weight])


def test_open_unlearning_activation_loss_broadcasts_the_token_counts():
    """What the per-row mean fixes: open-unlearning's [B] / [B, 1] division averages a [B, B] matrix."""
    torch.manual_seed(0)
    a, b = torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(3, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]], dtype=torch.bool)
    sums = ((a - b).pow(2).mean(-1) * mask).sum(-1)
    counts = mask.sum(-1).double()
    torch.testing.assert_close(compute_activation_loss(a, b, mask), sums.mean() * (1 / counts).mean())
    torch.testing.assert_close(compute_activation_loss(a, b, mask, keepdim=False), (sums / counts).mean())
    full = torch.ones_like(mask)  # equal counts: the two agree
    torch.testing.assert_close(compute_activation_loss(a, b, full), compute_activation_loss(a, b, full, keepdim=False))


def test_rmu_direction_is_seeded_and_layer_checked(setup):
    original, _, student, batch = setup
    a, b = control_vector(32, 2.0, 0), control_vector(32, 2.0, 0)
    assert torch.equal(a, b) and not torch.equal(a, control_vector(32, 2.0, 1))
    torch.testing.assert_close(a.norm(), torch.tensor(2.0))
    ctx = LossContext(model=copy.deepcopy(student), original=ModelTeacher(copy.deepcopy(original)))
    with pytest.raises(ValueError, match=r"layer must be a whole number in \[0, 1\].*2 decoder layers.*got 7"):
        get_method("rmu").loss(ctx, batch)  # open-unlearning's default layer 7 on a 2-layer model
    ctx = LossContext(model=copy.deepcopy(student), original=ModelTeacher(copy.deepcopy(original)), rmu_layer=0.5)
    with pytest.raises(ValueError, match="rmu_layer must be a whole number"):
        get_method("rmu").loss(ctx, batch)


# ---- through `rklu unlearn` ---------------------------------------------------------------------------

NEW_METHODS = ("whp", "undial", "undial+rt", "undial+kl", "ce-u", "unilogit", "unilogit+rt", "unilogit+kl",
               "jensun", "jensun+jsd", "rmu")


def test_new_methods_and_their_options_are_in_the_unlearn_help():
    from rklu.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["unlearn"].format_help()
    for name in NEW_METHODS:
        assert name in text, name
    for flag in ("--undial-beta", "--ceu-ignore-first-n", "--jensun-beta", "--rmu-layer", "--rmu-steering-coeff",
                 "--rmu-retain-weight", "--rmu-seed"):
        assert flag in text, flag


@pytest.mark.parametrize("method, flags", [("rmu", ["--rmu-layer", "0"]), ("jensun+jsd", []), ("ce-u", [])])
def test_one_step_through_rklu_unlearn_with_the_teacher_cache(method, flags, tmp_path):
    """RMU's original is loaded but not cached (it reads a middle layer), JensUn reads the idk role and the
    original on retain (cached), CE-U has no teacher at all."""
    import json

    from rklu.cli import main

    tok, _, _, _ = tiny_paired_batch(4, max_length=128)
    model_dir = tmp_path / "tiny"
    build_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "run"
    assert main(["unlearn", "--preset", "tiny-cpu", "--model", str(model_dir), "--method", method,
                 "--forget", "tofu:forget01[:4]", "--retain", "tofu:full[3600:3604]", "--max-length", "128",
                 "--epochs", "1", "--batch-size", "4", "--effective-batch-size", "4", "--teacher-cache", "disk",
                 "--kl-backend", "torch", "--no-progress", "--output-dir", str(out), *flags]) == 0
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "completed" and status["method"] == method and status["steps"] == 1
    cached = sorted(p.name for p in (out / "teacher_cache").glob("*.pt"))
    assert cached == {"rmu": [], "jensun+jsd": ["original-retain.pt"], "ce-u": []}[method]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    key = {"rmu": "train_retain_activation_mse", "jensun+jsd": "train_retain_jsd", "ce-u": "train_forget_kl"}[method]
    assert record[key] >= 0
