"""Every method's training step (loss, backward, optimizer step) runs without a [tokens x vocab] tensor.

A TorchDispatchMode sees every tensor each aten op returns, in forward, backward and the optimizer step. A
tensor with a vocabulary-sized dimension that is larger than the lm_head weight itself ([V, H]) is logits-like
(e.g. [B, T, V] logits, their log-softmax or gradient): the step must not produce one. The fused ops' torch
backend works in chunks of tokens; the test shrinks a chunk to 4 tokens, so its [4, V] buffers stay under the
limit while any whole-batch logits tensor ([B*T, V], B*T in the hundreds) is caught.
"""
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import rklu.kernels.common.torch_chunks as torch_chunks
from method_cases import tiny_paired_batch
from rklu.methods import METHOD_NAMES, LossContext, get_method, task_arithmetic
from rklu.models.heads import ModelTeacher
from rklu.models.tiny import build_tiny_llama

ROWS, HIDDEN, CHUNK_TOKENS = 8, 48, 4


class VocabTensorWatch(TorchDispatchMode):
    """Records the shape of every op output that has a dimension == vocab and more elements than limit."""

    def __init__(self, vocab: int, limit: int):
        super().__init__()
        self.vocab, self.limit, self.seen = vocab, limit, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and self.vocab in t.shape and t.numel() > self.limit:
                self.seen.append((str(func), tuple(t.shape)))
        return out


@pytest.fixture(scope="module")
def setup():
    tok, _, _, batch = tiny_paired_batch(ROWS)
    model = build_tiny_llama(tok, hidden_size=HIDDEN, num_layers=1, num_heads=2, seed=0)
    augmented = copy.deepcopy(model)
    with torch.no_grad():
        for p in augmented.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, augmented, batch


def _vocab_and_limit(model, batch):
    vocab, hidden = model.lm_head.weight.shape
    tokens = min(sub["input_ids"].numel() for sub in batch.values())
    other_dims = {hidden, model.config.intermediate_size, *(d for sub in batch.values() for d in sub["input_ids"].shape)}
    assert vocab not in other_dims, "pick sizes so only vocab-sized tensors have a dimension == V"
    assert tokens > 4 * hidden  # a whole-batch logits tensor is far above the limit
    return vocab, vocab * hidden  # the lm_head weight (and its grad, Adam state) is allowed


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_training_step_builds_no_tokens_x_vocab_tensor(name, setup, monkeypatch):
    model, augmented, batch = setup
    vocab, limit = _vocab_and_limit(model, batch)
    monkeypatch.setattr(torch_chunks, "CHUNK_ELEMENTS", CHUNK_TOKENS * vocab)
    student = copy.deepcopy(model)
    method = get_method(name)
    watch = VocabTensorWatch(vocab, limit)
    if not method.trains:  # task arithmetic: the whole "step" is the weight edit
        with watch:
            task_arithmetic(student, augmented)
    else:
        ctx = LossContext(model=student, original=ModelTeacher(copy.deepcopy(model)),
                          augmented=ModelTeacher(copy.deepcopy(augmented)), kl_backend="torch",
                          rmu_layer=0.0)  # RMU's default layer 7 is past this 1-layer model
        opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
        with watch:
            loss, _ = method.loss(ctx, batch)
            loss.backward()
            opt.step()
        assert torch.isfinite(loss)
        if name == "rmu":  # activation-level: the forward stops at a middle layer, the head takes no part
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
        else:
            assert student.lm_head.weight.grad is not None and student.lm_head.weight.grad.abs().sum() > 0
    assert not watch.seen, f"{name}: [tokens x vocab]-sized tensors were built: {watch.seen[:5]}"


def test_the_watch_catches_materialized_logits(setup):
    """The check itself: an HF forward that returns logits (what the old NLL path did) is flagged."""
    model, _, batch = setup
    vocab, limit = _vocab_and_limit(model, batch)
    watch = VocabTensorWatch(vocab, limit)
    with watch:
        model(input_ids=batch["forget"]["input_ids"]).logits.float().log_softmax(-1).sum().backward()
    assert any(shape[-1] == vocab for _, shape in watch.seen)
