"""Counted tokens: the backends only ever see rows whose label is not ``ignore_index``; these helpers drop
the others up front and put per-token results back in place, shared by every entry point."""
from __future__ import annotations

import torch


def select_counted(labels, ignore_index: int, *rows):
    """(counted mask [N] or None, rows restricted to the counted tokens). Rows are 2-D [N, ...] or None."""
    if labels is None:
        return None, rows
    counted = labels.reshape(-1) != ignore_index
    if bool(counted.all()):
        return counted, rows
    index = counted.nonzero().squeeze(1)
    return counted, tuple(None if r is None else r.index_select(0, index) for r in rows)


def reduce_counted(per_token: torch.Tensor, counted, lead_shape, reduction: str) -> torch.Tensor:
    """Reduce the counted tokens' losses; ``"none"`` scatters them back with zeros at ignored tokens."""
    if reduction == "none":
        if counted is None:
            return per_token.reshape(lead_shape)
        full = per_token.new_zeros(counted.shape[0]).index_copy(0, counted.nonzero().squeeze(1), per_token)
        return full.reshape(lead_shape)
    total = per_token.sum()
    return total if reduction == "sum" else total / per_token.shape[0]


def zero_loss(lead_shape, reduction: str, *params) -> torch.Tensor:
    """Nothing counted: loss 0 connected to ``params`` so they get zero (not missing) gradients; never 0/0."""
    zero = sum(p.sum() * 0.0 for p in params if p is not None)
    zero = zero.float()
    return zero.expand(lead_shape).clone() if reduction == "none" else zero
