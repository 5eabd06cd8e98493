"""Which rows each optimizer step trains on, per rank and micro-batch (SFT rows, DPO pairs).

Rows are shuffled per epoch with the data seed, a step takes the next
`rows_per_step` rows and splits them round-robin over ranks and into
micro-batches. The plan is a pure function of (row count, seed, step), so the
data position of a resumed run is just its step number, and the plan can be
compared with a checkpoint's to refuse a resume on other data or batch sizes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass
class StepPlan:
    """Which rows each optimizer step trains on, per rank and micro-batch (see module docstring)."""

    num_rows: int
    rows_per_step: int
    micro_batch_size: int
    world_size: int
    epochs: float
    seed: int
    max_steps: int | None = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_rows / self.rows_per_step)

    @property
    def total_steps(self) -> int:
        total = math.ceil(self.epochs * self.steps_per_epoch)
        return min(total, self.max_steps) if self.max_steps else total

    @property
    def accumulation(self) -> int:
        return math.ceil(self.rows_per_step / (self.micro_batch_size * self.world_size))

    def order(self, epoch: int) -> list[int]:
        order = list(range(self.num_rows))
        random.Random(f"{self.seed}|epoch{epoch}").shuffle(order)
        return order

    def step_rows(self, step: int) -> list[int]:
        """Row indices of optimizer step `step` (0-based)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.rows_per_step
        return self.order(epoch)[start:start + self.rows_per_step]

    def rank_micro_batches(self, step: int) -> list[list[list[int]]]:
        """[rank][micro-batch] -> row indices; every rank gets the same number of micro-batches (some may be empty)."""
        rows = self.step_rows(step)
        per_rank = [rows[r::self.world_size] for r in range(self.world_size)]
        count = max(1, max(math.ceil(len(p) / self.micro_batch_size) for p in per_rank))
        mbs = self.micro_batch_size
        return [[part[i * mbs:(i + 1) * mbs] for i in range(count)] for part in per_rank]

    def summary(self) -> dict:
        """What a resumable checkpoint records of the plan (a resume must see the same)."""
        return {"rows": self.num_rows, "rows_per_step": self.rows_per_step, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps, "accumulation": self.accumulation, "world_size": self.world_size}


def check_resumable(state: dict, plan: StepPlan, fingerprint: str) -> None:
    """A resumed run must see the same data and plan as its checkpoint, or its data position means nothing."""
    if state.get("data_fingerprint") != fingerprint:
        raise RuntimeError("--resume: the training data differ from the checkpoint's "
                           f"(fingerprint {fingerprint} vs {state.get('data_fingerprint')})")
    if state.get("plan") != plan.summary():
        raise RuntimeError(f"--resume: the step plan differs from the checkpoint's ({plan.summary()} vs "
                           f"{state.get('plan')}); resume with the same batch, epochs and workers")
