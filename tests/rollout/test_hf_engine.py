"""The `hf` engine: sampling maths, log-probs against the learner, seeds, stops, weight updates."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from posttrain.config import RolloutSection
from posttrain.rollout.hf_engine import HFEngine, sample_inverse_cdf, top_p_filter
from posttrain.rollout.testing import reference_logprobs

from .conftest import greedy_reference, load_reference, stopping_weights

# float32 engine vs float32 learner, same kernels but different batch shapes and
# padding: they differ by float32 rounding (order 1e-5), well inside this.
LOGPROB_TOL = 1e-4


@pytest.mark.parametrize("top_p", [0.3, 0.9, 1.0])
def test_top_p_filter_matches_transformers(top_p):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) * 3
    ours = top_p_filter(logits, top_p)
    theirs = TopPLogitsWarper(top_p)(None, logits.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert (~torch.isinf(ours)).sum(-1).min() >= 1


def test_inverse_cdf_sampling_follows_the_probabilities():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    draws = sample_inverse_cdf(probs.expand(20000, -1), torch.rand(20000, generator=torch.Generator().manual_seed(0)))
    freq = torch.bincount(draws, minlength=5).float() / 20000
    assert freq[1] == 0 and freq[4] == 0  # zero-probability tokens, including the last, never drawn
    assert torch.allclose(freq, probs, atol=0.015)  # 4+ standard errors at n=20000
    assert sample_inverse_cdf(probs[None], torch.tensor([0.0])).item() == 0


@pytest.fixture(scope="module")
def engine(model_dir):
    engine = HFEngine(str(model_dir), RolloutSection(engine="hf", hf_batch_size=8), seed=0)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(model_dir):
    return load_reference(model_dir)


def test_returns_n_samples_per_prompt_in_order_within_budgets(engine, prompts):
    budgets = [5, 9, 3, 12, 7, 1]
    out = engine.generate(prompts, 3, max_tokens=budgets, seed=0)
    assert [(c.prompt_index, c.sample_index) for c in out] == [(p, j) for p in range(6) for j in range(3)]
    for c in out:
        assert len(c.token_ids) == len(c.logprobs) <= budgets[c.prompt_index]
        if c.finish_reason == "length":
            assert len(c.token_ids) == budgets[c.prompt_index]
        assert c.text == engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)
    assert engine.generate([], 3) == []


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_logprobs_match_the_learner(engine, reference, prompts, temperature, top_p):
    out = engine.generate(prompts, 4, temperature=temperature, top_p=top_p, max_tokens=24, seed=1)
    diffs = [
        abs(a - b)
        for c in out
        for a, b in zip(c.logprobs, reference_logprobs(reference, prompts[c.prompt_index], c.token_ids, temperature, top_p))
    ]
    assert len(diffs) > 400 and max(diffs) < LOGPROB_TOL
    assert min(lp for c in out for lp in c.logprobs) < -2  # the check covers unlikely tokens too


def test_seeds_reproduce_and_do_not_depend_on_the_batch(engine, prompts):
    first = engine.generate(prompts, 2, max_tokens=10, seed=5)
    again = engine.generate(prompts, 2, max_tokens=10, seed=5)
    alone = engine.generate(prompts[:1], 2, max_tokens=10, seed=5)
    other = engine.generate(prompts, 2, max_tokens=10, seed=6)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.token_ids for c in alone] == [c.token_ids for c in first[:2]]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]
    assert first[0].token_ids != first[1].token_ids  # the samples of a group differ


def test_greedy_matches_reference_and_stops_at_end_of_turn(engine, reference, base_weights, prompts):
    stop_id = engine.stop_ids[0]
    out = engine.generate(prompts, 2, temperature=0, max_tokens=12)
    for c in out:
        assert c.token_ids == greedy_reference(reference, prompts[c.prompt_index], 12, stop_id)
    assert out[0].token_ids == out[1].token_ids
    stopping = stopping_weights(reference, base_weights, prompts[0], stop_id)
    try:
        engine.load_weights(stopping.items(), version=1)
        stopped = engine.generate(prompts[:1], 1, temperature=0, max_tokens=12)[0]
    finally:
        engine.load_weights(base_weights.items(), version=0)
    assert stopped.finish_reason == "stop" and stopped.token_ids[-1] == stop_id and len(stopped.token_ids) <= 3
    assert stopped.token_ids == greedy_reference(load_reference(engine_dir(engine), stopping), prompts[0], 12, stop_id)


def test_load_weights_updates_in_place(engine, model_dir, base_weights, other_weights, prompts):
    before = engine.generate(prompts, 1, temperature=0, max_tokens=8)
    seconds = engine.load_weights(other_weights.items(), version=3)
    try:
        after = engine.generate(prompts, 1, temperature=0, max_tokens=8)
        assert engine.policy_version == 3 and 0 <= seconds < 5
        assert [c.token_ids for c in after] != [c.token_ids for c in before]
        updated = load_reference(model_dir, other_weights)
        for c in after:
            assert c.token_ids == greedy_reference(updated, prompts[c.prompt_index], 8, engine.stop_ids[0])
    finally:
        engine.load_weights(base_weights.items(), version=0)
    assert [c.token_ids for c in engine.generate(prompts, 1, temperature=0, max_tokens=8)] == [c.token_ids for c in before]


def test_load_weights_rejects_unknown_names_and_shapes(engine):
    with pytest.raises(KeyError, match="no parameter 'model.nope.weight'"):
        engine.load_weights([("model.nope.weight", torch.zeros(1))], version=1)
    with pytest.raises(ValueError, match="lm_head.weight has shape"):
        engine.load_weights([("lm_head.weight", torch.zeros(3, 3))], version=1)


def engine_dir(engine) -> str:
    return engine.model.name_or_path


def test_checkpoint_generation_settings_do_not_change_sampling(model_dir, tmp_path, reference, prompts):
    """A checkpoint may carry sampling defaults (Olmo 3's do); only generate()'s arguments count."""
    import shutil

    from transformers import GenerationConfig

    shutil.copytree(model_dir, tmp_path / "model")
    GenerationConfig(do_sample=True, repetition_penalty=3.0, no_repeat_ngram_size=1, temperature=0.6, top_k=5).save_pretrained(tmp_path / "model")
    engine = HFEngine(str(tmp_path / "model"), RolloutSection(engine="hf"))
    out = engine.generate(prompts[:2], 2, max_tokens=16, seed=0)
    diffs = [abs(a - b) for c in out
             for a, b in zip(c.logprobs, reference_logprobs(reference, prompts[c.prompt_index], c.token_ids))]
    assert max(diffs) < LOGPROB_TOL
