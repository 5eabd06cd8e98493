"""Reward-worker sizing and routing (posttrain/orchestration/scoring.py) and the scoring metrics, without Ray."""

from __future__ import annotations

import doctest

import pytest

from posttrain.orchestration import scoring
from posttrain.orchestration.scoring import ScorerLoad, least_loaded, reward_worker_count
from posttrain.stages.rlvr_metrics import scoring_metrics


def test_docstring_examples():
    result = doctest.testmod(scoring)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("workers, engines, per, expected", [
    ("auto", 1, 8, 1), ("auto", 8, 8, 1), ("auto", 9, 8, 2), ("auto", 56, 8, 7), ("auto", 64, 1, 64),
    (1, 56, 8, 1), (12, 2, 8, 12),
])
def test_pool_size_follows_the_engines_unless_the_recipe_gives_a_count(workers, engines, per, expected):
    assert reward_worker_count(workers, engines, per) == expected


def test_ties_rotate_and_the_smallest_load_wins():
    assert least_loaded([0, 0, 0]) == 0
    assert [least_loaded([0, 0, 0], last) for last in (0, 1, 2)] == [1, 2, 0]
    assert least_loaded([5, 2, 9], last=1) == 1  # the least loaded, even right after it was picked


class FakeRefs:
    """Stands in for Ray's ObjectRefs and `ray.wait`: `finish(ref)` marks a call done."""

    def __init__(self):
        self.done: set = set()
        self.count = 0

    def new(self) -> str:
        self.count += 1
        return f"ref{self.count}"

    def finish(self, *refs) -> None:
        self.done.update(refs)

    def finished(self, refs: list) -> set:
        return {r for r in refs if r in self.done}


def route(load: ScorerLoad, refs: FakeRefs, sizes: list[int]) -> list[tuple[int, str]]:
    out = []
    for items in sizes:
        index, ref = load.pick(), refs.new()
        load.add(index, ref, items)
        out.append((index, ref))
    return out


def test_equal_requests_spread_evenly_over_the_workers():
    refs = FakeRefs()
    load = ScorerLoad(3, refs.finished)
    sent = route(load, refs, [8] * 6)
    assert [index for index, _ in sent] == [0, 1, 2, 0, 1, 2]
    assert load.loads() == [16, 16, 16]


def test_a_large_request_steers_the_next_ones_to_the_other_workers():
    """An active-sampling refill (32 completions) lands on worker 0: the next four requests of 8 go to worker 1,
    where a fixed engine -> worker map would have sent half of them behind the refill."""
    refs = FakeRefs()
    load = ScorerLoad(2, refs.finished)
    assert [i for i, _ in route(load, refs, [32, 8, 8, 8, 8])] == [0, 1, 1, 1, 1]
    assert load.loads() == [32, 32]


def test_finished_calls_no_longer_count_and_a_restarted_worker_takes_work_again():
    refs = FakeRefs()
    load = ScorerLoad(2, refs.finished)
    (_, a), (_, b), (_, c) = route(load, refs, [8, 8, 8])  # worker 0: a, c; worker 1: b
    refs.finish(a, c)  # worker 0 done (or dead: a failed call is finished too)
    assert load.loads() == [0, 8]
    assert load.pick() == 0
    assert all(not calls for calls in load.inflight[:1])  # finished refs are forgotten, not kept forever


def test_scoring_metrics_by_hand():
    """3 s of scoring on 2 workers in a 3 s step: half their time; waits 0.5 and 1.5 s: mean 1, max 1.5."""
    metrics = scoring_metrics(3.0, [0.5, 1.5], num_scorers=2, step_seconds=3.0)
    assert metrics == {"scorer/seconds": 3.0, "scorer/utilization": 0.5, "scorer/queue_wait_s": 1.0,
                       "scorer/queue_wait_max_s": 1.5}
    assert scoring_metrics(0.0, [], num_scorers=1, step_seconds=0.0)["scorer/queue_wait_s"] == 0.0


def rlvr_config(**overrides):
    from posttrain.config import apply_overrides, validate

    raw = {"stage": "rlvr", "model": {"path": "m"}, "data": {"train": [{"path": "t.jsonl"}]}, "output": {"dir": "o"},
           "optim": {"lr": 1e-6}}
    apply_overrides(raw, {}, [f"{k}={v}" for k, v in overrides.items()])
    return validate(raw)


def test_role_bundles_size_the_reward_pool_and_place_the_judge():
    from posttrain.orchestration.cluster import role_bundles

    roles = role_bundles(rlvr_config(**{"rollout.num_engines": 56}))
    assert len(roles["engine"]) == 56 and roles["reward"] == [{"CPU": 1.0}] * 7
    assert "judge" not in roles
    roles = role_bundles(rlvr_config(**{"rollout.num_engines": 4, "verifiers.num_workers": 3,
                                        "judge.model": "Qwen/Qwen3-32B", "judge.num_gpus": 4, "judge.cpus": 8}))
    assert roles["reward"] == [{"CPU": 1.0}] * 3
    assert roles["judge"] == [{"CPU": 8.0, "GPU": 4.0}]

