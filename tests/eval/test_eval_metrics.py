"""TOFU metric functions on hand-computed cases, and the batched scoring/generation against unbatched references."""
import math

import numpy as np
import pytest
import torch

from rklu.data.formatting import get_prompt_format
from rklu.eval import tofu


def test_rouge_l_recall_hand_cases():
    scores = tofu.rouge_l_recall(
        ["the cat on the mat", "run dog", "", "mat the on sat cat the"],
        ["the cat sat on the mat", "running dogs", "anything here", "the cat sat on the mat"],
    )
    assert scores[0] == pytest.approx(5 / 6)      # LCS "the cat on the mat" / 6 reference tokens
    assert scores[1] == pytest.approx(1.0)        # Porter stemming: running->run, dogs->dog
    assert scores[2] == 0.0
    assert scores[3] == pytest.approx(3 / 6)      # reversed order: LCS "the sat the"
    r1, rl = tofu.rouge_recalls(["b a"], ["a b"])
    assert r1 == [1.0] and rl == [0.5]
    with pytest.raises(ValueError):
        tofu.rouge_l_recall(["a"], [])


def test_truth_ratio_and_scores_hand_cases():
    # R = exp(mean(perturbed) - paraphrased) = exp(2 - 1)
    assert tofu.truth_ratio(1.0, [1.0, 3.0]) == pytest.approx(math.e)
    ratios = [math.e, 1 / math.e, 1.0]
    assert tofu.truth_ratio_score(ratios) == pytest.approx((1 - 1 / math.e + 0 + 0) / 3)
    assert tofu.truth_ratio_score(ratios, forget=True) == pytest.approx((1 / math.e + 1 / math.e + 1) / 3)
    # p_true = e^-1, p_pert = e^-2, e^-3  ->  e^-1 / (e^-1 + e^-2 + e^-3)
    expected = math.exp(-1) / (math.exp(-1) + math.exp(-2) + math.exp(-3))
    assert tofu.normalized_probability(1.0, [2.0, 3.0]) == pytest.approx(expected)


def test_encode_qa_masks_prompt_and_appends_eos(tiny):
    _, tok = tiny
    fmt = get_prompt_format("plain")
    ids, labels = tofu.encode_qa(tok, fmt.prompt("Who?"), fmt.answer("Basil Mahfouz"))
    n_prompt = len(tok(fmt.prompt("Who?"))["input_ids"])
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
    assert labels[:n_prompt] == [-100] * n_prompt and all(l != -100 for l in labels[n_prompt:])
    ids, labels = tofu.encode_qa(tok, fmt.prompt("Who?"), fmt.answer("Basil Mahfouz " * 50), max_length=20)
    assert len(ids) == 20 and ids[-1] != tok.eos_token_id  # truncated: no EOS, like TOFU


def test_batched_losses_match_one_by_one(tiny):
    model, tok = tiny
    fmt = get_prompt_format("plain")
    prompts = [fmt.prompt(q) for q in ("Who wrote Hamlet?", "Capital of France, please?", "Hi")]
    answers = [fmt.answer(a) for a in ("William Shakespeare", "Paris", "A much longer answer with many more words in it")]
    sums, counts = tofu.sequence_losses(model, tok, prompts, answers, batch_size=3)
    for p, a, s, c in zip(prompts, answers, sums, counts):
        ids, labels = tofu.encode_qa(tok, p, a)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        manual = -sum(logp[i - 1, labels[i]].item() for i in range(1, len(ids)) if labels[i] != -100)
        assert c == sum(1 for l in labels[1:] if l != -100)
        assert s == pytest.approx(manual, rel=1e-4)


def test_left_padded_generation_matches_unbatched(tiny):
    model, tok = tiny
    prompts = ["Q: Who wrote Hamlet? A:", "Q: What is the capital of Australia, in a long question? A:", "Q: Hi A:"]
    batched = tofu.generate_greedy(model, tok, prompts, batch_size=3, max_new_tokens=8)
    single = [tofu.generate_greedy(model, tok, [p], batch_size=1, max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    assert tok.padding_side == "right"  # restored
    assert all(isinstance(t, str) and t for t in batched)
