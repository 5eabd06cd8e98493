"""RLVR on a local Ray: on-policy and asynchronous steps, engine deaths, verifier failures, resource errors.

A random 2-layer Olmo 3 and the toy verifiers of rlvr_toy.py; every test runs
the real actors (hf engines, reward workers with their process pools, learner
ranks on the torch backend).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

import rlvr_toy  # noqa: E402

from posttrain.metrics import read_metrics  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return rlvr_toy.build(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for the module, 3 logical CPUs (a learner, an engine, a spare), or the test run's Ray."""
    import ray

    from posttrain.orchestration.cluster import init_ray

    init_ray(num_cpus=3)
    yield
    ray.shutdown()


def queue_for(config, prompts):
    """Engines, reward workers and a generation queue over `prompts` (no learner)."""
    from posttrain.data.rlvr import PromptStream
    from posttrain.orchestration.rollout_queue import RolloutQueue
    from posttrain.orchestration.topology import EnginePool, RewardPool

    engines, scorers = EnginePool(config, config.model.path), RewardPool(config)
    engines.wait_ready()
    scorers.wait_ready()
    grpo = config.grpo
    queue = RolloutQueue(engines, scorers, PromptStream(prompts, 0), prompts_per_step=grpo.prompts_per_step,
                         n=grpo.samples_per_prompt, sampling=dict(temperature=1.0, top_p=1.0, max_tokens=8),
                         max_async_steps=grpo.max_async_steps, total_steps=grpo.steps, seed=0,
                         informative=lambda groups: [True] * len(groups))
    return queue, engines, scorers


def encoded(config, rows):
    from transformers import AutoTokenizer

    from posttrain.data.rlvr import encode_prompts

    return encode_prompts(rows, AutoTokenizer.from_pretrained(config.model.path), 64)[0]


def test_synchronous_steps_are_on_policy_and_asynchronous_ones_one_step_behind(toy, local_ray, tmp_path):
    """k = 0: every sample comes from the weights being trained (staleness 0) and the engine's log-probs
    equal the learner's: the weight sync after each step (a broadcast) reached the engine. k = 1 (weights
    through Ray's object store): from the second step on, samples are one version old, and the moved
    weights show as engine/learner disagreement."""
    from posttrain.stages import rlvr

    overrides = {"grpo.steps": 4, "optim.lr": 1e-3, "grpo.filter_equal_groups": False}
    rlvr.run(rlvr_toy.recipe(toy, tmp_path / "sync", **overrides, **{"grpo.max_async_steps": 0,
                                                                     "rollout.weight_sync": "broadcast"}))
    steps = [r for r in read_metrics(tmp_path / "sync") if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["staleness/max"] == 0 for r in steps)
    assert all(abs(r["is_ratio/mean"] - 1) < 1e-3 and r["engine_kl"] < 1e-5 for r in steps)
    assert all(r["weight_sync/load_s"] >= 0 for r in steps)

    rlvr.run(rlvr_toy.recipe(toy, tmp_path / "async", **overrides, **{"grpo.max_async_steps": 1,
                                                                      "rollout.weight_sync": "reload"}))
    steps = [r for r in read_metrics(tmp_path / "async") if "reward/mean" in r]
    assert [r["staleness/max"] for r in steps] == [0, 1, 1, 1]  # step 1 was generated with the first weights
    assert all(r["engine_kl"] > 1e-4 for r in steps[1:])  # the sampling weights differ from the learner's
    for run in ("sync", "async"):
        for phase in ("generate", "score", "advantages", "logprobs", "update", "sync"):
            assert f"time/{phase}" in steps[-1]
        assert (tmp_path / run / "checkpoint" / "manifest.json").is_file()
        assert (tmp_path / run / "plots" / "reward.png").is_file()


def test_colocated_engine_sleeps_through_each_update_and_stays_on_policy(toy, local_ray, tmp_path):
    """distributed.colocate with a vLLM-CPU engine and the ipc sync: every step the engine releases its KV cache
    and weights for the update, wakes, and takes the new weights from its learner rank through shared memory.
    Its log-probs then equal the learner's at every step: nothing was lost in the turns."""
    import json

    from posttrain.stages import rlvr

    out = tmp_path / "colocated"
    rlvr.run(rlvr_toy.recipe(toy, out, **{
        "grpo.steps": 3, "optim.lr": 1e-3, "grpo.filter_equal_groups": False, "grpo.max_async_steps": 0,
        "distributed.colocate": True, "rollout.engine": "vllm", "rollout.weight_sync": "ipc",
        "rollout.kv_cache_gib": 0.25, "rollout.gpu_memory_utilization": 0.1}))
    steps = [r for r in read_metrics(out) if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(abs(r["is_ratio/mean"] - 1) < 1e-3 and r["engine_kl"] < 1e-5 for r in steps)
    # the KV cache (0.25 GiB) and the weights went every step, and came back for the next step's generation
    assert all(r["colocate/engine_sleep_gib"] >= 0.25 for r in steps)
    assert all(r["colocate/engine_wake_gib"] >= 0.25 for r in steps[1:])
    assert all(r["time/colocate"] > 0 for r in steps)
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    assert manifest["placement"]["engine"] == manifest["placement"]["learner"]  # the same bundle


def test_a_killed_engine_is_restarted_and_its_prompts_generated_again(toy, local_ray):
    import ray

    from posttrain.data.rlvr import PromptStream

    config = rlvr_toy.recipe(toy, Path("unused"), **{"grpo.max_async_steps": 1, "grpo.steps": 3})
    prompts = encoded(config, [{"messages": [{"role": "user", "content": f"What is {i} plus 1?"}],
                                "ground_truth": "0", "verifier": "toy_parity"} for i in range(12)])
    queue, engines, scorers = queue_for(config, prompts)
    try:
        pid = ray.get(engines.actors[0].ping.remote())["pid"]
        queue.fill(0)  # steps 0 and 1 are now queued on the engine
        os.kill(pid, signal.SIGKILL)
        for step in (0, 1):
            rollouts = queue.collect(step)
            assert len(rollouts.groups) == 4 and all(len(g.response_ids) == 4 for g in rollouts.groups)
        assert engines.restarts == 1
        assert ray.get(engines.actors[0].ping.remote())["pid"] != pid
        drawn = [p.index for p in PromptStream(prompts, 0).take(8)]
        assert [g.prompt.index for g in rollouts.groups] == drawn[4:]  # step 1 kept its prompts
    finally:
        engines.shutdown()
        scorers.shutdown()


def test_verifier_errors_crashes_and_timeouts_score_zero_and_are_counted(toy, local_ray):
    config = rlvr_toy.recipe(toy, Path("unused"), **{"grpo.prompts_per_step": 4, "grpo.samples_per_prompt": 2,
                                                     "grpo.max_async_steps": 0, "verifiers.timeout": 2.0})
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus 1?"}], "ground_truth": "0", "verifier": v}
            for i, v in enumerate(["toy_raise", "toy_exit", "toy_hang", "toy_parity"])]
    queue, engines, scorers = queue_for(config, encoded(config, rows))
    try:
        rollouts = queue.collect(0)
        by_verifier = {g.verifier_name: g for g in rollouts.groups}
        for name in ("toy_raise", "toy_exit", "toy_hang"):
            assert by_verifier[name].rewards == [0.0, 0.0]
            assert len(by_verifier[name].unscored) == 2
        assert by_verifier["toy_parity"].unscored == []
        counts = rollouts.unscored
        assert counts["toy_raise: error"] == 2 and counts["toy_hang: timeout"] == 2
        assert sum(v for k, v in counts.items() if k.startswith("toy_exit")) == 2
    finally:
        engines.shutdown()
        scorers.shutdown()


def test_a_recipe_that_does_not_fit_the_cluster_fails_naming_what_is_missing(toy, local_ray):
    import ray

    from posttrain.orchestration.cluster import ClusterResourceError
    from posttrain.orchestration.topology import check_resources

    total = int(ray.cluster_resources()["CPU"])
    config = rlvr_toy.recipe(toy, Path("unused"), **{"rollout.num_engines": total, "verifiers.cpus_per_worker": 0.5})
    with pytest.raises(ClusterResourceError) as err:
        check_resources(config)
    message = str(err.value)
    assert f"engine {total} x {{'CPU': 1.0}}" in message and "learner 1 x {'CPU': 1.0}" in message
    assert "reward 1 x {'CPU': 0.5}" in message
    assert f"CPU: needs {total + 1.5:g}, the cluster has {total}" in message
    gpu = rlvr_toy.recipe(toy, Path("unused"), **{"distributed.use_gpu": True})
    with pytest.raises(ClusterResourceError, match="GPU: needs 2, the cluster has 0"):
        check_resources(gpu)
