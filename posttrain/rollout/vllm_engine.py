"""`vllm` rollout engine: `vllm.LLM` in this process, GPU package or the CPU build.

Generation: every prompt is one request (`SamplingParams(n=...)`, one seed per
prompt, from which vLLM derives seed + j for sample j), all submitted in one
`LLM.generate` call, so vLLM's scheduler batches them continuously: a finished
sequence frees its slot for a waiting one at the next step. The engine is
built with `logprobs_mode="processed_logprobs"` and requests `logprobs=0`,
which returns exactly the sampled token's log-prob under the tempered,
top-p-truncated distribution (see `posttrain.rollout.base`).

Weight updates, three paths (`rollout.weight_sync`):

- `broadcast` (CPU or GPU; the default of the cluster recipes): the engine is
  built with `posttrain.rollout.weight_receiver.WeightReceiver` as vLLM's
  worker extension and keeps V1 multiprocessing. `join_weight_group` makes
  every worker join the learner's weight group (gloo on CPU, NCCL on GPU; see
  `posttrain.rollout.weight_transfer`), and each `receive_weights` takes one
  bucketed broadcast from learner rank 0 straight into the workers' models.
- `ipc` (an engine colocated with one learner rank: tensor_parallel_size 1,
  the same GPU or machine): the same worker extension and multiprocessing.
  The learner rank fills shared buffers (CUDA IPC on GPUs, /dev/shm files on
  CPUs; `posttrain.rollout.shared_buffer`) and calls `begin_shared_weights`,
  `load_shared_bucket(bucket, handle)` per bucket and
  `end_shared_weights(version)`; the worker opens each buffer, copies the
  bucket out and feeds it to a layerwise reload that stays open across the
  calls. Only the handles pass through this process.
- `reload` (a set-up where no group can be formed): `load_weights` calls the
  worker's `reload_weights(weights_iterator=...)` through
  `LLM.collective_rpc`, with `VLLM_ENABLE_V1_MULTIPROCESSING=0` so the worker
  lives in this process and receives the tensors themselves (nothing is
  serialised); the tensors reach this process through Ray's object store.
  It needs the full set of weights: a layer given only some of its tensors
  is left half-loaded.

All three load through vLLM's layerwise reload, which re-runs each layer's
weight processing (fused qkv / gate-up projections, CPU packing). A
`broadcast` or `ipc` round that fails midway leaves layers without weights,
which no later round can mend: the engine then ends its process (exit code
70), and the pool restarts it and sends it the weights.

In-flight updates (`rollout.inflight_updates`, broadcast only): the engine
actor runs `receive_weights` in its own thread while `generate` runs. The
round reaches vLLM's engine core as a utility call, which the core runs
between two decoding steps; the requests it holds then carry on with the new
weights (their KV cache of earlier tokens stays as the old weights made it,
as in open-instruct's in-flight updates). The worker reports how many tokens
each request had when the weights changed, and each `Completion` records
those switches (`version_switches`). The prefix cache is off in this mode:
a cache reset is impossible while requests run, and new requests must not
reuse blocks computed with old weights.
After any update the prefix cache is reset (cached prompt KV blocks were
computed with the old weights), except with in-flight updates, where it is
off.

Sleep mode (`rollout.sleep_mode`, for learners sharing the engine's
devices): `sleep(level)` releases the KV cache (level 1; on GPU the weights
go to host memory too) or the KV cache and the weights (level 2: the next
weight round must give every weight), and `wake(tags)` takes the memory back
("weights", then the weight round, then "kv_cache"). On GPU these are
vLLM's own `LLM.sleep` / `wake_up` (the engine is built with
`enable_sleep_mode`). vLLM's CPU worker ignores them, so on CPU the worker
extension does it (`posttrain.rollout.host_sleep`, installed whenever
sleep_mode is on). The KV cache's contents are gone after a wake, so the
prefix cache is reset. `generate` refuses to run while any part is asleep
or after a level-2 sleep until new weights have landed, and a weight round
refuses to land in released weights.

Environment: `VLLM_ENABLE_V1_MULTIPROCESSING=0` is required for `reload`
(and set here, except for `broadcast` and `ipc`, which keep vLLM's worker
processes); `rollout.kv_cache_gib` becomes the KV cache size
(`kv_cache_memory_bytes`, and `VLLM_CPU_KVCACHE_SPACE` on CPU builds, whose
legacy variable would otherwise override it). Threads: vLLM drops an
in-process CPU engine to one torch thread unless `OMP_NUM_THREADS` is set;
`spawn_engine_actor` sets it to the actor's CPUs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import torch

from posttrain.config import RolloutSection
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

GIB = 2**30
WORKER_SYNCS = ("broadcast", "ipc")  # the weight syncs that reach vLLM's worker processes (WeightReceiver)


@ENGINES.register("vllm")
class VLLMEngine:
    """Rollouts with `vllm.LLM` (see the module docstring)."""

    @staticmethod
    def process_env(options: RolloutSection) -> dict[str, str]:
        """Environment variables a process needs before it builds this engine."""
        # reload hands weights to the worker in this process; broadcast and ipc reach the worker processes
        # themselves (through the weight group, or shared buffers)
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1" if options.weight_sync in WORKER_SYNCS else "0"}
        if options.kv_cache_gib is not None:  # read by CPU builds only
            whole = float(options.kv_cache_gib).is_integer()
            # The legacy variable takes whole GiB and overrides kv_cache_memory_bytes;
            # empty disables it, so a fractional recipe value still applies.
            env["VLLM_CPU_KVCACHE_SPACE"] = str(int(options.kv_cache_gib)) if whole else ""
        return env

    def __init__(self, model_path: str, options: RolloutSection, *, seed: int = 0):
        on_gpu = self.on_gpu = torch.cuda.is_available()
        os.environ.update(self.process_env(options))
        if os.environ.get("VLLM_CPU_KVCACHE_SPACE") == "":
            # vLLM's env cache parses every variable it knows with int() at start-up, and "" fails there:
            # absent is what "no legacy size" has to be in this process
            del os.environ["VLLM_CPU_KVCACHE_SPACE"]
        import vllm

        kwargs: dict[str, Any] = dict(
            model=str(model_path),
            dtype=resolve_dtype(options.dtype, on_gpu),
            seed=seed,
            tensor_parallel_size=options.tensor_parallel_size,
            gpu_memory_utilization=options.gpu_memory_utilization,
            enforce_eager=(not on_gpu) if options.enforce_eager is None else options.enforce_eager,
            max_model_len=max_model_len(model_path, options),
            logprobs_mode="processed_logprobs",
            # never read the checkpoint's generation_config.json: sampling is exactly what
            # generate() asks for (vLLM's docs: its max_new_tokens would cap every request)
            generation_config="vllm",
        )
        if not on_gpu:
            # vLLM-CPU crashes on a seeded request whose prefill is split across steps ("CPU Generator does not
            # use offset": the step that discards its sampled token rewinds the request's generator, which CPU
            # generators cannot do), which happens once the prompts of a call exceed the step's token budget
            # (e.g. 16 HumanEval prompts x 4 samples). Whole prefills avoid it.
            kwargs["enable_chunked_prefill"] = False
        if options.kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(options.kv_cache_gib * GIB)
        if options.max_num_seqs is not None:
            kwargs["max_num_seqs"] = options.max_num_seqs
        if options.weight_sync in WORKER_SYNCS or options.sleep_mode:
            # the worker-side halves of broadcast and ipc rounds, and of sleep on CPU (module docstring)
            kwargs["worker_extension_cls"] = "posttrain.rollout.weight_receiver.WeightReceiver"
        if options.sleep_mode and on_gpu:
            kwargs["enable_sleep_mode"] = True
        if options.weight_sync == "broadcast":
            if options.inflight_updates:
                kwargs["enable_prefix_caching"] = False
        # vLLM-CPU replaces torch.set_num_threads process-wide with a no-op to guard
        # its thread binding; other code in this process keeps the real one.
        set_num_threads = torch.set_num_threads
        try:
            self.llm = vllm.LLM(**kwargs)
        finally:
            torch.set_num_threads = set_num_threads
        self._sampling_params = vllm.SamplingParams
        self.tokenizer = self.llm.get_tokenizer()
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.seed = seed
        self.calls = 0
        self.policy_version = 0
        self._shared_since: float | None = None  # when the open ipc round began
        self.inflight = options.inflight_updates
        self.sleep_mode = options.sleep_mode
        self.asleep: set[str] = set()  # the tags (SLEEP_TAGS) whose memory is released
        self.weights_discarded = False  # a level-2 sleep came and no weight round since
        # (request id, sample index) -> [(tokens made before, new version)], filled by in-flight rounds
        self._switches: dict[tuple[str, int], list[tuple[int, int]]] = {}
        if self.inflight:
            _serialise_sends(self.llm.llm_engine.engine_core)

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
        if not prompts:
            return []
        if seed is None:  # a fresh stream per call, reproducible from the engine seed
            seed = self.seed * 7919 + self.calls
        self.calls += 1
        # vLLM refuses n > 1 when greedy; n identical greedy requests give the same result.
        copies, per_request = (n, 1) if temperature == 0 else (1, n)
        params = [
            self._sampling_params(
                n=per_request,
                temperature=temperature,
                top_p=top_p,
                max_tokens=budget,
                logprobs=0,  # the sampled token's log-prob only
                seed=sample_seed(seed, index, copy, n),
                stop_token_ids=self.stop_ids,
                skip_special_tokens=True,
            )
            for index, budget in enumerate(budgets)
            for copy in range(copies)
        ]
        requests = [{"prompt_token_ids": list(prompt)} for prompt in prompts for _ in range(copies)]
        outputs = self.llm.generate(requests, params, use_tqdm=False)  # in request order
        return [
            completion
            for position, output in enumerate(outputs)
            for completion in _completions(position // copies, output, first_sample=position % copies,
                                           switches=self._switches)
        ]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> float:
        """In-process reload of a full set of Hugging Face-named weights (module docstring)."""
        refuse_load_asleep(self)
        start = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named_tensors)})
        self.llm.reset_prefix_cache()
        self.policy_version = version
        self.weights_discarded = False
        return time.perf_counter() - start

    # -- broadcast (weight_sync=broadcast): every worker joins the learner's weight group --

    @staticmethod
    def weight_group_size(options: RolloutSection) -> int:
        """Ranks one engine takes in the weight group: one per tensor-parallel worker."""
        return options.tensor_parallel_size

    def join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, buckets: list,
                          timeout_s: float) -> None:
        """Join as ranks rank_offset .. rank_offset + tensor_parallel_size - 1 (`buckets` in wire form)."""
        self.llm.collective_rpc("join_weight_group", args=(host, port, rank_offset, world_size, buckets, timeout_s))

    def receive_weights(self, version: int) -> float:
        """Take one broadcast round (the learner sends it at the same time); seconds taken.

        With in-flight updates this runs beside `generate` (module docstring) and records, for every
        request under way, the token from which `version` made the rest.
        """
        refuse_load_asleep(self)
        start = time.perf_counter()
        try:
            result = self.llm.collective_rpc("receive_weights")[0]
        except Exception as error:
            # vLLM's layerwise reload stopped midway: layers not yet rebuilt are left without weights, and a later
            # round cannot mend them. End the process: the pool restarts the engine and sends it the weights.
            print(f"[vllm engine] weight round {version} failed ({error!r}); ending this engine", flush=True)
            os._exit(70)
        if self.inflight:
            states = dict(self.llm.llm_engine.output_processor.request_states)  # internal id -> its request
            for request_id, state in states.items():
                # a request still waiting for its first step has made nothing with the old weights
                made = result["generated"].get(request_id, 0)
                self._switches.setdefault((state.external_req_id, state.request_index), []).append((made, version))
        else:
            self.llm.reset_prefix_cache()
        self.policy_version = version
        self.weights_discarded = False
        return time.perf_counter() - start

    def leave_weight_group(self) -> None:
        self.llm.collective_rpc("leave_weight_group")

    # -- ipc (weight_sync=ipc): the colocated learner rank hands over shared buffers --

    def begin_shared_weights(self) -> None:
        """Start an ipc round. A round still open (its learner stopped midway) left the model half-loaded:
        the process ends, so that the pool restarts it."""
        if self._shared_since is not None:
            _end_process("an ipc round began before the last one ended")
        refuse_load_asleep(self)
        self._shared_since = time.perf_counter()
        self._round_step("begin_shared_weights")

    def load_shared_bucket(self, bucket: list, handle: dict) -> int:
        """Load one bucket (wire form) from the learner's shared buffer; its bytes. The buffer is free again
        when this returns (the worker copied the bucket out)."""
        return self._round_step("load_shared_bucket", bucket, handle)

    def end_shared_weights(self, version: int) -> float:
        """End the round: the model holds `version`; seconds since `begin_shared_weights`."""
        if self._shared_since is None:
            raise RuntimeError("end_shared_weights without begin_shared_weights")
        self._round_step("end_shared_weights")
        self.llm.reset_prefix_cache()
        self.weights_discarded = False
        self.policy_version = version
        start, self._shared_since = self._shared_since, None
        return time.perf_counter() - start

    def _round_step(self, method: str, *args):
        try:
            return self.llm.collective_rpc(method, args=args)[0]
        except Exception as error:
            _end_process(f"{method} failed ({error!r})")

    # -- sleep mode (rollout.sleep_mode; module docstring) --

    def sleep(self, level: int) -> dict:
        """Release the KV cache (level 1) or the KV cache and the weights (level 2).

        Returns {"seconds", "bytes"}: bytes released (GPU: the device's free memory gained; CPU: the
        sizes of the tensors freed). A sleep while any part is asleep does nothing (bytes 0).
        """
        if not self.sleep_mode:
            raise RuntimeError("this engine was built without rollout.sleep_mode: it cannot sleep")
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        start = time.perf_counter()
        if self.asleep:
            return {"seconds": time.perf_counter() - start, "bytes": 0}
        if self.on_gpu:
            freed = self._device_memory_freed(lambda: self.llm.sleep(level=level))
        else:
            freed = sum(self.llm.collective_rpc("sleep_memory", args=(level,)))
        self.asleep = set(SLEEP_TAGS)
        self.weights_discarded = self.weights_discarded or level == 2
        return {"seconds": time.perf_counter() - start, "bytes": freed}

    def wake(self, tags: list[str] | None = None) -> dict:
        """Take back the memory of `tags` ("weights", "kv_cache"; None: both); {"seconds", "bytes"} restored.

        Tags that are awake are skipped (bytes 0 when none is asleep).
        """
        tags = wake_tags(tags)
        start = time.perf_counter()
        waking = [tag for tag in SLEEP_TAGS if tag in tags and tag in self.asleep]
        if not waking:
            return {"seconds": time.perf_counter() - start, "bytes": 0}
        if self.on_gpu:  # vLLM's sleep already dropped the prefix cache
            restored = -self._device_memory_freed(lambda: self.llm.wake_up(waking))
        else:
            restored = sum(self.llm.collective_rpc("wake_memory", args=(waking,)))
            if "kv_cache" in waking:  # the cache's blocks hold zeros now: none of them may be reused
                self.llm.reset_prefix_cache()
        self.asleep -= set(waking)
        return {"seconds": time.perf_counter() - start, "bytes": restored}

    def _device_memory_freed(self, action) -> int:
        """Free device memory gained by `action`, summed over the engine's GPUs, measured in its workers
        (this process may hold no CUDA context, and need not make one)."""
        before = self.llm.collective_rpc("device_free_memory")
        action()
        after = self.llm.collective_rpc("device_free_memory")
        return sum(a - b for a, b in zip(after, before))

    def close(self) -> None:
        """Stop the engine core and tear down vLLM's process group, so another engine can start here."""
        if self.llm is None:
            return
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        cleanup_dist_env_and_memory()


def _end_process(why: str) -> NoReturn:
    """A weight round stopped midway: vLLM's layerwise reload left layers without weights, and a later round
    cannot mend them. End the process: the pool restarts the engine and sends it the weights."""
    print(f"[vllm engine] {why}; ending this engine", flush=True)
    os._exit(70)


def max_model_len(model_path: str, options: RolloutSection) -> int:
    """Prompt plus response budget, capped at the model's positions (vLLM refuses more at start-up;
    a request that does not fit is refused when it comes)."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    wanted = options.max_prompt_length + options.max_response_length
    return min(wanted, limit) if limit else wanted


def _serialise_sends(client) -> None:
    """Make the engine-core client's request sends thread-safe: in-flight rounds send from a second thread.

    vLLM's synchronous client writes every request (new generations, utility calls) on one ZeroMQ
    socket, which is not safe to use from two threads at once; results come back on its own thread.
    """
    import threading

    lock, send = threading.Lock(), client._send_input

    def locked(*args, **kwargs):
        with lock:
            return send(*args, **kwargs)

    client._send_input = locked


def _completions(prompt_index: int, output, first_sample: int = 0,
                 switches: dict | None = None) -> list[Completion]:
    """The samples of one vLLM RequestOutput, in sample order, numbered from `first_sample`.

    `switches`: in-flight weight changes recorded per (request id, sample index); this output's are
    taken out of it (those at or past the sample's end changed none of its tokens).
    """
    completions = []
    for sample in sorted(output.outputs, key=lambda s: s.index):
        if sample.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished prompt {prompt_index} sample {sample.index} with {sample.finish_reason!r}")
        tokens = list(sample.token_ids)
        logprobs = [step[token].logprob for step, token in zip(sample.logprobs, tokens)]
        changed = (switches or {}).pop((output.request_id, sample.index), [])
        completions.append(
            Completion(
                prompt_index=prompt_index,
                sample_index=first_sample + sample.index,
                token_ids=tokens,
                logprobs=logprobs,
                finish_reason=sample.finish_reason,
                text=sample.text,
                version_switches=tuple((made, version) for made, version in changed if made < len(tokens)),
            )
        )
    return completions
