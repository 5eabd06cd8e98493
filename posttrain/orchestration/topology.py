"""The RLVR actors on Ray: learner ranks, rollout engines, reward workers, and a reference policy.

Placement, from the recipe (one bundle per actor):

| role | actors | bundle |
| --- | --- | --- |
| learner | `distributed.num_workers` | `distributed.cpus_per_worker` CPUs (+1 GPU with `use_gpu`) |
| engine | `rollout.num_engines` | `rollout.cpus_per_engine` CPUs (+`tensor_parallel_size` GPUs with `use_gpu`); colocated: in learner rank i's bundle, half its GPU |
| reward | `verifiers.num_workers` (auto: one per `verifiers.engines_per_worker` engines) | `verifiers.cpus_per_worker` CPUs (0 and no custom resources: unreserved) |
| judge | 1 with a `judge` section (posttrain/orchestration/judge_server.py) | `judge.cpus` CPUs + `judge.num_gpus` GPUs |
| reference | 1 if `grpo.kl_coef` > 0 | as a learner rank |

Each bundle also holds its role's custom resources (`distributed.resources_per_worker`,
`rollout.resources_per_engine`, `verifiers.resources_per_worker`): that is how a recipe
pins learners to some nodes and engines to others.

`check_resources` (posttrain/orchestration/cluster.py; every stage runs it on
entry, before it reads data) compares the sum with the cluster and raises
`ClusterResourceError` naming every role's need and the missing resource.
Each role then gets its own placement group (PACK: a role's actors share
nodes when they can, and spill over to others when not), so on a cluster
the roles may sit on different nodes.

`EnginePool` and `RewardPool` own their actors: they restart a dead one in
its bundle (`restart`), and an engine restarted mid-run is sent the latest
learner weights before it gets prompts again (by the pool's weight sync,
posttrain/orchestration/weight_sync.py). `RewardPool.submit` sends a
request to the least-loaded reward worker (posttrain/orchestration/scoring.py).
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from posttrain.config import RLVRConfig
from posttrain.orchestration.actors import ReferencePolicy, RewardWorker, spawn_engine_actor
from posttrain.orchestration.cluster import (  # noqa: F401 (bundle, check_resources, placement re-exported)
    COLOCATED_GPU_SHARE, bundle, check_resources, placement, reserve, role_bundles, worker_env,
)
from posttrain.orchestration.scoring import ScorerLoad, reward_worker_count


def _in_bundle(group, index: int) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)


class EnginePool:
    """`rollout.num_engines` engine actors, the weights version each holds, and restarts."""

    def __init__(self, config: RLVRConfig, model_path: str, colocate_with=None):
        """`colocate_with`: the learners' placement group (`distributed.colocate`): engine i goes in bundle i, beside
        learner rank i, and shares its GPU; otherwise the engines get a placement group of their own."""
        self.config, self.model_path = config, model_path
        self.colocated = colocate_with is not None
        if self.colocated:
            gpus = COLOCATED_GPU_SHARE if config.distributed.use_gpu else 0.0
            self.bundles = [{"CPU": config.rollout.cpus_per_engine, "GPU": gpus}] * config.rollout.num_engines
            self.group = colocate_with
        else:
            self.bundles = role_bundles(config)["engine"]
            self.group = reserve(self.bundles, f"rollout engines ({len(self.bundles)} x {self.bundles[0]})")
        self.actors = [self._spawn(i) for i in range(len(self.bundles))]
        self.weights = None  # the weight sync (weight_sync.py) that restores a restarted engine; it sets itself
        self.restarts = 0

    def _spawn(self, index: int, await_weights: bool = False):
        b = self.bundles[index]
        return spawn_engine_actor(self.model_path, self.config.rollout, seed=self.config.seed * 1009 + index,
                                  await_weights=await_weights,
                                  num_cpus=b["CPU"], num_gpus=b.get("GPU", 0.0),
                                  scheduling_strategy=_in_bundle(self.group, index))

    def __len__(self) -> int:
        return len(self.actors)

    def wait_ready(self) -> None:
        ray.get([actor.ping.remote() for actor in self.actors])

    def restart(self, index: int, dead, restore: bool = True) -> None:
        """Replace engine `index` if `dead` is still the actor there; with `restore`, the weight sync sends the new
        one the latest weights before anything else."""
        if self.actors[index] is not dead:
            return  # already replaced for an earlier failed request
        if self.restarts >= self.config.rollout.max_restarts:
            raise RuntimeError(f"rollout engine {index} died and rollout.max_restarts "
                               f"({self.config.rollout.max_restarts}) engine restarts are used up")
        ray.kill(dead, no_restart=True)
        latest = getattr(self.weights, "latest", None)
        self.actors[index] = self._spawn(index, await_weights=latest is not None)  # mid-run: weights before prompts
        self.restarts += 1
        if restore and self.weights is not None:
            self.weights.restore(index)
        print(f"[rlvr] rollout engine {index} died; restarted ({self.restarts} so far)")

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if not self.colocated:  # a colocated pool sits in the learners' group, which they remove
            remove_placement_group(self.group)


class RewardPool:
    """Reward-worker actors (rewards.score_batch), least-loaded routing and restarts.

    `options`: the verifiers' context (default `verifiers.options`; with a
    judge server, those options with its endpoint handed to llm_judge).
    """

    def __init__(self, config: RLVRConfig, options: dict | None = None):
        self.config = config
        self.options = config.verifiers.options if options is None else options
        self.bundles = role_bundles(config).get("reward")
        self.group = reserve(self.bundles, f"reward workers ({len(self.bundles)} x {self.bundles[0]})") \
            if self.bundles else None
        v = config.verifiers
        self.actors = [self._spawn(i) for i in range(reward_worker_count(v.num_workers, config.rollout.num_engines,
                                                                          v.engines_per_worker))]
        self.load = ScorerLoad(len(self.actors))
        self.restarts = 0

    def _spawn(self, index: int):
        v = self.config.verifiers
        # out of order: a call runs as soon as its completions exist, not behind earlier calls still waiting for theirs
        options: dict[str, Any] = {"num_cpus": v.cpus_per_worker, "runtime_env": {"env_vars": worker_env()},
                                   "allow_out_of_order_execution": True}
        if self.group is not None:
            options["scheduling_strategy"] = _in_bundle(self.group, index)
        return ray.remote(RewardWorker).options(**options).remote(v.modules, v.max_workers, v.timeout, self.options)

    def submit(self, completions, labels: list, items: int) -> tuple[int, Any, Any]:
        """Score `completions` (a ref) on the least-loaded worker: (worker index, scores ref, info ref)."""
        index = self.load.pick()
        scores, info = self.actors[index].score_timed.options(num_returns=2).remote(completions, labels)
        self.load.add(index, scores, items)
        return index, scores, info

    def __len__(self) -> int:
        return len(self.actors)

    def wait_ready(self) -> None:
        ray.get([actor.ping.remote() for actor in self.actors])

    def restart(self, index: int, dead) -> None:
        if self.actors[index] is not dead:
            return
        ray.kill(dead, no_restart=True)
        self.actors[index] = self._spawn(index)
        self.restarts += 1
        print(f"[rlvr] reward worker {index} died; restarted ({self.restarts} so far)")

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self.group is not None:
            remove_placement_group(self.group)


class Reference:
    """The frozen reference policy actor (KL term) and its placement group."""

    def __init__(self, actor, group):
        self.actor, self.group = actor, group

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        ray.kill(self.actor)
        remove_placement_group(self.group)


def spawn_reference(config: RLVRConfig, model_path: str) -> Reference | None:
    """The frozen reference policy (KL term), in its own bundle; None when `grpo.kl_coef` is 0."""
    bundles = role_bundles(config).get("reference")
    if not bundles:
        return None
    group = reserve(bundles, "reference policy")
    actor = ray.remote(ReferencePolicy).options(
        num_cpus=bundles[0]["CPU"], num_gpus=bundles[0].get("GPU", 0.0), scheduling_strategy=_in_bundle(group, 0),
        runtime_env={"env_vars": worker_env()},
    ).remote(model_path, config.model.dtype, int(bundles[0]["CPU"]))
    return Reference(actor, group)
