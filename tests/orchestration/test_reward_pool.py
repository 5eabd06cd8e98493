"""Several reward workers on a local Ray: the rollout queue spreads requests over them, each worker scores
whichever completions are ready first, and each step reports its scoring time and queue waits.

The toy RLVR setting of tests/stages/rlvr_toy.py (hf engines on a random 2-layer Olmo 3, the toy_parity
verifier), no learner.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

STAGES = Path(__file__).resolve().parent.parent / "stages"
sys.path.insert(0, str(STAGES))
os.environ["PYTHONPATH"] = os.pathsep.join([str(STAGES), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

import rlvr_toy  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return rlvr_toy.build(tmp_path_factory.mktemp("toy"))




def test_requests_spread_over_three_reward_workers_and_steps_report_scoring(toy, local_ray):
    from transformers import AutoTokenizer

    from posttrain.data.rlvr import PromptStream, encode_prompts
    from posttrain.orchestration.rollout_queue import RolloutQueue
    from posttrain.orchestration.topology import EnginePool, RewardPool
    from posttrain.stages.rlvr_metrics import scoring_metrics

    config = rlvr_toy.recipe(toy, Path("unused"), **{"rollout.num_engines": 2, "verifiers.num_workers": 3,
                                                     "grpo.prompts_per_step": 6, "grpo.samples_per_prompt": 2})
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus 1?"}], "ground_truth": "0",
             "verifier": "toy_parity"} for i in range(18)]
    prompts = encode_prompts(rows, AutoTokenizer.from_pretrained(config.model.path), 64)[0]
    engines, scorers = EnginePool(config, config.model.path), RewardPool(config)
    try:
        engines.wait_ready()
        scorers.wait_ready()
        assert len(scorers) == 3
        used, submit = [], scorers.submit

        def noted(*args, **kwargs):  # which worker each request went to
            sent = submit(*args, **kwargs)
            used.append(sent[0])
            return sent

        scorers.submit = noted
        queue = RolloutQueue(engines, scorers, PromptStream(prompts, 0), prompts_per_step=6, n=2,
                             sampling=dict(temperature=1.0, top_p=1.0, max_tokens=8), max_async_steps=1,
                             total_steps=3, seed=0, informative=lambda groups: [True] * len(groups))
        for step in range(3):
            rollouts = queue.collect(step)
            assert len(rollouts.groups) == 6 and all(r in (0.0, 1.0) for g in rollouts.groups for r in g.rewards)
            assert len(rollouts.score_waits) == 2 and all(w >= 0 for w in rollouts.score_waits)  # one per engine
            assert rollouts.score_seconds > 0
            metrics = scoring_metrics(rollouts.score_seconds, rollouts.score_waits, num_scorers=3, step_seconds=1.0)
            assert 0 < metrics["scorer/utilization"] and metrics["scorer/queue_wait_max_s"] < 60
        assert sorted(set(used)) == [0, 1, 2] and len(used) == 6  # every worker scored; 2 requests per step
        assert scorers.load.loads() == [0, 0, 0]  # nothing left in flight
    finally:
        engines.shutdown()
        scorers.shutdown()


def test_a_reward_worker_scores_ready_completions_before_earlier_requests_still_generating(toy, local_ray):
    """Request A (sent first) waits for a slow 'engine'; request B's completions exist already. B is scored
    without waiting for A: no head-of-line blocking inside a reward worker."""
    import ray

    from posttrain.orchestration.topology import RewardPool

    config = rlvr_toy.recipe(toy, Path("unused"), **{"verifiers.num_workers": 1})
    scorers = RewardPool(config)
    try:
        scorers.wait_ready()
        completions = [SimpleNamespace(prompt_index=0, text="42")]
        labels = [("string_match", "42")]

        @ray.remote(num_cpus=0)
        def slow_engine():
            time.sleep(8)
            return completions

        _, first, _ = scorers.submit(slow_engine.remote(), labels, items=1)
        _, second, _ = scorers.submit(ray.put(completions), labels, items=1)
        ready, _ = ray.wait([first, second], num_returns=1, timeout=60)
        assert ready == [second], "the ready request waited behind the one still generating"
        assert ray.get(second)[0][:2] == (1.0, True) and ray.get(first)[0][:2] == (1.0, True)
    finally:
        scorers.shutdown()
