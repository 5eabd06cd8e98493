"""Scoring that keeps up with the engines: how many reward workers, and which one scores a request.

Sizing. `verifiers.num_workers: auto` (the default) gives one reward worker
per `verifiers.engines_per_worker` rollout engines, rounded up: 1 for the
tiny recipes' single engine, 7 for the 56 engines of the Olmo 3 7B recipes.
An explicit count is taken as it is.

Routing. Each request (one engine's completions) goes to the reward worker
with the fewest completions in flight (submitted, not yet scored), ties
taken in turn, so a large request (a refill, an evaluation) or a restarted
worker does not skew the pool as a fixed engine -> worker map would. Reward
workers run their calls out of order (Ray's `allow_out_of_order_execution`),
as their inputs become ready: completions that arrive first are scored
first, never held behind a slower engine's request queued before them.

What a step reports (posttrain/stages/rlvr_metrics.py): `scorer/seconds`,
`scorer/utilization` and `scorer/queue_wait_s`, the seconds completions waited
between their engine finishing and a reward worker starting on them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Sequence, Union


def reward_worker_count(num_workers: Union[int, Literal["auto"]], num_engines: int, engines_per_worker: int) -> int:
    """Reward-worker actors for a recipe: `num_workers`, or with "auto" ceil(engines / engines_per_worker).

    >>> reward_worker_count("auto", 56, 8), reward_worker_count("auto", 1, 8), reward_worker_count(3, 56, 8)
    (7, 1, 3)
    """
    if num_workers == "auto":
        return max(1, math.ceil(num_engines / engines_per_worker))
    return int(num_workers)


def least_loaded(loads: Sequence[int], last: int = -1) -> int:
    """Index of the smallest load; among equal ones, the first after `last` (wrapping), so ties rotate.

    >>> least_loaded([3, 1, 1]), least_loaded([3, 1, 1], last=1), least_loaded([0, 0, 0], last=2)
    (1, 2, 0)
    """
    size = len(loads)
    order = [(last + 1 + i) % size for i in range(size)]
    return min(order, key=lambda i: loads[i])  # min keeps the first of equal keys


def _ray_finished(refs: list) -> set:
    import ray

    done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)  # a poll: fetches nothing
    return set(done)


class ScorerLoad:
    """Completions in flight per reward worker, and the choice of the least loaded one.

    `finished(refs)` says which result refs are ready (default: a zero-timeout
    `ray.wait`); a failed call counts as finished, so a dead worker's load
    clears by itself.
    """

    def __init__(self, size: int, finished: Callable[[list], set] = _ray_finished):
        self.inflight: list[list[tuple[Any, int]]] = [[] for _ in range(size)]
        self.finished, self.last = finished, -1

    def loads(self) -> list[int]:
        """Completions in flight per worker, after dropping the calls that have finished."""
        refs = [ref for calls in self.inflight for ref, _ in calls]
        done = self.finished(refs) if refs else set()
        self.inflight = [[(ref, n) for ref, n in calls if ref not in done] for calls in self.inflight]
        return [sum(n for _, n in calls) for calls in self.inflight]

    def pick(self) -> int:
        self.last = least_loaded(self.loads(), self.last)
        return self.last

    def add(self, index: int, ref: Any, items: int) -> None:
        self.inflight[index].append((ref, items))
