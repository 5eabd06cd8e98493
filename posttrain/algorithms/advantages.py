"""Group-relative advantages, the equal-reward group filter, and overlong handling.

GRPO samples a group of G responses per prompt and scores each response
against its own group (Shao et al. 2024, arXiv 2402.03300, section 4.1.2).
Registry `ADVANTAGES`, one signature:

    fn(rewards (P, G), *, eps=1e-6) -> advantages (P, G)

- "group_mean": A = r - mean(r over the group). Olmo 3's OlmoRL default: not
  dividing by the std avoids up-weighting groups that are nearly all right or
  all wrong (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783).
- "group_mean_std": A = (r - mean) / (std + eps), GRPO as published; std is
  the unbiased sample std (torch.std), as TRL and verl use.

A group whose rewards are all equal has zero advantage everywhere and so no
policy gradient; `equal_reward_groups` finds them so the stage can drop them
(and, with active sampling, draw more prompts).
"""

from __future__ import annotations

import torch
from torch import Tensor

from posttrain.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")


def _check_groups(rewards: Tensor, min_size: int) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (num_prompts, group_size), got shape {tuple(rewards.shape)}")
    if rewards.shape[1] < min_size:
        raise ValueError(f"group_size must be at least {min_size}, got {rewards.shape[1]}")


@ADVANTAGES.register("group_mean")
def group_mean_advantages(rewards: Tensor, *, eps: float = 1e-6) -> Tensor:
    """A[p, g] = r[p, g] - mean_g' r[p, g']. rewards (P, G) -> (P, G); eps unused."""
    _check_groups(rewards, 1)
    return rewards - rewards.mean(dim=1, keepdim=True)


@ADVANTAGES.register("group_mean_std")
def group_mean_std_advantages(rewards: Tensor, *, eps: float = 1e-6) -> Tensor:
    """A[p, g] = (r[p, g] - mean_p) / (std_p + eps), std unbiased. (P, G) -> (P, G), G >= 2."""
    _check_groups(rewards, 2)
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    return (rewards - mean) / (std + eps)


def equal_reward_groups(rewards: Tensor, *, atol: float = 1e-6) -> Tensor:
    """True for each group whose rewards all lie within `atol` of each other: (P, G) -> (P,) bool."""
    _check_groups(rewards, 1)
    spread = rewards.max(dim=1).values - rewards.min(dim=1).values
    return spread <= atol


def soft_overlong_penalty(
    response_lengths: Tensor, *, max_length: int, buffer: int, penalty_factor: float = 1.0
) -> Tensor:
    """DAPO's soft overlong punishment (arXiv 2503.14476, section 3.4), to add to the reward.

    With L = max_length and C = buffer, for a response of |y| tokens:
        0                        if |y| <= L - C
        ((L - C) - |y|) / C      if L - C < |y| <= L        (linear, 0 down to -1)
        -1                       if |y| > L
    times penalty_factor. response_lengths (N,) -> (N,) float32.
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"buffer must be in (0, max_length={max_length}], got {buffer}")
    excess = (response_lengths.float() - (max_length - buffer)).clamp(min=0.0, max=float(buffer))
    return -penalty_factor * excess / buffer


def overlong_filter_mask(response_mask: Tensor, truncated: Tensor) -> Tensor:
    """Overlong filtering (DAPO, section 3.4): truncated responses get zero loss weight.

    response_mask (N, T), truncated (N,) bool -> (N, T), same dtype as
    response_mask, with the rows of truncated responses zeroed. A response cut
    off at the length limit has no verdict on its reasoning, so its reward is
    noise; dropping it from the loss keeps that noise out.
    """
    keep = (~truncated.bool()).unsqueeze(-1)  # (N, 1)
    return response_mask * keep.to(response_mask.dtype)


def select_groups(equal: Tensor, prompts_per_step: int, filter_equal: bool) -> Tensor:
    """(P,) bool: the groups an update uses. Filtering drops equal-reward groups and keeps at most
    `prompts_per_step` informative ones, the first in draw order (active sampling may have drawn more)."""
    if not filter_equal:
        return torch.ones_like(equal)
    keep = ~equal
    surplus = keep.cumsum(0) > prompts_per_step
    return keep & ~surplus
