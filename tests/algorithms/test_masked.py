"""posttrain.algorithms.masked: masked reductions and loss aggregation, against hand-worked numbers."""

from __future__ import annotations

import pytest
import torch

from posttrain.algorithms.masked import (
    AGGREGATIONS,
    aggregate,
    masked_mean,
    masked_sum,
    per_sequence_mean,
)
from posttrain.registry import UnknownNameError

# Two sequences: row 0 has 3 real tokens, row 1 has 1.
LOSS = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 7.0, 7.0, 7.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


def test_masked_sum_and_mean_over_everything():
    """sum = 1 + 2 + 3 + 4 = 10 over 4 tokens, mean = 2.5 (the 9 and the 7s are masked)."""
    assert masked_sum(LOSS, MASK).item() == pytest.approx(10.0)
    assert masked_mean(LOSS, MASK).item() == pytest.approx(2.5)


def test_masked_mean_along_a_dim():
    """Rows: (1 + 2 + 3) / 3 = 2 and 4 / 1 = 4; columns: (1+4)/2, 2, 3, empty -> 0."""
    assert torch.allclose(masked_mean(LOSS, MASK, dim=-1), torch.tensor([2.0, 4.0]))
    assert torch.allclose(masked_mean(LOSS, MASK, dim=0), torch.tensor([2.5, 2.0, 3.0, 0.0]))
    assert torch.allclose(per_sequence_mean(LOSS, MASK), torch.tensor([2.0, 4.0]))


def test_fractional_weights():
    """Weights 0.5 and 1.5 on values 2 and 4: (1 + 6) / 2 = 3.5."""
    values = torch.tensor([2.0, 4.0])
    assert masked_mean(values, torch.tensor([0.5, 1.5])).item() == pytest.approx(3.5)


def test_empty_mask_gives_zero_and_finite_gradient():
    values = torch.tensor([[1.0, 2.0]], requires_grad=True)
    empty = torch.zeros(1, 2)
    for result in (masked_mean(values, empty), aggregate(values, empty, "token"), aggregate(values, empty, "sequence")):
        assert result.item() == 0.0
        (grad,) = torch.autograd.grad(result, values)
        assert torch.isfinite(grad).all() and (grad == 0).all()


def test_token_aggregation_hand_worked():
    """DAPO token mean: (1 + 2 + 3 + 4) / 4 = 2.5; with normalizer 8: 10 / 8 = 1.25."""
    assert aggregate(LOSS, MASK, "token").item() == pytest.approx(2.5)
    assert aggregate(LOSS, MASK, "token", normalizer=8).item() == pytest.approx(1.25)
    assert AGGREGATIONS.get("token").count(MASK).item() == 4


def test_sequence_aggregation_hand_worked():
    """Sequence mean: row means 2 and 4, mean over rows 3 (differs from the token mean 2.5)."""
    assert aggregate(LOSS, MASK, "sequence").item() == pytest.approx(3.0)
    assert AGGREGATIONS.get("sequence").count(MASK).item() == 2


def test_sequence_aggregation_skips_empty_rows():
    """An all-masked third row neither adds to the sum nor to the count: still (2 + 4) / 2 = 3."""
    loss = torch.cat([LOSS, torch.full((1, 4), 100.0)])
    mask = torch.cat([MASK, torch.zeros(1, 4, dtype=MASK.dtype)])
    assert aggregate(loss, mask, "sequence").item() == pytest.approx(3.0)


@pytest.mark.parametrize("how", ["token", "sequence"])
def test_micro_batches_with_global_normalizer_equal_one_big_batch(how):
    """Split 6 ragged rows into micro-batches of 1, 2 and 3 rows: summed results and gradients match."""
    torch.manual_seed(0)
    lengths = torch.tensor([5, 1, 3, 7, 2, 6])
    mask = (torch.arange(8).unsqueeze(0) < lengths.unsqueeze(1)).float()  # (6, 8)
    params = torch.randn(6, 8, requires_grad=True)

    big = aggregate(params**2, mask, how)
    (big_grad,) = torch.autograd.grad(big, params)

    aggregation = AGGREGATIONS.get(how)
    normalizer = sum(aggregation.count(mask[s]) for s in (slice(0, 1), slice(1, 3), slice(3, 6)))
    total = torch.zeros(())
    for s in (slice(0, 1), slice(1, 3), slice(3, 6)):
        total = total + aggregate(params[s] ** 2, mask[s], how, normalizer=normalizer)
    (acc_grad,) = torch.autograd.grad(total, params)

    assert total.item() == pytest.approx(big.item(), rel=1e-6)
    assert torch.allclose(acc_grad, big_grad, atol=1e-7)


def test_per_micro_batch_means_do_not_equal_one_big_batch():
    """The reason for the normalizer: averaging micro-batch token means weighs tokens unequally.

    Rows [1,1,1] (mean 1) and [5] (mean 5): big-batch token mean 8/4 = 2, mean of means 3.
    """
    loss = torch.tensor([[1.0, 1.0, 1.0], [5.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    naive = (aggregate(loss[:1], mask[:1], "token") + aggregate(loss[1:], mask[1:], "token")) / 2
    assert aggregate(loss, mask, "token").item() == pytest.approx(2.0)
    assert naive.item() == pytest.approx(3.0)


def test_unknown_aggregation_lists_valid_names():
    with pytest.raises(UnknownNameError, match="sequence, token"):
        aggregate(LOSS, MASK, "tokens_mean")
