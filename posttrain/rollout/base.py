"""The rollout-engine contract: prompts in, sampled completions with log-probs out.

An engine turns token-id prompts into `n` sampled completions per prompt and
takes new weights in place between steps. Engines are registered in `ENGINES`
by name (`vllm`, `hf`) and built from the recipe's `rollout:` section with
`build_engine`; the RLVR loop never knows which one it drives.

Log-prob contract (both engines, tested against a `transformers` forward pass)
------------------------------------------------------------------------------
`Completion.logprobs[t]` is log p(token_t | prompt, token_<t) under the
distribution the engine actually sampled token_t from:

    p = softmax(logits / T), restricted to the top-p nucleus and renormalised

- T = 1, top_p = 1 (the RLVR default): the plain model distribution, the same
  number the learner computes as log_softmax(logits)[token].
- other T > 0: the tempered distribution log_softmax(logits / T)[token], not
  the model's T = 1 log-prob. A learner that wants matching ratios divides its
  logits by the same T (as Olmo 3 / open-instruct do).
- top_p < 1: tokens outside the nucleus have probability 0, and the kept ones
  are renormalised, so the log-prob is >= its untruncated value.
- T = 0 (greedy): the sampling distribution is a point mass, so the engines
  report the untempered model log-prob log_softmax(logits)[token] instead.

The log-probs are computed in float32 from the engine's own logits; engine and
learner still disagree by kernel and dtype noise, which is what truncated
importance sampling corrects.

Seeds: `seed` makes a call reproducible; sample j of prompt i draws from the
stream `sample_seed(seed, i, j, n)`, so a completion does not depend on which
other prompts share the call (up to batching noise in the logits). The two
engines use different samplers, so they do not draw the same tokens from the
same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from posttrain.registry import Registry

if TYPE_CHECKING:
    import torch

    from posttrain.config import RolloutSection

FinishReason = Literal["stop", "length"]

# Olmo 3 chat turns end with <|im_end|>; generation stops there as well as at
# the tokenizer's own eos.
END_OF_TURN = "<|im_end|>"


@dataclass(frozen=True)
class Completion:
    """One sampled response to one prompt."""

    prompt_index: int  # index into the `prompts` list given to generate()
    sample_index: int  # 0 .. n-1 within the prompt's group
    token_ids: list[int]  # (T,) response tokens; ends with the stop token when finish_reason == "stop"
    logprobs: list[float]  # (T,) log-prob of each token under the sampling distribution (module docstring)
    finish_reason: FinishReason  # "stop": a stop token was sampled; "length": max_tokens reached
    text: str  # the response decoded, special tokens skipped
    # in-flight weight updates: (first token, policy version) from each token index where the weights changed
    # during the generation; empty when one version made every token (the engine's version when it finished)
    version_switches: tuple[tuple[int, int], ...] = ()


@runtime_checkable
class Engine(Protocol):
    """What the RLVR loop needs from a rollout engine."""

    policy_version: int  # the `version` of the last load_weights (0: the checkpoint it was built from)

    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int | Sequence[int] = 256,
        seed: int | None = None,
    ) -> list[Completion]:
        """Sample `n` completions for each prompt (token ids, no padding).

        `max_tokens` is one limit for all prompts or one per prompt. Returns
        len(prompts) * n completions ordered by (prompt_index, sample_index).
        """
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> float:
        """Copy the learner's weights, named as its Hugging Face `state_dict()`, into the model in place.

        Give every weight: vLLM re-processes whole layers (fused projections), so a
        partial set is not supported there (the hf engine accepts a subset).
        Names the model does not have raise. Sets `policy_version = version`;
        returns the seconds taken.
        """
        ...

    # Broadcast weight sync (`rollout.weight_sync: broadcast`, posttrain.rollout.weight_transfer):

    def join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, buckets: list,
                          timeout_s: float) -> None:
        """Join the learner's weight group as ranks rank_offset .. + weight_group_size(options) - 1.

        `buckets` is the plan of every later round (`Bucket.to_wire` each). A
        second join leaves the previous group first.
        """
        ...

    def receive_weights(self, version: int) -> float:
        """Take one broadcast round (learner rank 0 sends it meanwhile) into the model; sets `policy_version`,
        returns the seconds taken."""
        ...

    def leave_weight_group(self) -> None:
        ...

    # Sleep (learners sharing the engine's devices; vLLM builds it able to only with `rollout.sleep_mode`):

    asleep: set[str]  # the tags (SLEEP_TAGS) whose memory is released now (empty: awake)
    weights_discarded: bool  # a level-2 sleep came and no weight round since

    def sleep(self, level: int) -> dict:
        """Release memory: level 1 the KV cache (weights kept, in host memory on GPU), level 2 the KV cache and
        the weights (the next weight round must give every weight).

        Returns {"seconds", "bytes" released}. Until every tag is awake again, and after level 2 until new
        weights have landed, `generate` raises RuntimeError. A sleep while asleep does nothing (bytes 0).
        """
        ...

    def wake(self, tags: list[str] | None = None) -> dict:
        """Take back the memory of `tags` ("weights", "kv_cache"; None: both): "weights" first, then the
        weight round, then "kv_cache". Returns {"seconds", "bytes" restored}; awake tags are skipped."""
        ...

    # Shared-memory weight sync (`rollout.weight_sync: ipc`, posttrain.rollout.shared_buffer): the colocated
    # learner rank calls these in order, one round at a time.

    def begin_shared_weights(self) -> None:
        """Start a round; the model is only complete again after `end_shared_weights`."""
        ...

    def load_shared_bucket(self, bucket: list, handle: dict) -> int:
        """Load one bucket (`Bucket.to_wire`) from the learner's shared buffer `handle`; returns its bytes.
        The learner may overwrite the buffer once this returns."""
        ...

    def end_shared_weights(self, version: int) -> float:
        """End the round: sets `policy_version = version`; returns the seconds since `begin_shared_weights`."""
        ...

    def close(self) -> None:
        """Release the model and its caches (the engine is unusable afterwards)."""
        ...


# One signature: Factory(model_path: str, options: RolloutSection, *, seed: int) -> Engine,
# Factory.process_env(options) -> dict[str, str], the environment variables the
# engine's process needs before the engine is built (put in a Ray actor's runtime_env),
# and Factory.weight_group_size(options) -> int, the ranks one engine takes in a weight group.
ENGINES: Registry[Callable[..., Engine]] = Registry("rollout engine")


def build_engine(model_path: str, options: RolloutSection, *, seed: int = 0) -> Engine:
    """The engine named by `options.engine`, loaded from a Hugging Face checkpoint directory."""
    import posttrain.rollout  # noqa: F401  (registers the built-in engines)

    return ENGINES.get(options.engine)(model_path, options, seed=seed)


def sample_seed(seed: int, prompt_index: int, sample_index: int, n: int) -> int:
    """The random stream of sample j of prompt i in a call with this `seed`.

    Consecutive within a prompt (vLLM derives a request's i-th child seed as
    seed + i) and disjoint across prompts and across calls whose seeds differ
    (for fewer than 1,000,003 samples per call).
    """
    return (seed * 1_000_003 + prompt_index * n + sample_index) % (2**31 - 1)


def per_prompt_max_tokens(prompts: list[list[int]], n: int, max_tokens: int | Sequence[int]) -> list[int]:
    """Validate a generate() request; return one max_tokens per prompt."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    for index, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {index} is empty: an engine needs at least one prompt token")
    limits = [int(max_tokens)] * len(prompts) if isinstance(max_tokens, int) else [int(m) for m in max_tokens]
    if len(limits) != len(prompts):
        raise ValueError(f"max_tokens has {len(limits)} entries for {len(prompts)} prompts")
    bad = [i for i, m in enumerate(limits) if m < 1]
    if bad:
        raise ValueError(f"max_tokens must be >= 1; prompt {bad[0]} has {limits[bad[0]]}")
    return limits


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a response: <|im_end|> (if the vocabulary has it) and the tokenizer's eos."""
    ids = []
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.append(end_of_turn)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError(f"the tokenizer has neither {END_OF_TURN} nor an eos token: generation could never stop")
    return ids


SLEEP_TAGS = ("weights", "kv_cache")  # what Engine.wake takes back, in the order it takes them


def wake_tags(tags: Sequence[str] | None) -> list[str]:
    """Validate wake()'s tags; None means all of them."""
    tags = list(SLEEP_TAGS) if tags is None else list(tags)
    unknown = sorted(set(tags) - set(SLEEP_TAGS))
    if unknown:
        raise ValueError(f"unknown wake tags {unknown}; valid: {', '.join(SLEEP_TAGS)}")
    return tags


def refuse_generate_asleep(engine: Engine) -> None:
    """Raise unless the engine holds its memory and weights to generate with."""
    if engine.asleep:
        raise RuntimeError(f"the engine is asleep ({', '.join(sorted(engine.asleep))} released): wake() it "
                           "before generate")
    if engine.weights_discarded:
        raise RuntimeError("sleep(level=2) discarded the weights: load new weights before generate")


def refuse_load_asleep(engine: Engine) -> None:
    """Raise when the weights' memory is released (a round would write into freed memory)."""
    if "weights" in engine.asleep:
        raise RuntimeError("the weights' memory is released: wake(['weights']) before loading weights")


def resolve_dtype(name: str, on_gpu: bool) -> str:
    """`auto` -> float32 on CPU (vLLM-CPU and the CPU kernels want it), bfloat16 on GPU."""
    if name != "auto":
        return name
    return "bfloat16" if on_gpu else "float32"
