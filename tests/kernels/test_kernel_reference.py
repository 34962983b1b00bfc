"""The PyTorch reference itself: hand-computed values, gradcheck in float64, teacher construction."""
import math

import pytest
import torch

from rklu.kernels import teacher_logits, unlearning_kl_reference


def test_hand_computed_reverse_and_forward_kl():
    student = torch.tensor([[0.0, math.log(3.0)]])  # p_s = [1/4, 3/4]
    original = torch.tensor([[0.0, 0.0]])  # p_t = [1/2, 1/2]
    p, q = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5])
    reverse = unlearning_kl_reference(student, original, direction="reverse")
    forward = unlearning_kl_reference(student, original, direction="forward")
    assert reverse.item() == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-6)
    assert forward.item() == pytest.approx(float((q * (q / p).log()).sum()), rel=1e-6)


def test_teacher_pushes_down_only_boosted_tokens():
    original = torch.tensor([[1.0, 2.0, 3.0]])
    augmented = torch.tensor([[1.5, 2.0, 1.0]])  # boosted token 0 by 0.5, lowered token 2
    teacher = teacher_logits(original, augmented, alpha=8.0)
    assert torch.equal(teacher, torch.tensor([[1.0 - 8.0 * 0.5, 2.0, 3.0]]))


def test_alpha_zero_is_plain_distillation_to_the_original():
    torch.manual_seed(0)
    s, o, a = torch.randn(3, 5, 11).unbind(0)
    assert torch.equal(unlearning_kl_reference(s, o, a, alpha=0.0), unlearning_kl_reference(s, o))


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_float64(direction, reduction):
    torch.manual_seed(1)
    student = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    original, augmented = torch.randn(2, 4, 9, dtype=torch.float64).unbind(0)
    labels = torch.tensor([1, -100, 3, 4])

    def f(z):
        out = unlearning_kl_reference(z, original, augmented, alpha=8.0, direction=direction,
                                      labels=labels, reduction=reduction)
        return out
    assert torch.autograd.gradcheck(f, (student,))


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_closed_form_gradient_matches_autograd(direction):
    """The formulas the kernels implement: RKL p_s*(log p_s - log p_t - KL), FKL p_s - p_t."""
    torch.manual_seed(2)
    student = torch.randn(6, 13, dtype=torch.float64, requires_grad=True)
    original, augmented = torch.randn(2, 6, 13, dtype=torch.float64).unbind(0)
    loss = unlearning_kl_reference(student, original, augmented, direction=direction, reduction="sum")
    (grad,) = torch.autograd.grad(loss, student)
    log_ps = torch.log_softmax(student.detach(), -1)
    log_pt = torch.log_softmax(teacher_logits(original, augmented, 8.0), -1)
    if direction == "reverse":
        kl = (log_ps.exp() * (log_ps - log_pt)).sum(-1, keepdim=True)
        expected = log_ps.exp() * (log_ps - log_pt - kl)
    else:
        expected = log_ps.exp() - log_pt.exp()
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_all_ignored_gives_zero_not_nan():
    student = torch.randn(3, 7, requires_grad=True)
    loss = unlearning_kl_reference(student, torch.randn(3, 7), labels=torch.full((3,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(student.grad) == 0
