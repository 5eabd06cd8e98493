"""`EngineActor` on a local Ray: generate, weight updates, health checks, a killed engine detected."""

from __future__ import annotations

import time

import pytest
import ray
import torch

from posttrain.config import RolloutSection
from posttrain.orchestration.actors import engine_alive, spawn_engine_actor
from posttrain.rollout.shared_buffer import SharedBuffer
from posttrain.rollout.testing import build_checkpoint, random_weights
from posttrain.rollout.weight_transfer import plan_buckets, share

pytestmark = pytest.mark.slow  # Ray start-up and one worker process per engine: 10 s and more each


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("engine_actor") / "base", vocab_size=128, logit_scale=20.0)




PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13]]


def test_hf_engine_actor_generates_and_takes_weights(local_ray, model_dir):
    """By `load_weights`, then by an ipc round (the actor built for it: IpcEngineActor)."""
    actor = spawn_engine_actor(str(model_dir), RolloutSection(engine="hf", weight_sync="ipc"), num_cpus=1)
    state = ray.get(actor.ping.remote(), timeout=120)
    assert state["engine"] == "hf" and state["policy_version"] == 0
    before = ray.get(actor.generate.remote(PROMPTS, 2, temperature=0, max_tokens=6))
    assert [(c.prompt_index, c.sample_index) for c in before] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    weights = list(random_weights(model_dir, seed=3, logit_scale=20.0).items())
    seconds = ray.get(actor.load_weights.remote(weights, 4))
    after = ray.get(actor.generate.remote(PROMPTS, 1, temperature=0, max_tokens=6))
    assert seconds >= 0 and ray.get(actor.ping.remote())["policy_version"] == 4
    assert [c.token_ids for c in after] != [c.token_ids for c in before[::2]]
    # an ipc round from this process (the learner's stand-in) brings the checkpoint's own weights back
    weights = list(random_weights(model_dir, seed=0, logit_scale=20.0).items())
    plan = plan_buckets([(n, t.shape) for n, t in weights], "float32", 2**14)
    buffers = [SharedBuffer.create(max(b.nbytes for b in plan)) for _ in range(2)]
    held = actor.take_shared_weights.remote(0, 60)  # the driver's part: the engine's place among its calls
    sent, seconds = share(actor, buffers, [b.to_wire() for b in plan], weights, 5, round_id=0)
    assert ray.get(held) == seconds
    assert len(plan) > 4 and sent == sum(t.numel() * 4 for _, t in weights) and seconds >= 0
    again = ray.get(actor.generate.remote(PROMPTS, 1, temperature=0, max_tokens=6))
    assert ray.get(actor.ping.remote())["policy_version"] == 5
    assert [c.token_ids for c in again] == [c.token_ids for c in before[::2]]
    for buffer in buffers:
        buffer.close()
    ray.kill(actor)


def test_engine_actor_forwards_sleep_and_wake_and_ping_reports_them(local_ray, model_dir):
    from safetensors.torch import load_file

    actor = spawn_engine_actor(str(model_dir), RolloutSection(engine="hf", sleep_mode=True), num_cpus=1)
    greedy = dict(temperature=0, max_tokens=6)
    try:
        before = ray.get(actor.generate.remote(PROMPTS, 1, **greedy), timeout=120)
        assert ray.get(actor.ping.remote())["asleep"] == []
        assert ray.get(actor.sleep.remote(2))["bytes"] > 0
        assert ray.get(actor.ping.remote())["asleep"] == ["kv_cache", "weights"]
        with pytest.raises(RuntimeError, match="the engine is asleep"):
            ray.get(actor.generate.remote(PROMPTS, 1, **greedy))
        assert ray.get(actor.wake.remote(["weights"]))["bytes"] > 0
        ray.get(actor.load_weights.remote(list(load_file(str(model_dir / "model.safetensors")).items()), 1))
        ray.get(actor.wake.remote(["kv_cache"]))
        assert ray.get(actor.ping.remote())["asleep"] == []
        after = ray.get(actor.generate.remote(PROMPTS, 1, **greedy))
    finally:
        ray.kill(actor)
    assert [c.token_ids for c in after] == [c.token_ids for c in before]


def test_an_ipc_round_that_stops_midway_ends_the_engine(local_ray, model_dir):
    """The learner's side fails after some buckets (weights that leave the plan): it aborts the round, and the
    engine, half-loaded, ends its process (for the pool to restart) instead of generating again."""
    actor = spawn_engine_actor(str(model_dir), RolloutSection(engine="hf", weight_sync="ipc"), num_cpus=1)
    weights = list(random_weights(model_dir, seed=3, logit_scale=20.0).items())
    plan = plan_buckets([(n, t.shape) for n, t in weights], "float32", 2**14)
    buffers = [SharedBuffer.create(max(b.nbytes for b in plan)) for _ in range(2)]
    try:
        held = actor.take_shared_weights.remote(0, 60)
        wrong = weights[:3] + [("model.nonexistent.weight", weights[3][1])] + weights[4:]
        with pytest.raises(ValueError, match="where the bucket plan has"):
            share(actor, buffers, [b.to_wire() for b in plan], wrong, 1, round_id=0)
        with pytest.raises(ray.exceptions.ActorDiedError):
            ray.get(held, timeout=60)
    finally:
        for buffer in buffers:
            buffer.close()
        ray.kill(actor)


def test_killed_engine_is_detected_and_a_replacement_answers(local_ray, model_dir):
    actor = spawn_engine_actor(str(model_dir), RolloutSection(engine="hf"), num_cpus=1)
    assert engine_alive(actor, timeout=120)
    ray.kill(actor)
    # ray.kill is asynchronous: a ping sent at once can still be answered before the kill lands
    deadline = time.monotonic() + 30
    while engine_alive(actor, timeout=5) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not engine_alive(actor, timeout=5)
    replacement = spawn_engine_actor(str(model_dir), RolloutSection(engine="hf"), num_cpus=1)
    assert engine_alive(replacement, timeout=120)
    ray.kill(replacement)


def test_vllm_engine_actor_generates_and_reloads_in_process(local_ray, model_dir):
    """The actor's runtime_env carries VLLM_ENABLE_V1_MULTIPROCESSING=0: in-process reload works there."""
    options = RolloutSection(engine="vllm", kv_cache_gib=1, gpu_memory_utilization=0.1,
                             max_prompt_length=32, max_response_length=32)
    actor = spawn_engine_actor(str(model_dir), options, num_cpus=1)
    try:
        before = ray.get(actor.generate.remote(PROMPTS, 1, temperature=0, max_tokens=6), timeout=600)
        weights = list(random_weights(model_dir, seed=3, logit_scale=20.0).items())
        assert ray.get(actor.load_weights.remote(weights, 2), timeout=120) < 10
        after = ray.get(actor.generate.remote(PROMPTS, 1, temperature=0, max_tokens=6), timeout=120)
        sampled = ray.get(actor.generate.remote(PROMPTS, 2, max_tokens=6, seed=0), timeout=120)
    finally:
        ray.kill(actor)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    assert all(len(c.logprobs) == len(c.token_ids) == 6 and max(c.logprobs) <= 0 for c in sampled)
    assert torch.isfinite(torch.tensor([lp for c in sampled for lp in c.logprobs])).all()


@pytest.mark.gpu
def test_an_ipc_round_updates_a_vllm_engine_on_the_learners_gpu(local_ray, model_dir):
    """weight_sync=ipc on a GPU: a CUDA model in this process (the learner's stand-in) hands the engine its weights
    through CUDA IPC buffers."""
    from transformers import AutoModelForCausalLM

    options = RolloutSection(engine="vllm", weight_sync="ipc", gpu_memory_utilization=0.2,
                             max_prompt_length=32, max_response_length=32)
    actor = spawn_engine_actor(str(model_dir), options, num_cpus=1, num_gpus=0.5)
    try:
        before = ray.get(actor.generate.remote(PROMPTS, 1, temperature=0, max_tokens=6), timeout=600)
        learner = AutoModelForCausalLM.from_pretrained(model_dir).cuda()
        learner.load_state_dict(random_weights(model_dir, seed=3, logit_scale=20.0))
        named = [(name, param.detach()) for name, param in learner.named_parameters()]
        plan = plan_buckets([(n, t.shape) for n, t in named], "bfloat16", 2**16)
        buffers = [SharedBuffer.create(max(b.nbytes for b in plan), "cuda") for _ in range(2)]
        held = actor.take_shared_weights.remote(0, 120)
        share(actor, buffers, [b.to_wire() for b in plan], named, 5, round_id=0)
        ray.get(held)
        after = ray.get(actor.generate.remote(PROMPTS, 1, temperature=0, max_tokens=6), timeout=120)
        assert ray.get(actor.ping.remote())["policy_version"] == 5
    finally:
        ray.kill(actor)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
