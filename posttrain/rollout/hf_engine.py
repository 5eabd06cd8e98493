"""`hf` rollout engine: `transformers` generate, for tiny CPU runs and tests.

Batching: the len(prompts) * n sample rows are sorted by their token budget
and prompt length, cut into chunks of `rollout.hf_batch_size`, left-padded,
and each chunk is one `model.generate` call (static batching: a chunk runs
until its longest row stops).

Sampling: `generate` runs in greedy mode with one logits processor,
`SeededSampler`, that does the sampling itself. For every row it tempers the
logits, applies top-p (the same rule as vLLM and transformers: drop the
smallest tokens whose cumulative probability is <= 1 - top_p, keep at least
one), draws one uniform number from the row's own `torch.Generator` and picks
the token by inverse CDF; it hands generate() scores that are -inf except at
the chosen token, so the greedy step takes exactly that token. That gives
each sample its own seed (transformers' sampler has one RNG per call) and the
log-prob of the sampled token under the sampling distribution, recorded as it
is drawn (see `posttrain.rollout.base` for what the log-prob means).

Stopping: at <|im_end|> / eos (the stop token is kept in the response) or at
the row's own `max_tokens` (a per-row stopping criterion).

Weights: `load_weights` copies named tensors into the parameters; a
broadcast round (`receive_weights`) and an ipc round (`begin_shared_weights`,
`load_shared_bucket` per bucket, `end_shared_weights`) go through it, a
bucket at a time.
Sleep (`sleep` / `wake`, the contract of `posttrain.rollout.vllm_engine`):
level 2 frees the parameters' memory (storages resized to 0 in place; the
next `load_weights` must give every weight); level 1 moves them to host
memory on GPU and frees nothing on CPU (there they are in host memory
already, and no KV cache outlives a generate call). Buffers stay.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from posttrain.config import RolloutSection
from posttrain.rollout import host_sleep
from posttrain.rollout.base import (
    ENGINES,
    SLEEP_TAGS,
    Completion,
    per_prompt_max_tokens,
    refuse_generate_asleep,
    refuse_load_asleep,
    resolve_dtype,
    sample_seed,
    stop_token_ids,
    wake_tags,
)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits (B, V) with tokens outside the top-p nucleus set to -inf (at least one kept)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1)  # ascending
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= 1.0 - top_p
    drop_sorted[:, -1] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Token (B,) per row: the first index whose cumulative probability exceeds u * total.

    probs (B, V) >= 0; uniforms (B,) in [0, 1). Zero-probability tokens are never
    picked (their cumulative sum equals the previous one). float64 keeps the
    cumulative sum exact enough for vocabularies of 100k+.
    """
    cdf = probs.double().cumsum(dim=-1)
    target = (uniforms.double() * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


class SeededSampler(LogitsProcessor):
    """Samples each row from its own generator; records the sampled tokens' log-probs."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.temperature = temperature
        self.top_p = top_p
        self.logprobs: list[torch.Tensor] = []  # one (B,) tensor per generated position

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float()  # (B, V)
        if self.temperature == 0:
            logprobs = logits.log_softmax(dim=-1)
            chosen = logits.argmax(dim=-1)
        else:
            logprobs = top_p_filter(logits / self.temperature, self.top_p).log_softmax(dim=-1)
            uniforms = torch.stack([torch.rand((), generator=g) for g in self.generators]).to(logits.device)
            chosen = sample_inverse_cdf(logprobs.exp(), uniforms)
        self.logprobs.append(logprobs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1))
        one_hot = torch.full_like(scores, float("-inf"))
        return one_hot.scatter_(1, chosen.unsqueeze(-1), 0.0)


class RowBudget(StoppingCriteria):
    """Stops each row after its own number of generated tokens."""

    def __init__(self, prompt_width: int, budgets: torch.Tensor):
        self.prompt_width = prompt_width
        self.budgets = budgets  # (B,)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return (input_ids.shape[1] - self.prompt_width) >= self.budgets


@ENGINES.register("hf")
class HFEngine:
    """Rollouts with `transformers` generate (see the module docstring)."""

    @staticmethod
    def process_env(options: RolloutSection) -> dict[str, str]:
        """Environment variables a process needs before it builds this engine: none."""
        return {}

    def __init__(self, model_path: str, options: RolloutSection, *, seed: int = 0):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, resolve_dtype(options.dtype, self.device.type == "cuda"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        # generate() merges the checkpoint's generation defaults (repetition penalty, ...)
        # into ours; a neutral one keeps SeededSampler the only logits processor.
        self.model.generation_config = GenerationConfig()
        self.stop_ids = stop_token_ids(self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]
        self.batch_size = options.hf_batch_size
        self.seed = seed
        self.calls = 0
        self.policy_version = 0
        self.asleep: set[str] = set()  # the tags (SLEEP_TAGS) whose memory is released
        self.weights_discarded = False  # a level-2 sleep came and no load_weights since
        self._slept_weights: list = []  # what host_sleep.free_storages freed
        self._shared_since: float | None = None  # when the open ipc round began

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
        budgets = per_prompt_max_tokens(prompts, n, max_tokens)
        refuse_generate_asleep(self)
        if seed is None:  # a fresh stream per call, reproducible from the engine seed
            seed = self.seed * 7919 + self.calls
        self.calls += 1
        rows = [(p, j) for p in range(len(prompts)) for j in range(n)]
        # Rows of similar budget and prompt length share a chunk: less padding, less waiting.
        rows.sort(key=lambda row: (-budgets[row[0]], len(prompts[row[0]]), row))
        done: list[Completion] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            done.extend(self._generate_chunk(chunk, prompts, budgets, n, temperature, top_p, seed))
        return sorted(done, key=lambda c: (c.prompt_index, c.sample_index))

    @torch.inference_mode()
    def _generate_chunk(self, chunk, prompts, budgets, n, temperature, top_p, seed) -> list[Completion]:
        width = max(len(prompts[p]) for p, _ in chunk)
        input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (p, _) in enumerate(chunk):  # left padding: every prompt ends at the same column
            input_ids[row, width - len(prompts[p]) :] = torch.tensor(prompts[p])
            attention[row, width - len(prompts[p]) :] = 1
        row_budgets = torch.tensor([budgets[p] for p, _ in chunk], device=self.device)
        sampler = SeededSampler([sample_seed(seed, p, j, n) for p, j in chunk], temperature, top_p)
        config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=int(row_budgets.max()),
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
        )
        output = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            generation_config=config,
            logits_processor=LogitsProcessorList([sampler]),
            stopping_criteria=StoppingCriteriaList([RowBudget(width, row_budgets)]),
        )
        generated = output[:, width:].tolist()  # (B, S)
        logprobs = torch.stack(sampler.logprobs, dim=1).tolist()  # (B, S)
        return [
            self._completion(p, j, generated[row], logprobs[row], budgets[p]) for row, (p, j) in enumerate(chunk)
        ]

    def _completion(self, p: int, j: int, tokens: list[int], logprobs: list[float], budget: int) -> Completion:
        end, reason = min(budget, len(tokens)), "length"
        for t, token in enumerate(tokens[:end]):
            if token in self.stop_ids:
                end, reason = t + 1, "stop"
                break
        if reason == "length" and end < budget:
            raise RuntimeError(f"generate() returned {end} tokens for prompt {p} sample {j}, expected {budget}")
        return Completion(
            prompt_index=p,
            sample_index=j,
            token_ids=tokens[:end],
            logprobs=logprobs[:end],
            finish_reason=reason,
            text=self.tokenizer.decode(tokens[:end], skip_special_tokens=True),
        )

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> float:
        """Copy tensors into the parameters of the same name (tied weights resolve to one tensor)."""
        refuse_load_asleep(self)
        start = time.perf_counter()
        with torch.no_grad():
            for name, tensor in named_tensors:
                try:
                    target = self.model.get_parameter(name)
                except AttributeError:
                    raise KeyError(f"load_weights: the model has no parameter {name!r}") from None
                if target.shape != tensor.shape:
                    raise ValueError(f"load_weights: {name} has shape {tuple(target.shape)}, got {tuple(tensor.shape)}")
                target.copy_(tensor)
        self.policy_version = version
        self.weights_discarded = False
        return time.perf_counter() - start

    # -- broadcast (weight_sync=broadcast): this process joins the learner's weight group --

    @staticmethod
    def weight_group_size(options: RolloutSection) -> int:
        return 1

    def join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, buckets: list,
                          timeout_s: float) -> None:
        from posttrain.rollout.weight_transfer import Bucket, WeightGroup

        self.leave_weight_group()
        self._weight_group = WeightGroup(host, port, rank_offset, world_size, device=self.device, timeout_s=timeout_s)
        self._weight_buckets = [Bucket.from_wire(b) for b in buckets]

    def receive_weights(self, version: int) -> float:
        from posttrain.rollout.weight_transfer import receive

        if getattr(self, "_weight_group", None) is None:
            raise RuntimeError("receive_weights before join_weight_group")
        start = time.perf_counter()
        self.load_weights(receive(self._weight_group, self._weight_buckets), version)
        return time.perf_counter() - start

    def leave_weight_group(self) -> None:
        group, self._weight_group = getattr(self, "_weight_group", None), None
        if group is not None:
            group.close()

    # -- sleep (module docstring) --

    def sleep(self, level: int) -> dict:
        """Free the weights (level 2) or move them to host memory (level 1, GPU); {"seconds", "bytes"} released.

        A sleep while asleep does nothing (bytes 0).
        """
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        start = time.perf_counter()
        if self.asleep:
            return {"seconds": time.perf_counter() - start, "bytes": 0}
        on_gpu = self.device.type == "cuda"
        if level == 2:
            for parameter in self.model.parameters():
                if not parameter.untyped_storage().resizable():  # in the checkpoint's memory map (CPU)
                    parameter.data = torch.empty_like(parameter)  # its own memory, which can be freed in place
        if level == 2 or on_gpu:
            self._slept_weights = host_sleep.free_storages(self.model.parameters(), offload=level == 1)
        if on_gpu:
            torch.cuda.empty_cache()  # hand the freed blocks back to the device
        else:
            host_sleep.return_free_heap()
        self.asleep = set(SLEEP_TAGS)
        self.weights_discarded = self.weights_discarded or level == 2
        return {"seconds": time.perf_counter() - start, "bytes": host_sleep.freed_bytes(self._slept_weights)}

    def wake(self, tags: list[str] | None = None) -> dict:
        """Take back the memory of `tags` ("weights", "kv_cache"; None: both); {"seconds", "bytes"} restored.

        Weights freed by level 2 come back undefined (load_weights refills them).
        """
        tags = wake_tags(tags)
        start = time.perf_counter()
        restored = 0
        if "weights" in tags and "weights" in self.asleep:
            restored = host_sleep.restore_storages(self._slept_weights)
            self._slept_weights = []
        self.asleep -= set(tags)
        return {"seconds": time.perf_counter() - start, "bytes": restored}
    # -- ipc (weight_sync=ipc): the colocated learner rank hands over shared buffers --

    def begin_shared_weights(self) -> None:
        self._shared_since = time.perf_counter()

    def load_shared_bucket(self, bucket: list, handle: dict) -> int:
        """Copy one bucket (wire form) from the learner's shared buffer into the parameters; its bytes."""
        from posttrain.rollout.shared_buffer import open_shared
        from posttrain.rollout.weight_transfer import Bucket, unpack

        bucket = Bucket.from_wire(bucket)
        flat = open_shared(handle, self.device)[: bucket.nbytes].view(bucket.torch_dtype)
        self.load_weights(unpack(bucket, flat), self.policy_version)  # the round's version comes with its end
        if self.device.type == "cuda":
            torch.cuda.current_stream().synchronize()  # copied before the learner refills the buffer
        return bucket.nbytes

    def end_shared_weights(self, version: int) -> float:
        """The model holds `version`; seconds since `begin_shared_weights`."""
        start, self._shared_since = self._shared_since, None
        if start is None:
            raise RuntimeError("end_shared_weights without begin_shared_weights")
        self.policy_version = version
        return time.perf_counter() - start

    def close(self) -> None:
        self.leave_weight_group()
        self.model = None
