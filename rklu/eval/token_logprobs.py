"""Per-token statistics of answer tokens from final hidden states and the lm_head, for the memorization
and membership-inference metrics (``rklu.eval.memorization``, ``rklu.eval.privacy``).

* ``token_logprobs``: ``log p(label)`` per token through the fused ``rklu.kernels.fused_linear_token_logprob``
  (no [tokens x vocab] tensor; fp32 logits).
* ``token_vocab_stats``: greedy prediction (argmax) and the mean / variance of ``log p`` under the model's
  own next-token distribution (what Min-K%++ normalizes by) — these need the whole row of logits, so they
  are computed chunk by chunk, never for all tokens at once.
* ``answer_token_stats``: runs a model over ``prompt + answer`` pairs (tokenized as TOFU does,
  ``rklu.eval.scoring.encode_qa``) and returns, per sample, the statistics of the answer positions.

Which positions are scored follows open-unlearning's ``tokenwise_logprobs`` / ``tokenwise_vocab_logprobs``
(locuslab/open-unlearning, ``src/evals/metrics/utils.py``): every labelled (non-prompt) token except the
last one — the appended EOS — so a TOFU answer of n tokens + EOS contributes n positions.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

IGNORE_INDEX = -100
CHUNK_TOKENS = 512  # logits of at most this many tokens exist at a time: 512 x 32k x 4 B = 64 MiB


def _chunked_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, chunk: int,
                    scale: float = 1.0, softcap: float | None = None):
    # fp32 logits: the softmax statistics of a bf16 model are not rounded to bf16 first (the fp32 copy of the
    # head is made once, not per chunk); the model's logit scale/softcap applied in fp32, as in the kernels
    from rklu.models.logit_transforms import LogitTransform

    transform = LogitTransform(scale, softcap)
    w = weight.float()
    b = None if bias is None else bias.float()
    for start in range(0, hidden.shape[0], chunk):
        logits = hidden[start:start + chunk].float() @ w.t()
        if b is not None:
            logits = logits + b
        yield start, transform.apply(logits)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                   bias: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX,
                   chunk_size: int = CHUNK_TOKENS, scale: float = 1.0, softcap: float | None = None) -> torch.Tensor:
    """``log softmax(softcap * tanh(scale * (hidden @ weight.T + bias) / softcap))[label]`` per token, fp32,
    shape ``labels.shape``; 0 where ``labels == ignore_index``. ``hidden``: [..., H] aligned with ``labels``
    [...] (already shifted)."""
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} do not align")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} does not match hidden size {hidden.shape[-1]}")
    from rklu.kernels import fused_linear_token_logprob

    # the fused op never builds [tokens x vocab]; on CPU its torch backend walks ``chunk_size`` tokens at a time
    from rklu.models.logit_transforms import LogitTransform

    out = fused_linear_token_logprob(hidden, weight, labels, bias=bias, ignore_index=ignore_index,
                                     chunk_tokens=chunk_size, **LogitTransform(scale, softcap).kernel_kwargs())
    return out.float().reshape(labels.shape)


def token_vocab_stats(hidden: torch.Tensor, weight: torch.Tensor, *, bias: torch.Tensor | None = None,
                      chunk_size: int = CHUNK_TOKENS, scale: float = 1.0, softcap: float | None = None) -> dict:
    """Per token of ``hidden`` [N, H]: ``argmax`` (greedy prediction), ``mu = E_p[log p]`` and
    ``var = E_p[(log p - mu)^2]`` over the vocabulary (Min-K%++'s normalizers), fp32."""
    n = hidden.shape[0]
    argmax = torch.empty(n, dtype=torch.long, device=hidden.device)
    mu = torch.empty(n, dtype=torch.float32, device=hidden.device)
    var = torch.empty(n, dtype=torch.float32, device=hidden.device)
    for start, logits in _chunked_logits(hidden, weight, bias, chunk_size, scale, softcap):
        stop = start + logits.shape[0]
        logp = torch.log_softmax(logits, dim=1)
        p = logp.exp()
        argmax[start:stop] = logits.argmax(dim=1)
        m = (p * logp).sum(1)
        mu[start:stop] = m
        # two-pass variance: E[(log p - mu)^2] stays >= 0 where E[log p^2] - mu^2 cancels catastrophically
        var[start:stop] = (p * (logp - m[:, None]).square()).sum(1)
    return {"argmax": argmax, "mu": mu, "var": var}


def answer_token_stats(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], *, batch_size: int = 16,
                       max_length: int = 200, vocab_stats: bool = True, progress: bool = False,
                       desc: str = "token stats") -> list[dict]:
    """Per sample: numpy arrays over its scored answer positions — ``logprob`` (log p of the label),
    ``label``, and with ``vocab_stats`` also ``pred`` (greedy token), ``mu``, ``var``."""
    from tqdm.auto import tqdm

    from rklu.eval.scoring import encode_qa, ensure_pad_token, model_device
    from rklu.models.heads import final_hidden_states, head_output

    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    ensure_pad_token(tokenizer)
    encoded = [encode_qa(tokenizer, p, a, max_length) for p, a in zip(prompts, answers)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    out: list[dict] = [{} for _ in encoded]
    device = model_device(model)
    head = head_output(model, None)
    weight, bias, transform = head.weight, head.bias, {"scale": head.scale, "softcap": head.softcap}
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            idx = order[start:start + batch_size]
            width = max(len(encoded[i][0]) for i in idx)
            input_ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
            labels = torch.full((len(idx), width), IGNORE_INDEX, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids, lab = encoded[i]
                input_ids[row, :len(ids)] = torch.tensor(ids)
                attention[row, :len(ids)] = 1
                scored = [t for t, y in enumerate(lab) if y != IGNORE_INDEX][:-1]  # drop the EOS prediction
                for t in scored:
                    labels[row, t] = lab[t]
            with torch.no_grad():
                hidden = final_hidden_states(model, input_ids.to(device), attention.to(device))
                shifted = labels[:, 1:].to(hidden.device)
                rows, cols = (shifted != IGNORE_INDEX).nonzero(as_tuple=True)
                h = hidden[:, :-1][rows, cols]          # [M, H]: only the scored positions
                y = shifted[rows, cols]
                logprob = token_logprobs(h, weight, y, bias=bias, **transform).cpu().numpy()
                stats = token_vocab_stats(h, weight, bias=bias, **transform) if vocab_stats else None
            rows_np = rows.cpu().numpy()
            y_np = y.cpu().numpy()
            host = {k: v.cpu().numpy() for k, v in stats.items()} if stats else {}
            for row, i in enumerate(idx):
                sel = rows_np == row
                sample = {"logprob": logprob[sel].astype(np.float64), "label": y_np[sel]}
                if stats:
                    sample.update(pred=host["argmax"][sel], mu=host["mu"][sel].astype(np.float64),
                                  var=host["var"][sel].astype(np.float64))
                out[i] = sample
    finally:
        model.train(was_training)
    return out
