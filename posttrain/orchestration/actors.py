"""Thin single-role Ray actors around the RLVR components.

Rollout engines
---------------
`EngineActor` holds one registered rollout engine (`posttrain.rollout`) in
its own worker process and does only what an engine does: `generate`,
`load_weights`, the receiving half of a broadcast weight sync
(`join_weight_group`, `receive_weights`, `leave_weight_group`), `sleep` and `wake`
(learners sharing the engine's devices, `rollout.sleep_mode`), and `ping`, a
cheap call that answers while the engine is idle, so the driver can tell a
dead engine from a busy one (`engine_alive`) and start a replacement with
`spawn_engine_actor`. Two variants take weight rounds in a second thread:
`InflightEngineActor` (in-flight updates) and `IpcEngineActor`
(`rollout.weight_sync: ipc`, where the colocated learner rank calls the engine
itself while the driver holds the engine's place in its order of calls).

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


class IpcEngineActor(EngineActor):
    """`EngineActor` for `rollout.weight_sync: ipc`: the colocated learner rank runs the round itself.

    The learner rank's calls (`begin_shared_weights`, `load_shared_bucket`, `end_shared_weights`,
    `abort_shared_weights`) run in their own thread ("weights"), one at a time. The driver, which sends
    `generate`, sends `take_shared_weights` when it pushes the round: calls on an actor run in the order one
    caller sent them, so that call holds this actor's main thread at the round's place among the driver's
    calls (after the generations sent before it, before those sent after) until the round lands, and the
    learner's `begin_shared_weights` waits for it. No generation runs on a half-loaded model, and a request
    sent after the push generates with the new weights, as with the other weight syncs. Rounds are matched
    by an id the weight sync gives both sides. A round that began and did not end (the learner failed or the
    driver gave up waiting) leaves the model half-loaded: the process ends (exit code 70), so that the pool
    restarts it.
    """

    def __init__(self, *args):
        import threading

        super().__init__(*args)
        self._rounds = threading.Condition()
        self._admitted: int | None = None  # the round the driver's call holds the main thread for
        self._begun: int | None = None  # the round under way in the engine
        self._landed: dict[int, Any] = {}  # round id -> the engine's seconds, or the error that ended it
        self._dropped: set[int] = set()  # rounds the driver stopped waiting for

    def take_shared_weights(self, round_id: int, timeout_s: float) -> float:
        """The driver's part of round `round_id`: hold until it lands; the engine's seconds.

        Gives up after `timeout_s` (the round then fails; the process ends if the round had begun).
        """
        with self._rounds:
            self._admitted = round_id
            self._rounds.notify_all()
            landed = self._rounds.wait_for(lambda: round_id in self._landed, timeout_s)
            self._admitted = None
            if not landed:
                self._dropped.add(round_id)
            result = self._landed.pop(round_id, TimeoutError(f"ipc round {round_id}: no end after {timeout_s} s"))
            half_loaded = self._begun == round_id
        if isinstance(result, BaseException):
            if half_loaded:
                print(f"[engine] ipc round {round_id} stopped midway ({result!r}); ending this engine", flush=True)
                os._exit(70)
            raise result
        self.weights_ready.set()
        return result

    def _weights(method):  # noqa: N805 (a decorator used in the class body)
        import ray

        return ray.method(concurrency_group="weights")(method)

    @_weights
    def begin_shared_weights(self, round_id: int) -> None:
        """Wait until the driver's call for `round_id` holds the main thread, then start the engine's round."""
        with self._rounds:
            self._rounds.wait_for(lambda: self._admitted == round_id or round_id in self._dropped)
            if round_id in self._dropped:
                raise TimeoutError(f"ipc round {round_id}: the driver stopped waiting for it")
            self._begun = round_id
        self.engine.begin_shared_weights()

    @_weights
    def load_shared_bucket(self, bucket: list, handle: dict) -> int:
        if self._begun is None:  # its round was refused: loading would write into the weights generate uses
            raise RuntimeError("load_shared_bucket outside a round")
        return self.engine.load_shared_bucket(bucket, handle)

    @_weights
    def end_shared_weights(self, round_id: int, version: int) -> float:
        try:
            seconds = self.engine.end_shared_weights(version)
        except Exception as error:
            self._land(round_id, error)
            raise
        with self._rounds:
            self._begun = None
        self._land(round_id, seconds)
        return seconds

    @_weights
    def abort_shared_weights(self, round_id: int, reason: str) -> None:
        """The learner rank failed during round `round_id`."""
        self._land(round_id, RuntimeError(f"ipc round {round_id} failed on the learner's side: {reason}"))

    del _weights

    def _land(self, round_id: int, result) -> None:
        with self._rounds:
            if round_id not in self._dropped:
                self._landed[round_id] = result
            self._rounds.notify_all()


# the weight syncs whose engine actor takes rounds in a thread of their own
THREADED_ENGINE_ACTORS = {"ipc": IpcEngineActor}


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
    # in-flight updates and ipc: a second thread for weight rounds only; generate and the rest stay one at a time
    cls = InflightEngineActor if options.inflight_updates else THREADED_ENGINE_ACTORS.get(options.weight_sync)
    remote_cls = ray.remote(EngineActor) if cls is None else ray.remote(concurrency_groups={"weights": 1})(cls)
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
