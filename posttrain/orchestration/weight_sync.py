"""How the learner's weights reach the rollout engines after a step (`rollout.weight_sync`).

Three strategies behind one interface, registered by name:

- `broadcast`: learner rank 0 and every engine worker form one collective
  group (posttrain.rollout.weight_transfer: NCCL on GPUs, gloo on CPUs). A
  round is `broadcast_weights` on every learner rank (each tensor gathered
  layer by layer, packed into flat buckets, broadcast by rank 0) and
  `receive_weights` on every engine at once; nothing passes through the
  driver or Ray's object store.
- `ipc` (colocated: learner rank i and engine i share one GPU, or one
  machine on CPUs): a round is `share_weights` on every learner rank at once
  (each tensor gathered layer by layer); rank i packs the buckets into shared
  buffers (posttrain.rollout.shared_buffer: CUDA IPC, /dev/shm) and calls its
  engine itself (`begin_shared_weights`, `load_shared_bucket` per bucket,
  `end_shared_weights`), while the driver's `take_shared_weights` holds the
  engine's place among the driver's calls (`IpcEngineActor`). Only handles
  cross processes.
- `reload`: rank 0 gathers the weights into a list that Ray's object store
  carries to each engine's `load_weights` (one pickled copy per engine node).

`push(version)` queues a round and returns a `Round` at once (calls on an
actor run in the order they were sent, so an engine takes the weights after
the generation it was already given; with in-flight updates, in its own
thread beside it); `settle(round)` waits for it and returns each engine's
load seconds. A round that fails because an engine died (or the group broke)
is repaired: dead engines are restarted in their bundles, the group (if
any) is formed again, and the learner's current weights are sent again, so
the step is not lost. `restore(index)` gives a restarted engine the latest
weights before it gets prompts again (`EnginePool.restart` calls it; ipc
sends them to that engine alone); a vLLM engine whose round failed midway
ends its process (its model is half-loaded), so it is restarted the same
way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from posttrain.config import RLVRConfig
from posttrain.registry import Registry
from posttrain.rollout.base import resolve_dtype

MAX_REPAIRS = 3  # rounds sent again after a failure, before the run fails
MIB = 2**20


@dataclass
class Round:
    """One queued weight round and the refs that say it arrived."""

    version: int
    engine_refs: list  # each engine's load seconds
    learner_refs: list = field(default_factory=list)  # the learner ranks' part (bytes sent)
    actors: list = field(default_factory=list)  # the engine actors that were sent it, in pool order
    prior_refs: list = field(default_factory=list)  # what had to happen first (a re-formed group's joins)

    def refs(self) -> list:
        return self.engine_refs + self.learner_refs + self.prior_refs


WEIGHT_SYNCS: Registry = Registry("weight sync")


class _Sync:
    def __init__(self, learners, engines, config: RLVRConfig):
        self.learners, self.engines, self.config = learners, engines, config
        self.latest: int | None = None  # version of the last round pushed
        self.repairs = 0  # over the run (the manifest's weight_sync_repairs)
        self.resent: Round | None = None  # the latest weights sent again to every engine after a restart
        self.pending: list = []  # refs queued outside a round (a re-formed group), awaited with the next one
        engines.weights = self

    def connect(self) -> None:
        """Whatever must exist before the first round (the group)."""

    def close(self) -> None:
        """Release what `connect` made."""

    def shutdown(self) -> None:
        self.close()

    def push(self, version: int) -> Round:
        """Queue a round of the learner's current weights as `version` (see the module docstring)."""
        self.latest = version
        prior, self.pending = self.pending, []
        if self.resent is not None:  # its failures surface with this round's
            prior, self.resent = prior + self.resent.refs(), None
        round_ = self._send(version)
        round_.prior_refs = prior + round_.prior_refs
        return round_

    def settle(self, round_: Round, current: int | None = None) -> list[float]:
        """Wait for `round_`; each engine's load seconds.

        A round that failed is repaired and the learner's weights sent again, labelled `current` (the version
        the learner holds now; default the round's own), at most MAX_REPAIRS times for this round. A round a
        restart already superseded (`restore` sent the same or newer weights to every engine) is not repaired:
        that resend is awaited instead.
        """
        attempts = 0
        while True:
            try:
                seconds = ray.get(round_.engine_refs)
                ray.get(round_.learner_refs + round_.prior_refs)
                return seconds
            except (RayActorError, RayTaskError) as error:
                # members still waiting inside the broken round give up after the group's timeout
                _settle_all(round_.refs(), self.config.rollout.weight_sync_timeout_s + 30)
                resent = self.resent
                if resent is not None and resent is not round_ and resent.version >= round_.version:
                    self.resent, round_ = None, resent
                    continue
                attempts += 1
                if attempts > MAX_REPAIRS:
                    raise
                self.repairs += 1
                version = round_.version if current is None else current
                print(f"[rlvr] weight sync of version {round_.version} failed ({type(error).__name__}); "
                      f"repairing (attempt {attempts}) and sending version {version}")
                for index, actor in enumerate(round_.actors):
                    if self.engines.actors[index] is actor and not _alive(actor):
                        self.engines.restart(index, actor, restore=False)
                self.repair()
                round_ = self.push(version)

    def repair(self) -> None:
        """Make the next round possible after a failed one."""


@WEIGHT_SYNCS.register("reload")
class ReloadSync(_Sync):
    """Through Ray's object store into each engine's `load_weights` (see the module docstring)."""

    def __init__(self, learners, engines, config: RLVRConfig):
        super().__init__(learners, engines, config)
        self.weights_ref = None

    def _send(self, version: int) -> Round:
        refs = [worker.call.remote("weight_list") for worker in self.learners.workers]
        self.weights_ref = refs[0]
        actors = list(self.engines.actors)
        return Round(version, [actor.load_weights.remote(refs[0], version) for actor in actors], refs[1:], actors)

    def restore(self, index: int) -> None:
        if self.weights_ref is not None:
            self.engines.actors[index].load_weights.remote(self.weights_ref, self.latest)


@WEIGHT_SYNCS.register("broadcast")
class BroadcastSync(_Sync):
    """Learner rank 0 broadcasts flat buckets to every engine worker (see the module docstring)."""

    def __init__(self, learners, engines, config: RLVRConfig):
        from posttrain.rollout import ENGINES
        from posttrain.rollout.weight_transfer import plan_buckets

        super().__init__(learners, engines, config)
        rollout = config.rollout
        metadata = ray.get(learners.workers[0].call.remote("weight_metadata"))
        dtype = resolve_dtype(rollout.dtype, config.distributed.use_gpu)
        self.buckets = [b.to_wire() for b in plan_buckets(metadata, dtype, int(rollout.weight_bucket_mb * MIB))]
        self.ranks_per_engine = ENGINES.get(rollout.engine).weight_group_size(rollout)
        self.timeout_s = rollout.weight_sync_timeout_s

    def connect(self) -> None:
        ray.get(self._form_group())

    def _form_group(self) -> list:
        """Queue: rank 0 opens a new group on a fresh port, every engine joins it. Refs of the joins."""
        host, port = ray.get(self.learners.workers[0].rendezvous.remote())
        world = 1 + self.ranks_per_engine * len(self.engines)
        refs = [self.learners.workers[0].call.remote("open_weight_group", host, port, world, self.timeout_s)]
        refs += [actor.join_weight_group.remote(host, port, 1 + i * self.ranks_per_engine, world, self.buckets,
                                                self.timeout_s)
                 for i, actor in enumerate(self.engines.actors)]
        return refs

    def _send(self, version: int) -> Round:
        actors = list(self.engines.actors)
        learner_refs = [w.call.remote("broadcast_weights", self.buckets) for w in self.learners.workers]
        engine_refs = [actor.receive_weights.remote(version) for actor in actors]
        return Round(version, engine_refs, learner_refs, actors)

    def repair(self) -> None:
        # every member leaves the broken group (queued after what it is doing), then a new one forms
        _settle_all([actor.leave_weight_group.remote() for actor in self.engines.actors], self.timeout_s)
        ray.get(self._form_group())

    def restore(self, index: int) -> None:
        """A restarted engine: a new group with it (queued, not awaited), and the latest weights to every engine."""
        _settle_all([actor.leave_weight_group.remote() for i, actor in enumerate(self.engines.actors) if i != index],
                    self.timeout_s)
        joins = self._form_group()
        if self.latest is None:  # every engine still holds the checkpoint it was built from
            self.pending += joins
            return
        resend = self._send(self.latest)
        resend.prior_refs = self.pending + joins
        self.pending, self.resent = [], resend

    def close(self) -> None:
        _settle_all([w.call.remote("close_weight_group") for w in self.learners.workers[:1]], self.timeout_s)


@WEIGHT_SYNCS.register("ipc")
class IpcSync(_Sync):
    """Learner rank i hands engine i the weights through shared memory (see the module docstring)."""

    def __init__(self, learners, engines, config: RLVRConfig):
        import itertools

        from posttrain.rollout.weight_transfer import plan_buckets

        super().__init__(learners, engines, config)
        if len(engines) != len(learners.workers):
            raise ValueError(f"rollout.weight_sync=ipc pairs learner rank i with engine i: {len(learners.workers)} "
                             f"learner ranks, {len(engines)} engines (distributed.colocate makes one per rank)")
        rollout = config.rollout
        metadata = ray.get(learners.workers[0].call.remote("weight_metadata"))
        dtype = resolve_dtype(rollout.dtype, config.distributed.use_gpu)
        self.buckets = [b.to_wire() for b in plan_buckets(metadata, dtype, int(rollout.weight_bucket_mb * MIB))]
        self.timeout_s = rollout.weight_sync_timeout_s
        self.round_ids = itertools.count()

    def connect(self) -> None:
        """Refuse a pairing across nodes: shared memory does not leave one."""
        from posttrain.orchestration.cluster import placement

        nodes = placement(learner=self.learners.placement_group, engine=self.engines.group)
        apart = [i for i, (a, b) in enumerate(zip(nodes["learner"], nodes["engine"])) if a != b]
        if apart:
            raise RuntimeError(f"rollout.weight_sync=ipc: learner rank {apart[0]} and engine {apart[0]} were placed on "
                               f"different nodes ({nodes['learner'][apart[0]]} and {nodes['engine'][apart[0]]}); "
                               "set distributed.colocate: true (one bundle for both), or use broadcast")

    def _send(self, version: int, only: int | None = None) -> Round:
        """Rank i sends to engine i, for every i or only `only`; every rank joins the gathers. Each engine first
        gets the driver's `take_shared_weights`, which holds its place among the driver's calls (IpcEngineActor)."""
        actors, round_id = list(self.engines.actors), next(self.round_ids)
        to = [i for i in range(len(actors)) if only in (None, i)]
        engine_refs = [actors[i].take_shared_weights.remote(round_id, self.timeout_s) for i in to]
        learner_refs = [w.call.remote("share_weights", self.buckets, actors[i] if i in to else None, version, round_id)
                        for i, w in enumerate(self.learners.workers)]
        return Round(version, engine_refs, learner_refs, actors)

    def restore(self, index: int) -> None:
        """A restarted engine gets the latest weights from its learner rank (queued, not awaited)."""
        if self.latest is None:  # it holds the checkpoint it was built from, as every engine does
            return
        resend = self._send(self.latest, only=index)
        if self.resent is not None:  # an earlier restart's resend, not yet awaited
            resend.prior_refs += self.resent.refs()
        self.resent = resend

    def close(self) -> None:
        _settle_all([w.call.remote("close_shared_weights") for w in self.learners.workers], self.timeout_s)


def _alive(actor, timeout: float = 5.0) -> bool:
    """Whether the actor still runs (a busy one counts as alive: its ping waits in line, it does not fail)."""
    try:
        ray.get(actor.ping.remote(), timeout=timeout)
    except GetTimeoutError:
        return True
    except RayActorError:
        return False
    return True


def _settle_all(refs: list, timeout: float) -> None:
    """Wait (bounded) for refs whose results do not matter; their errors are the caller's known failure."""
    if not refs:
        return
    ray.wait(refs, num_returns=len(refs), timeout=timeout)
    for ref in refs:
        try:
            ray.get(ref, timeout=0)
        except Exception:  # the failure being repaired, seen again from another member
            pass
