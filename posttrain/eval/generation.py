"""Generation for `posttrain eval`: n samples per item on rollout engines, cached per checkpoint and task.

Prompts (`build_requests`). Each item's messages go through the chat template's
generation prompt (`posttrain.data.chat.generation_prompt`), tokenized with the
checkpoint's tokenizer. Prompt and response must fit the model's context
(`max_position_embeddings`): a response gets min(sampling.max_tokens, context -
prompt) tokens, and a prompt that would leave fewer than min(max_tokens,
context // 2) is left-truncated (the end, where the question sits, is kept) and
counted.

Engines (`Engines`). `engine` names a registered rollout engine (`vllm`, `hf`).
`count=0` builds one engine in this process, without Ray; `count=K` starts K
`EngineActor`s (`spawn_engine_actor`) in one placement group and feeds them
chunks of prompts from one queue: an engine that finishes a chunk takes the
next, so the engines split the prompts between them (data parallel) and a slow
one holds back only its own chunk. Engines start on first use, so a run served
entirely from the cache starts none.

Cache (`ResponseCache`). `OUT/cache/<checkpoint hash>/<task>-<key>.jsonl`, where
the checkpoint hash is `checkpoints.checkpoint_hash` (content) and the key is
`generation_key(task)`: a hash of the task fields that shape a prompt or a
sample (dataset, fields, system, prompt, sampling). The label, its parser and
the verifier are left out on purpose: they change scores, not responses, and
every run scores again. One line per sample, {"id", "sample", "text", "tokens",
"finish_reason"}, appended and flushed as each chunk finishes, so a killed run
loses only the chunks in flight and the next one generates just the items with
fewer than n samples. `<task>-<key>.json` beside it records what the key covers.

Seeds: each engine call is seeded from `seed` and its items' ids, so a run from
an empty cache is reproducible for a given chunking; samples generated on a
resume come from other streams of the same distribution.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from posttrain.checkpoints import write_json_atomic

CHUNK_PROMPTS = 64  # most prompts per engine call: progress is cached this often, and engines balance at this grain
# vLLM-CPU needs a bounded KV cache, and its memory fraction means CPU memory there (DESIGN.md); GPUs keep vLLM's.
CPU_ENGINE_DEFAULTS = {"kv_cache_gib": 1, "gpu_memory_utilization": 0.1}
GENERATION_FIELDS = ("dataset", "fields", "system", "prompt", "sampling")


@dataclass(frozen=True)
class Request:
    """One item's prompt, ready for an engine."""

    id: str
    prompt: str  # the generation prompt as text (before truncation)
    ids: list[int]  # (P,) prompt tokens, left-truncated to fit the context
    max_tokens: int  # response budget: sampling.max_tokens, or less where the context ends first
    truncated: bool


@dataclass(frozen=True)
class Sample:
    """One cached response: a line of the cache file."""

    id: str
    sample: int  # 0 .. n-1
    text: str
    tokens: int
    finish_reason: str  # "stop" or "length"


def digest(value: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def generation_key(task) -> str:
    """Hash of the task fields that decide prompts and samples (`GENERATION_FIELDS`)."""
    return digest(task.model_dump(mode="json", include=set(GENERATION_FIELDS)))


def model_context(checkpoint: str | Path) -> int:
    """Tokens of prompt plus response the model takes (`max_position_embeddings`)."""
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(str(checkpoint)), "max_position_embeddings", None) or 1 << 20)


def build_requests(items: Sequence[Any], tokenizer, context: int, max_tokens: int) -> list[Request]:
    """Each item's generation prompt, tokenized and fitted into the context (module docstring)."""
    from posttrain.data.chat import generation_prompt

    keep = context - min(max_tokens, context // 2)
    requests = []
    for item in items:
        text = generation_prompt(item.messages)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        truncated = len(ids) > keep
        ids = ids[-keep:] if truncated else ids
        requests.append(Request(str(item.id), text, list(ids), min(max_tokens, context - len(ids)), truncated))
    return requests


# --------------------------------------------------------------------------
# The cache


class ResponseCache:
    """The samples of one task on one checkpoint, in an append-only JSONL file (module docstring)."""

    def __init__(self, root: str | Path, checkpoint_hash: str, task):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", task.name)
        self.path = Path(root) / checkpoint_hash / f"{name}-{generation_key(task)}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        about = self.path.with_suffix(".json")
        if not about.is_file():
            write_json_atomic(about, {"task": task.name, "checkpoint_hash": checkpoint_hash,
                                      **task.model_dump(mode="json", include=set(GENERATION_FIELDS))})

    def read(self) -> dict[str, dict[int, Sample]]:
        """{item id: {sample index: Sample}}; a line cut short by a kill is skipped."""
        found: dict[str, dict[int, Sample]] = defaultdict(dict)
        if not self.path.is_file():
            return found
        with open(self.path) as handle:
            for line in handle:
                try:
                    sample = Sample(**json.loads(line))
                except (ValueError, TypeError):
                    continue
                found[sample.id][sample.sample] = sample
        return found

    def append(self, samples: Sequence[Sample]) -> None:
        with open(self.path, "a+") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:  # a run killed mid-line left no newline: start a fresh line
                handle.seek(handle.tell() - 1)
                if handle.read(1) != "\n":
                    handle.write("\n")
            handle.write("".join(json.dumps(asdict(s)) + "\n" for s in samples))
            handle.flush()
            os.fsync(handle.fileno())


# --------------------------------------------------------------------------
# Engines


class Engines:
    """Rollout engines for one checkpoint: in this process (`count=0`) or `count` Ray actors; started on first use."""

    def __init__(self, checkpoint: str | Path, engine: str = "vllm", count: int = 1, options: dict | None = None,
                 seed: int = 0):
        from posttrain.orchestration.cluster import actor_path

        if count < 0:
            raise ValueError(f"engines must be >= 0 (0: one engine in this process, no Ray), got {count}")
        self.checkpoint, self.engine, self.count, self.seed = actor_path(str(checkpoint)), engine, count, seed
        self.extra = dict(options or {})
        self.calls = 0  # engine calls made (a run served from the cache makes none)
        self.served: Counter = Counter()  # prompts generated, per engine index
        self._local = None
        self._actors: list = []
        self._group = None
        self._own_ray = False

    def options(self, context: int):
        """The engines' `RolloutSection`: room for the whole context, CPU defaults for vLLM, then `options`."""
        import torch

        from posttrain.config import RolloutSection

        defaults = {} if torch.cuda.is_available() or self.engine != "vllm" else dict(CPU_ENGINE_DEFAULTS)
        return RolloutSection.model_validate({"engine": self.engine, "max_prompt_length": context,
                                              "max_response_length": context, **defaults, **self.extra})

    def _start(self, context: int) -> None:
        options = self.options(context)
        if self.count == 0:
            from posttrain.rollout import build_engine

            self._local = build_engine(self.checkpoint, options, seed=self.seed)
            return
        import ray
        import torch
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from posttrain.orchestration.actors import spawn_engine_actor
        from posttrain.orchestration.cluster import bundle, init_ray, reserve

        self._own_ray = not ray.is_initialized()
        init_ray()
        gpus = float(options.tensor_parallel_size) if torch.cuda.is_available() else 0.0
        self._group = reserve([bundle(options.cpus_per_engine, gpus)] * self.count, "eval engines")
        self._actors = [
            spawn_engine_actor(self.checkpoint, options, seed=self.seed, num_cpus=options.cpus_per_engine, num_gpus=gpus,
                               scheduling_strategy=PlacementGroupSchedulingStrategy(self._group, i))
            for i in range(self.count)
        ]

    def run(self, requests: Sequence[Request], sampling, context: int,
            on_chunk: Callable[[list[Request], list], None]) -> None:
        """Generate `sampling.n` samples for every request; `on_chunk(requests, completions)` as each chunk ends."""
        if not requests:
            return
        if self._local is None and not self._actors:
            self._start(context)
        per_engine = max(1, self.count)
        size = max(1, min(CHUNK_PROMPTS, -(-len(requests) // (2 * per_engine))))
        chunks = deque(list(requests[i:i + size]) for i in range(0, len(requests), size))
        if self._local is not None:
            while chunks:
                chunk = chunks.popleft()
                on_chunk(chunk, self._local.generate(**self._call(chunk, sampling)))
                self.served[0] += len(chunk)
            return
        self._run_actors(chunks, sampling, on_chunk)

    def _run_actors(self, chunks: deque, sampling, on_chunk) -> None:
        import ray

        running: dict = {}

        def submit(index: int) -> None:
            if chunks:
                chunk = chunks.popleft()
                running[self._actors[index].generate.remote(**self._call(chunk, sampling))] = (index, chunk)

        for index in range(len(self._actors)):
            submit(index)
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            index, chunk = running.pop(done[0])
            submit(index)  # keep the engine busy while this chunk is written down
            on_chunk(chunk, ray.get(done[0]))
            self.served[index] += len(chunk)

    def _call(self, chunk: Sequence[Request], sampling) -> dict:
        self.calls += 1
        seed = int(digest([self.seed, [r.id for r in chunk]], 8), 16) % (2**31 - 1)
        return dict(prompts=[r.ids for r in chunk], n=sampling.n, temperature=sampling.temperature,
                    top_p=sampling.top_p, max_tokens=[r.max_tokens for r in chunk], seed=seed)

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None
        if self._actors or self._group is not None:
            import ray
            from ray.util.placement_group import remove_placement_group

            for actor in self._actors:
                ray.kill(actor)
            if self._group is not None:
                remove_placement_group(self._group)
            self._actors, self._group = [], None
            if self._own_ray:
                ray.shutdown()


# --------------------------------------------------------------------------
# One task


def generate_task(name: str, requests: Sequence[Request], sampling, cache: ResponseCache, engines: Engines,
                  context: int) -> tuple[dict[str, list[Sample]], int]:
    """Every request's `sampling.n` samples: cached ones read, the missing ones generated and cached.

    Returns ({item id: samples in order}, how many items were generated in this call).
    """
    n = sampling.n
    found = cache.read()
    missing = [r for r in requests if len(found.get(r.id, {})) < n or any(j not in found[r.id] for j in range(n))]
    total, began, done = len(missing), time.time(), 0
    if missing:
        print(f"[eval {name}] generating {total} of {len(requests)} prompts x {n} "
              f"({len(requests) - total} cached)", flush=True)

    def on_chunk(chunk: list[Request], completions: list) -> None:
        nonlocal done
        samples = [Sample(chunk[c.prompt_index].id, c.sample_index, c.text, len(c.token_ids), c.finish_reason)
                   for c in completions]
        cache.append(samples)
        for sample in samples:
            found[sample.id][sample.sample] = sample
        done += len(chunk)
        print(f"[eval {name}] {done}/{total} prompts generated ({time.time() - began:.0f}s)", flush=True)

    engines.run(missing, sampling, context, on_chunk)
    return {r.id: [found[r.id][j] for j in range(n)] for r in requests}, total
