"""posttrain.algorithms.advantages: group-relative advantages, equal-reward groups, overlong handling."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from posttrain.algorithms.advantages import (
    ADVANTAGES,
    equal_reward_groups,
    overlong_filter_mask,
    soft_overlong_penalty,
)


def _loop_advantages(scores: torch.Tensor, index: list[int], *, divide_by_std: bool, eps: float) -> torch.Tensor:
    """A per-sample loop over flat (N,) scores keyed by a group id, as verl's
    compute_grpo_outcome_advantage does, written independently of the vectorised code."""
    by_group: dict[int, list[float]] = defaultdict(list)
    for score, group in zip(scores.tolist(), index):
        by_group[group].append(score)
    out = torch.empty_like(scores)
    for i, (score, group) in enumerate(zip(scores.tolist(), index)):
        values = torch.tensor(by_group[group], dtype=torch.float64)
        centred = score - values.mean().item()
        out[i] = centred / (values.std().item() + eps) if divide_by_std else centred
    return out


def test_group_mean_hand_worked():
    """Group [1, 0, 0, 1] has mean 0.5 -> [0.5, -0.5, -0.5, 0.5]; group [1, 1, 1, 0] mean 0.75."""
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.25, 0.25, 0.25, -0.75]])
    assert torch.allclose(ADVANTAGES.get("group_mean")(rewards), expected)


def test_group_mean_std_hand_worked():
    """[1, 0, 0, 1]: unbiased std = sqrt(4 * 0.25 / 3) = 0.57735 -> +-0.5 / 0.57735 = +-0.866025."""
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    got = ADVANTAGES.get("group_mean_std")(rewards, eps=0.0)
    assert torch.allclose(got, torch.tensor([[0.866025, -0.866025, -0.866025, 0.866025]]), atol=1e-6)


@pytest.mark.parametrize("name, divide", [("group_mean", False), ("group_mean_std", True)])
def test_vectorised_matches_loop(name, divide):
    torch.manual_seed(0)
    rewards = torch.rand(16, 8).round(decimals=1)  # ties and equal groups happen
    rewards[3] = 1.0
    flat = rewards.flatten()
    index = [p for p in range(16) for _ in range(8)]
    expected = _loop_advantages(flat, index, divide_by_std=divide, eps=1e-6).view(16, 8)
    assert torch.allclose(ADVANTAGES.get(name)(rewards, eps=1e-6), expected, atol=1e-5)


def test_equal_reward_groups_give_zero_advantage_and_are_flagged():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1e-8], [0.0, 1.0, 0.0], [0.3, 0.3, 0.3]])
    flagged = equal_reward_groups(rewards)
    assert flagged.tolist() == [True, True, False, True]
    assert (ADVANTAGES.get("group_mean")(rewards)[flagged].abs() < 1e-6).all()
    assert equal_reward_groups(rewards, atol=0.0).tolist() == [True, False, False, True]


def test_std_of_equal_group_does_not_divide_by_zero():
    got = ADVANTAGES.get("group_mean_std")(torch.ones(2, 4))
    assert torch.isfinite(got).all() and (got == 0).all()


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="num_prompts, group_size"):
        ADVANTAGES.get("group_mean")(torch.ones(8))
    with pytest.raises(ValueError, match="at least 2"):
        ADVANTAGES.get("group_mean_std")(torch.ones(4, 1))


def test_soft_overlong_penalty_hand_worked():
    """max 100, buffer 20: free up to 80 tokens, then linear to -1 at 100 (-0.5 at 90), -1 beyond.

    With penalty_factor 0.5 everything halves.
    """
    lengths = torch.tensor([10, 80, 81, 90, 100, 120])
    expected = torch.tensor([0.0, 0.0, -0.05, -0.5, -1.0, -1.0])
    assert torch.allclose(soft_overlong_penalty(lengths, max_length=100, buffer=20), expected)
    assert torch.allclose(soft_overlong_penalty(lengths, max_length=100, buffer=20, penalty_factor=0.5), expected / 2)
    with pytest.raises(ValueError, match="buffer"):
        soft_overlong_penalty(lengths, max_length=100, buffer=0)


def test_overlong_filter_zeroes_truncated_rows():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    truncated = torch.tensor([False, True, False])
    filtered = overlong_filter_mask(mask, truncated)
    assert filtered.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    assert filtered.dtype == mask.dtype
    assert mask[1].sum() == 3  # the input is not modified
