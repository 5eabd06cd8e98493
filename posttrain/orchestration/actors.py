"""Thin single-role Ray actors around the RLVR components.

Rollout engines
---------------
`EngineActor` holds one registered rollout engine (`posttrain.rollout`) in
its own worker process and does only what an engine does: `generate`,
`load_weights`, the receiving half of a broadcast weight sync
(`join_weight_group`, `receive_weights`, `leave_weight_group`) or of a vLLM
weight-transfer round (`weight_transfer`), `sleep` and `wake` (learners sharing the engine's devices,
`rollout.sleep_mode`), and `ping`, a cheap call that answers while the engine is
idle, so the driver can tell a dead engine from a busy one
(`engine_alive`) and start a replacement with `spawn_engine_actor`.

Each engine class names the environment its process needs
(`Factory.process_env(options)`: for vLLM, whether V1 multiprocessing is on,
and the KV cache size); `spawn_engine_actor` puts it in the actor's
`runtime_env` together with the driver's Hugging Face and vLLM settings, and
`OMP_NUM_THREADS` = the actor's CPUs, so the engine uses the cores Ray gave it.

A restarted engine starts from the checkpoint it was built from:
`ping()["policy_version"]` says which weights it holds, and the driver sends
the current ones before giving it prompts again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from posttrain.config import RolloutSection

# The vLLM weight-transfer calls an EngineActor forwards to its engine.
WEIGHT_TRANSFER_STEPS = frozenset(
    {
        "init_weight_transfer_engine",
        "start_weight_update",
        "update_weights",
        "finish_weight_update",
        "shutdown_weight_transfer_engine",
    }
)


class EngineActor:
    """One rollout engine in one Ray worker process (use `spawn_engine_actor`)."""

    def __init__(self, model_path: str, options: dict, seed: int = 0, await_weights: bool = False):
        import threading

        from posttrain.rollout import build_engine

        self.options = RolloutSection.model_validate(options)
        self.engine = build_engine(model_path, self.options, seed=seed)
        # a replacement started mid-run generates only once it holds the run's weights (with in-flight updates the
        # round runs in another thread, so the order of calls alone does not ensure it)
        self.weights_ready = threading.Event()
        if not await_weights:
            self.weights_ready.set()

    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int | Sequence[int] = 256,
        seed: int | None = None,
    ):
        self.weights_ready.wait()
        return self.engine.generate(prompts, n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)

    def generate_timed(self, prompts: list[list[int]], n: int, **sampling) -> tuple[list, dict]:
        """`generate`, plus {"seconds", "policy_version", "first_version", "finished_at"} of the call (RLVR's
        idle-time, staleness and scorer-queue bookkeeping: the versions at its end and start differ only with
        in-flight updates; finished_at is wall-clock time)."""
        import time

        start, first_version = time.perf_counter(), self.engine.policy_version
        completions = self.generate(prompts, n, **sampling)
        return completions, {"seconds": time.perf_counter() - start, "policy_version": self.engine.policy_version,
                             "first_version": first_version, "finished_at": time.time()}

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]], version: int) -> float:
        seconds = self.engine.load_weights(named_tensors, version)
        self.weights_ready.set()
        return seconds

    def join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, buckets: list,
                          timeout_s: float) -> None:
        self.engine.join_weight_group(host, port, rank_offset, world_size, buckets, timeout_s)

    def receive_weights(self, version: int) -> float:
        seconds = self.engine.receive_weights(version)
        self.weights_ready.set()
        return seconds

    def leave_weight_group(self) -> None:
        self.engine.leave_weight_group()

    def weight_transfer(self, step: str, *args) -> None:
        """One step of a vLLM weight-transfer round (`WEIGHT_TRANSFER_STEPS`), run on the engine."""
        if step not in WEIGHT_TRANSFER_STEPS:
            raise ValueError(f"unknown weight-transfer step {step!r}; valid: {', '.join(sorted(WEIGHT_TRANSFER_STEPS))}")
        method = getattr(self.engine, step, None)
        if method is None:
            raise NotImplementedError(f"the {self.options.engine!r} engine has no weight-transfer API (use load_weights)")
        method(*args)

    def sleep(self, level: int) -> dict:
        """Release the engine's memory (`Engine.sleep`); {"seconds", "bytes"}."""
        return self.engine.sleep(level)

    def wake(self, tags: list[str] | None = None) -> dict:
        """Take the engine's memory back (`Engine.wake`); {"seconds", "bytes"}."""
        return self.engine.wake(tags)

    def ping(self) -> dict:
        """Liveness and state: which engine, which weights, which process, which memory is released."""
        return {"engine": self.options.engine, "policy_version": self.engine.policy_version, "pid": os.getpid(),
                "asleep": sorted(self.engine.asleep)}

    def close(self) -> None:
        self.engine.close()


class InflightEngineActor(EngineActor):
    """`EngineActor` whose weight calls run in their own thread ("weights" group), beside `generate`.

    What `rollout.inflight_updates` spawns: a round lands between two decoding steps of the
    generation under way. The weight calls keep their order among themselves (one thread).
    """

    def _weights(method):  # noqa: N805 (a decorator used in the class body)
        import ray

        return ray.method(concurrency_group="weights")(method)

    @_weights
    def join_weight_group(self, *args) -> None:
        super().join_weight_group(*args)

    @_weights
    def receive_weights(self, version: int) -> float:
        return super().receive_weights(version)

    @_weights
    def leave_weight_group(self) -> None:
        super().leave_weight_group()

    del _weights


def spawn_engine_actor(
    model_path: str,
    options: RolloutSection,
    *,
    seed: int = 0,
    await_weights: bool = False,
    num_cpus: float = 1,
    num_gpus: float = 0,
    name: str | None = None,
    max_restarts: int = 0,
    scheduling_strategy: Any = None,
):
    """Start an `EngineActor` with the environment its engine needs; returns the actor handle.

    Ray must be initialised (`posttrain.orchestration.cluster.init_ray`).
    `scheduling_strategy` places it, e.g. in a placement-group bundle.
    """
    import ray

    from posttrain.orchestration.cluster import worker_env
    from posttrain.rollout import ENGINES

    factory = ENGINES.get(options.engine)
    env = worker_env({**factory.process_env(options), "OMP_NUM_THREADS": str(max(1, int(num_cpus)))})
    actor_options: dict[str, Any] = dict(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        max_restarts=max_restarts,
        runtime_env={"env_vars": env},
    )
    if name is not None:
        actor_options["name"] = name
    if scheduling_strategy is not None:
        actor_options["scheduling_strategy"] = scheduling_strategy
    # in-flight updates: a second thread for weight rounds only; generate and the rest stay one at a time
    remote_cls = ray.remote(concurrency_groups={"weights": 1})(InflightEngineActor) if options.inflight_updates \
        else ray.remote(EngineActor)
    # (await_weights on a one-thread actor would block the very call that brings the weights: in-flight actors only)
    await_weights = await_weights and options.inflight_updates
    return remote_cls.options(**actor_options).remote(model_path, options.model_dump(), seed, await_weights)


def engine_alive(actor, timeout: float = 30.0) -> bool:
    """True when the actor answers `ping` within `timeout` seconds.

    False when it died (killed, crashed, its node lost) or is unreachable, or
    when it is still busy after `timeout` (a Ray actor runs one call at a time,
    so a ping waits behind a long `generate`: pick the timeout accordingly).
    """
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    try:
        ray.get(actor.ping.remote(), timeout=timeout)
    except (RayActorError, GetTimeoutError):
        return False
    return True


class EngineSyncClient:
    """vLLM's `VLLMWeightSyncClient` protocol over `EngineActor` handles (vLLM's weight-transfer API: ipc).

    The learner's sender rank builds vLLM's trainer engine with it, once:

        client = EngineSyncClient(actors, workers_per_engine=tensor_parallel_size)
        sender = WeightTransferTrainerFactory.trainer_init(
            NCCLTrainerInitInfo(master_address, master_port, world_size=1 + len(actors) * tp, rank=0),
            # or IPCTrainerInitInfo(rank=0) for an engine on the learner's GPU
            client=client, source=ModuleSource(model))

    and each step sets `client.version = step` and calls `sender.send_weights()`
    (start, update, finish on every engine; the engines then report that
    version). Every call fans out to all engines and waits for them. Each
    separate engine sees itself as data-parallel rank 0, so NCCL ranks are
    shifted here: engine i takes ranks rank_offset + i * workers_per_engine on.
    """

    def __init__(self, actors: list, workers_per_engine: int = 1):
        self.actors = list(actors)
        self.workers_per_engine = workers_per_engine
        self.version: int | None = None  # reported by the engines after the next finish_weight_update

    def _all(self, calls: list) -> None:
        import ray

        ray.get(calls)

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        def for_engine(i: int) -> dict[str, Any]:
            if "rank_offset" not in init_info:  # ipc: no process group
                return init_info
            return {**init_info, "rank_offset": int(init_info["rank_offset"]) + i * self.workers_per_engine}

        self._all(
            [actor.weight_transfer.remote("init_weight_transfer_engine", for_engine(i)) for i, actor in enumerate(self.actors)]
        )

    def shutdown_weight_transfer_engine(self) -> None:
        self._all([actor.weight_transfer.remote("shutdown_weight_transfer_engine") for actor in self.actors])

    def start_weight_update(self) -> None:
        self._all([actor.weight_transfer.remote("start_weight_update") for actor in self.actors])

    def update_weights(self, update_info) -> None:
        self._all([actor.weight_transfer.remote("update_weights", update_info) for actor in self.actors])

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        if weight_version is None and self.version is not None:
            weight_version = str(self.version)
        self._all([actor.weight_transfer.remote("finish_weight_update", weight_version) for actor in self.actors])


# --------------------------------------------------------------------------
# Reward workers and the reference policy (RLVR)


class RewardWorker:
    """Scores completions with `rewards.score_batch`, in its own pool of worker processes.

    One role: it never generates or trains. A verifier that crashes or runs
    past `timeout` scores 0 and is reported as unscored with its reason;
    only this actor's pool sees it, never the driver.
    """

    def __init__(self, modules: Sequence[str] = (), max_workers: int | None = None, timeout: float = 10.0,
                 options: dict | None = None):
        import rewards

        rewards.load_plugins(list(modules))
        self.max_workers, self.timeout, self.options = max_workers, timeout, options or {}
        # start the worker pool now (a fork server importing math-verify takes seconds), not on the first step
        rewards.score_batch([{"verifier": "string_match", "prediction": "a", "label": "a"}],
                            max_workers=max_workers, timeout=timeout)

    def score(self, completions: Sequence[Any], labels: Sequence[tuple[Any, Any]]) -> list[tuple[float, bool, str]]:
        """(score, scored, reason) per completion; `labels[c.prompt_index]` is its (verifier, ground_truth)."""
        import rewards

        items = [{"verifier": labels[c.prompt_index][0], "prediction": c.text, "label": labels[c.prompt_index][1]}
                 for c in completions]
        results = rewards.score_batch(items, max_workers=self.max_workers, timeout=self.timeout, options=self.options)
        return [(float(r.score), bool(r.scored), r.reason) for r in results]

    def score_timed(self, completions: Sequence[Any], labels: Sequence[tuple[Any, Any]]) -> tuple[list, dict]:
        """`score`, plus {"started_at" (wall clock), "seconds"} of the call (the scorer-queue metrics)."""
        import time

        started_at, start = time.time(), time.perf_counter()
        scores = self.score(completions, labels)
        return scores, {"started_at": started_at, "seconds": time.perf_counter() - start}

    def ping(self) -> int:
        return os.getpid()


class ReferencePolicy:
    """The frozen starting policy, for the KL term: log-probs of response tokens, nothing else."""

    def __init__(self, model_path: str, dtype: str = "float32", num_threads: int = 1):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(max(1, num_threads))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(self.device).eval()

    def logprobs(self, batches: Sequence[Any], temperature: float = 1.0, chunk: int = 4096) -> list:
        """(N, Tr) float32 response log-probs per `RolloutBatch`, as `posttrain.objectives.rlvr` computes them."""
        import torch

        from posttrain.objectives.rlvr import response_logprobs

        with torch.no_grad():
            return [response_logprobs(self.model, b.to(self.device), temperature=temperature, chunk=chunk)
                    for b in batches]
