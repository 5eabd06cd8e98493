"""Learning-rate schedules: linear warmup by ratio, then decay (pure functions of the step).

`lr_factor(step, total_steps, warmup_steps, schedule)` is the multiplier of
the peak learning rate used by optimizer step `step` (0-based):

    warmup  (step < W):   (step + 1) / (W + 1)           rises towards 1, never 0
    after   (p = (step - W) / (total - W), in [0, 1)):
      linear:   1 - p                                  (Olmo 3 SFT/DPO: to 0)
      cosine:   0.5 * (1 + cos(pi * p))
      constant: 1                                       (Olmo 3 RLVR)

so the first step already moves the weights and the last step's factor is
small but positive: no step is spent at learning rate 0. W is
`warmup_steps(total, ratio) = round(ratio * total)`.

Example (total 10, W 2, linear): 1/3, 2/3, 1, 7/8, 6/8, ..., 1/8.
"""

from __future__ import annotations

import math

from posttrain.registry import Registry

DECAYS: Registry = Registry("learning-rate schedule")
DECAYS.register("linear", lambda p: 1.0 - p)
DECAYS.register("cosine", lambda p: 0.5 * (1.0 + math.cos(math.pi * p)))
DECAYS.register("constant", lambda p: 1.0)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Warmup length in optimizer steps: round(ratio * total), at most total - 1."""
    return max(0, min(total_steps - 1, round(warmup_ratio * total_steps)))


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (see the module docstring)."""
    decay = DECAYS.get(schedule)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(1, total_steps - warmup)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return decay(progress)


class LRLambda:
    """A picklable `LambdaLR` multiplier (a lambda would not survive checkpointing or Ray)."""

    def __init__(self, total_steps: int, warmup: int, schedule: str):
        DECAYS.get(schedule)  # fail at construction on an unknown name
        self.total_steps, self.warmup, self.schedule = total_steps, warmup, schedule

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup, self.schedule)
