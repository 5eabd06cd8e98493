"""Colocation (`distributed.colocate`): the recipe rules, the shared bundles, and the learner's offload contract."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
import rlvr_toy  # noqa: E402


def toy_recipe(tmp_path, **overrides):
    paths = {"model": tmp_path / "m", "train": tmp_path / "t.jsonl", "heldout": tmp_path / "h.jsonl"}
    return rlvr_toy.recipe(paths, tmp_path / "out", **overrides)


COLOCATED = {"distributed.colocate": True, "grpo.max_async_steps": 0}


def test_a_colocated_recipe_builds_engines_able_to_sleep(tmp_path):
    config = toy_recipe(tmp_path, **COLOCATED)
    assert config.distributed.colocate and config.rollout.sleep_mode
    assert not toy_recipe(tmp_path).rollout.sleep_mode


@pytest.mark.parametrize("overrides, message", [
    ({"grpo.max_async_steps": 1}, "grpo.max_async_steps must be 0"),
    ({"rollout.num_engines": 2}, "rollout.num_engines (2) must equal distributed.num_workers (1)"),
    ({"rollout.tensor_parallel_size": 2}, "rollout.tensor_parallel_size must be 1"),
    ({"distributed.use_gpu": True, "rollout.weight_sync": "broadcast"}, "NCCL cannot hold a learner rank"),
    ({"rollout.engine": "vllm", "rollout.weight_sync": "broadcast", "rollout.inflight_updates": True},
     "rollout.inflight_updates must be false"),
])
def test_colocation_refuses_what_cannot_take_turns_on_one_device(tmp_path, overrides, message):
    with pytest.raises(ValueError, match="distributed.colocate") as caught:
        toy_recipe(tmp_path, **{**COLOCATED, **overrides})
    assert message in str(caught.value)


def test_sft_and_dpo_refuse_colocation(tmp_path):
    from posttrain.config import validate

    raw = {"stage": "sft", "model": {"path": "m"}, "data": {"train": [{"path": "t.jsonl"}]},
           "output": {"dir": str(tmp_path)}, "optim": {"lr": 1e-4}, "batch": {"sequences": 8},
           "distributed": {"colocate": True}}
    with pytest.raises(ValueError, match="distributed.colocate is for RLVR"):
        validate(raw, {})


def test_colocated_engines_share_the_learner_bundles(tmp_path):
    """No engine role of its own: each learner bundle holds its rank's and its engine's CPUs and custom resources,
    and the one GPU both use."""
    from posttrain.orchestration.cluster import role_bundles

    config = toy_recipe(tmp_path, **COLOCATED, **{
        "distributed.num_workers": 2, "rollout.num_engines": 2, "distributed.use_gpu": True,
        "rollout.weight_sync": "ipc", "rollout.cpus_per_engine": 3,
        "distributed.resources_per_worker": {"trainer": 1}, "rollout.resources_per_engine": {"rollout": 1}})
    roles = role_bundles(config)
    assert "engine" not in roles
    assert roles["learner"] == [{"CPU": 4.0, "GPU": 1.0, "trainer": 1.0, "rollout": 1.0}] * 2


def test_a_learner_on_the_cpu_has_nothing_to_offload_and_an_offloaded_one_reloads_before_it_is_used(tmp_path):
    """On the CPU the state already lives in host memory: offload moves nothing. Where it moved (a GPU; here the
    backend reports bytes moved), any call that needs the state brings it back first: a checkpoint saved between
    the engines' turn and the learners' is whole."""
    from posttrain.config import DeepSpeedSection, LoraSection, ModelSection, OptimSection
    from posttrain.learner import Learner, LearnerSpec

    model = rlvr_toy.build(tmp_path / "toy")["model"]
    spec = LearnerSpec(model=ModelSection(path=str(model)), optim=OptimSection(lr=1e-3),
                       deepspeed=DeepSpeedSection(enabled=False), lora=LoraSection(), micro_batch_size=1,
                       accumulation=1, total_steps=2)
    learner = Learner(spec)
    assert learner.offload_states()["bytes"] == 0 and not learner.offloaded
    assert learner.reload_states() == {"bytes": 0, "seconds": 0.0}

    reloads = []
    learner.backend.offload = lambda: 1234
    learner.backend.reload = lambda: reloads.append(1) or 1234
    assert learner.offload_states()["bytes"] == 1234 and learner.offloaded
    assert learner.offload_states()["bytes"] == 0  # already away
    (tmp_path / "state").mkdir()
    learner.save_state(tmp_path / "state")
    assert reloads == [1] and not learner.offloaded
    learner.offload_states()
    names = [name for name, _ in learner.named_weights()]
    assert reloads == [1, 1] and names

