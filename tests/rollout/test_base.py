"""The engine contract's helpers: seeds, request validation, stop tokens, the registry."""

from __future__ import annotations

import pytest

from posttrain.config import RolloutSection
from posttrain.registry import UnknownNameError
from posttrain.rollout import ENGINES, build_engine
from posttrain.rollout.base import per_prompt_max_tokens, resolve_dtype, sample_seed, stop_token_ids
from posttrain.rollout.hf_engine import HFEngine
from posttrain.rollout.testing import word_tokenizer
from posttrain.rollout.vllm_engine import VLLMEngine


def test_sample_seeds_are_distinct_across_prompts_samples_and_calls():
    seeds = {sample_seed(call, p, j, 8) for call in range(5) for p in range(64) for j in range(8)}
    assert len(seeds) == 5 * 64 * 8


def test_sample_seeds_are_consecutive_within_a_prompt():
    """vLLM seeds child j of a request as seed + j; the hf engine must use the same streams."""
    assert [sample_seed(3, 5, j, 4) for j in range(4)] == [sample_seed(3, 5, 0, 4) + j for j in range(4)]


def test_max_tokens_is_broadcast_or_per_prompt():
    assert per_prompt_max_tokens([[1], [2, 3]], 2, 7) == [7, 7]
    assert per_prompt_max_tokens([[1], [2, 3]], 2, [4, 9]) == [4, 9]


@pytest.mark.parametrize(
    "prompts, n, max_tokens, message",
    [
        ([[1], [2]], 1, [4], "max_tokens has 1 entries for 2 prompts"),
        ([[1], [2]], 1, [4, 0], "prompt 1 has 0"),
        ([[1], []], 1, 4, "prompt 1 is empty"),
        ([[1]], 0, 4, "n must be >= 1"),
    ],
)
def test_bad_requests_fail_naming_the_prompt(prompts, n, max_tokens, message):
    with pytest.raises(ValueError, match=message):
        per_prompt_max_tokens(prompts, n, max_tokens)


def test_responses_stop_at_end_of_turn():
    tokenizer = word_tokenizer(32)
    assert stop_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_engines_are_registered_and_match_the_protocol():
    assert {"hf", "vllm"} <= set(ENGINES.names())
    for cls in (HFEngine, VLLMEngine):
        assert all(callable(getattr(cls, name)) for name in ("generate", "load_weights", "close", "process_env"))


def test_unknown_engine_lists_the_valid_ones(tmp_path):
    with pytest.raises(UnknownNameError, match="Did you mean 'vllm'.*Valid: hf, vllm"):
        build_engine(str(tmp_path), RolloutSection(engine="vlm"))


def test_vllm_process_env_sets_in_process_engine_and_kv_cache():
    env = VLLMEngine.process_env(RolloutSection(kv_cache_gib=2))
    assert env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "2"}
    # a fractional size cannot go in the whole-GiB legacy variable: it is blanked, the engine arg carries it
    assert VLLMEngine.process_env(RolloutSection(kv_cache_gib=0.5))["VLLM_CPU_KVCACHE_SPACE"] == ""
    assert HFEngine.process_env(RolloutSection()) == {}


def test_dtype_auto_is_float32_on_cpu_and_bfloat16_on_gpu():
    assert resolve_dtype("auto", on_gpu=False) == "float32"
    assert resolve_dtype("auto", on_gpu=True) == "bfloat16"
    assert resolve_dtype("float16", on_gpu=False) == "float16"
