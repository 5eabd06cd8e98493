"""Masked reductions and the aggregation of a per-token loss into a scalar.

Every function takes tensors and returns tensors. `mask` is 1 (or True) on the
tokens that count and 0 elsewhere; it may also hold fractional weights. A
reduction over an empty mask returns 0 rather than NaN: a micro-batch whose
tokens were all filtered out (equal-reward groups, overlong responses) then
contributes nothing instead of poisoning the step.

Aggregations (registry `AGGREGATIONS` of `Aggregation`s, one signature):

    AGGREGATIONS.get(name)(loss (B, T), mask (B, T), *, normalizer=None) -> scalar
    AGGREGATIONS.get(name).count(mask (B, T)) -> scalar (what it divides by)

- "token" (DAPO, arXiv 2503.14476, section 3.3; Olmo 3's default): the sum of
  the loss over every unmasked token of the batch divided by the number of
  such tokens, so a long response weighs more than a short one.
- "sequence" (GRPO as published, arXiv 2402.03300, eq. 3): the mean over each
  sequence's tokens, then the mean over the sequences that have any token.

`normalizer` replaces the batch's own count (tokens for "token", sequences for
"sequence"). Pass the count over the whole optimizer step when a step is split
into micro-batches: summing the micro-batch results (each divided by the same
global count) then equals one big batch exactly, whatever the micro-batches'
own counts are. Under data parallelism that averages gradients over W ranks
(DDP, DeepSpeed), pass the global count divided by W.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from posttrain.registry import Registry

AGGREGATIONS: Registry["Aggregation"] = Registry("loss aggregation")


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, with 0 where the denominator is 0 (no NaN, no NaN grad)."""
    denominator = torch.as_tensor(denominator, dtype=numerator.dtype, device=numerator.device)
    ones = torch.ones_like(denominator)
    return numerator / torch.where(denominator != 0, denominator, ones)


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `values * mask`, over everything (dim=None, a scalar) or along `dim`."""
    weighted = values * mask.to(values.dtype)
    return weighted.sum() if dim is None else weighted.sum(dim=dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(values * mask) / sum(mask), over everything or along `dim`; 0 where the mask is empty."""
    count = mask.to(values.dtype)
    count = count.sum() if dim is None else count.sum(dim=dim)
    return _safe_divide(masked_sum(values, mask, dim), count)


def per_sequence_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over each row's unmasked tokens: (B, T), (B, T) -> (B,). 0 for an empty row."""
    return masked_mean(values, mask, dim=-1)


def token_mean(loss: Tensor, mask: Tensor, *, normalizer: float | Tensor | None = None) -> Tensor:
    """sum_{b,t} loss[b, t] * mask[b, t] / N, N = sum(mask) unless `normalizer` is given.

    loss, mask: (B, T). Returns a scalar. With micro-batches k = 1..K of one step
    and N the step's total token count, sum_k token_mean(loss_k, mask_k,
    normalizer=N) equals token_mean over the concatenated batch.
    """
    count = token_count(mask) if normalizer is None else normalizer
    return _safe_divide(masked_sum(loss, mask), count)


def token_count(mask: Tensor) -> Tensor:
    """Number (total weight) of unmasked tokens: (B, T) -> scalar."""
    return mask.to(torch.float32).sum()


def sequence_mean(loss: Tensor, mask: Tensor, *, normalizer: float | Tensor | None = None) -> Tensor:
    """(1 / S) * sum_b mean_t(loss[b, t] over mask[b]) over rows with at least one token.

    loss, mask: (B, T). Returns a scalar. S is the number of non-empty rows
    unless `normalizer` is given (pass the step's total sequence count for
    micro-batch accumulation). Empty rows contribute 0 and are not counted.
    """
    row_means = per_sequence_mean(loss, mask)  # (B,)
    count = sequence_count(mask) if normalizer is None else normalizer
    return _safe_divide(row_means.sum(), count)


def sequence_count(mask: Tensor) -> Tensor:
    """Number of rows with at least one unmasked token: (B, T) -> scalar."""
    return (mask.to(torch.float32).sum(dim=-1) > 0).to(torch.float32).sum()


@dataclass(frozen=True)
class Aggregation:
    """A loss aggregation: `reduce(loss, mask, normalizer=)` and the `count` it divides by.

    Calling it reduces. `count(mask)` summed over a step's micro-batches (and
    ranks) is the `normalizer` that makes accumulation equal one big batch.
    """

    reduce: Callable[..., Tensor]
    count: Callable[[Tensor], Tensor]

    def __call__(self, loss: Tensor, mask: Tensor, *, normalizer: float | Tensor | None = None) -> Tensor:
        return self.reduce(loss, mask, normalizer=normalizer)


AGGREGATIONS.register("token", Aggregation(token_mean, token_count))
AGGREGATIONS.register("sequence", Aggregation(sequence_mean, sequence_count))


def aggregate(loss: Tensor, mask: Tensor, how: str, *, normalizer: float | Tensor | None = None) -> Tensor:
    """Aggregate a per-token loss (B, T) into a scalar with the registered method `how`."""
    return AGGREGATIONS.get(how)(loss, mask, normalizer=normalizer)
