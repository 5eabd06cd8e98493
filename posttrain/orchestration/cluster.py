"""Ray: start or join a cluster, check resources up front, reserve them in placement groups.

- `init_ray(address)`: joins the cluster at `address` (a recipe's
  `distributed.ray_address`), else at `$RAY_ADDRESS`, else starts a local Ray
  sized to this machine. Workers get a `runtime_env` carrying the environment
  variables they need (`WORKER_ENV_VARS` and `WORKER_ENV_PREFIXES`, copied
  from the driver when set), so a Hugging Face offline flag or a vLLM setting
  reaches every actor on every node. Workers are not forced offline: the
  user's environment decides, as it does for the driver.
- Code: with `ship_code` (`distributed.ship_code`, default on) the job's
  runtime env also carries this checkout's `posttrain` and `rewards`, and
  local verifier plugins, as `py_modules` (posttrain/orchestration/shipping.py).
- `require_resources(bundles, what)`: compares what a role needs (one bundle
  per actor, e.g. `{"CPU": 1, "GPU": 1}`) with `ray.cluster_resources()` and,
  when it cannot fit, raises `ClusterResourceError` naming the resource, how
  much is needed and how much the cluster has, instead of letting a placement
  group wait forever.
- `role_bundles(config)` / `check_resources(config)`: what a stage's recipe
  places (learner ranks; for RLVR also engines, reward workers and a
  reference policy) against the running cluster. Every stage checks this on
  entry, before it loads or tokenises any data, so a recipe that cannot be
  placed fails in seconds, not after an hour of tokenising.
- `actor_path(path)`: local paths handed to actors are made absolute.
- Pinning roles to nodes: a role's bundles also carry the recipe's custom
  resources (`distributed.resources_per_worker`, `rollout.resources_per_engine`,
  `verifiers.resources_per_worker`), so its actors go only to nodes started
  with those resources (`ray start --resources '{"trainer": 8}'`).
- `reserve(bundles, what)`: the check above, then a placement group, waited on
  with a timeout (the error names the bundles that could not be placed).

Resources are logical in Ray: a local Ray on a 2-core machine offers 2 CPUs;
`init_ray(num_cpus=...)` may declare more for a local run (oversubscription
is then the caller's choice, not an accident).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable

from posttrain.config import BUILTIN_RESOURCES
from posttrain.orchestration.scoring import reward_worker_count
from posttrain.orchestration.shipping import code_env

# Copied from the driver's environment into every worker when set.
WORKER_ENV_VARS = (
    "HF_HUB_OFFLINE", "HF_HOME", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONPATH", "TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR",
    "NCCL_DEBUG", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "WANDB_API_KEY", "WANDB_MODE",
)
WORKER_ENV_PREFIXES = ("VLLM_", "POSTTRAIN_")


# A colocated learner rank and its engine each ask Ray for this much of the bundle's one GPU, so both see that GPU.
COLOCATED_GPU_SHARE = 0.5


class ClusterResourceError(RuntimeError):
    """The cluster cannot host what a recipe asks for; the message names what is missing."""


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables for Ray workers: the driver's values of the listed names and prefixes, plus `extra`."""
    env = {name: os.environ[name] for name in WORKER_ENV_VARS if name in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith(WORKER_ENV_PREFIXES)})
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    env: dict[str, str] | None = None,
    ship_code: bool = True,
    modules: Iterable[str] = (),
) -> str:
    """Start or join Ray (idempotent); returns "local" or the address joined.

    address: a recipe's `distributed.ray_address`; None falls back to
    `$RAY_ADDRESS`, then to a new local Ray (num_cpus/num_gpus default to
    this machine's). ship_code: the job's workers import the driver's
    posttrain and rewards, and `modules` (verifier plugins) when they are
    local (see the module docstring).
    """
    import ray

    if ray.is_initialized():
        return os.environ.get("RAY_ADDRESS") or "local"
    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = {"env_vars": worker_env(env), **(code_env(modules) if ship_code else {})}
    common = dict(runtime_env=runtime_env, log_to_driver=True, logging_level="WARNING")
    if address:
        ray.init(address=address, **common)
        return address
    # "local": a new Ray of this process's own; without it ray.init joins whatever cluster `ray start` last
    # started on this machine (/tmp/ray/ray_current_cluster), someone else's job included
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus, include_dashboard=False,
             **common)
    return "local"


def actor_path(path: str) -> str:
    """A local path as an absolute one, a hub name unchanged: what an actor is handed.

    An actor's working directory need not be the driver's, and on another node
    only an absolute path on a shared filesystem names the same file.
    """
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else path


def _total(bundles: Iterable[dict[str, float]]) -> Counter:
    total: Counter = Counter()
    for bundle in bundles:
        total.update({k: float(v) for k, v in bundle.items() if v})
    return total


def fits(bundle: dict[str, float], node: dict[str, float]) -> bool:
    """Whether one node's resources can hold `bundle` (custom resources included)."""
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items() if v)


def missing_resources(bundles: list[dict[str, float]], available: dict[str, float],
                      nodes: list[dict[str, float]] | None = None) -> list[str]:
    """Why `bundles` cannot fit: totals beyond `available`, or a bundle larger than every node. Empty when they fit."""
    problems = []
    for resource, needed in sorted(_total(bundles).items()):
        have = float(available.get(resource, 0.0))
        if needed > have + 1e-9:
            custom = "" if resource in BUILTIN_RESOURCES else \
                f" (a custom resource: nodes offer it when started with ray start --resources '{{\"{resource}\": N}}')"
            problems.append(f"{resource}: needs {needed:g}, the cluster has {have:g}{custom}")
    if nodes is not None and not problems:
        for bundle in bundles:
            if not any(fits(bundle, node) for node in nodes):
                problems.append(f"no single node can hold the bundle {bundle}")
                break
    return problems


def require_resources(bundles: list[dict[str, float]], what: str) -> None:
    """Raise `ClusterResourceError` when the running cluster cannot hold `bundles` (one dict per actor)."""
    import ray

    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    problems = missing_resources(bundles, ray.cluster_resources(), nodes)
    if problems:
        raise ClusterResourceError(
            f"{what} needs {len(bundles)} x {bundles[0] if bundles else {}} but does not fit: "
            + "; ".join(problems)
            + ". Lower the recipe's worker counts or per-worker resources, or join a bigger cluster "
            "(distributed.ray_address or RAY_ADDRESS)."
        )


def reserve(bundles: list[dict[str, float]], what: str, *, strategy: str = "PACK", timeout_s: float = 120.0):
    """A ready placement group for `bundles`, after checking that the cluster can hold them."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    require_resources(bundles, what)
    group = placement_group(bundles, strategy=strategy)
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        raise ClusterResourceError(
            f"{what}: could not place {bundles} within {timeout_s:.0f}s (resources held by other jobs? "
            f"available now: {ray.available_resources()})"
        )
    return group


def bundle(cpus: float, gpus: float = 0.0, resources: dict[str, float] | None = None) -> dict[str, float]:
    """One actor's resources: CPUs, GPUs and the custom resources that pin it to nodes."""
    out = {"CPU": float(cpus)} if cpus else {}  # a reward worker may reserve no CPU, only a custom resource
    if gpus:
        out["GPU"] = float(gpus)
    out.update({name: float(amount) for name, amount in (resources or {}).items()})
    return out


def role_bundles(config) -> dict[str, list[dict[str, float]]]:
    """{role: one resource bundle per actor} of a stage's recipe (roles without a reservation are left out).

    Learner ranks for every stage; RLVR recipes (those with `rollout`) add the
    engines, the reward workers, with a KL term the reference policy, and with
    a `judge` section the judge server. Colocated engines (`distributed.colocate`)
    have no bundles of their own: each sits in its learner rank's, which holds
    both actors' CPUs and custom resources and the one GPU they share.
    """
    dist = config.distributed
    gpu = 1.0 if dist.use_gpu else 0.0
    rank = bundle(dist.cpus_per_worker, gpu, dist.resources_per_worker)
    rollout = getattr(config, "rollout", None)
    colocated = colocated_share(config)
    shared = _total([rank, colocated]) if colocated else rank
    roles = {"learner": [dict(shared) for _ in range(dist.num_workers)]}
    if rollout is not None:
        if not colocated:
            roles["engine"] = [bundle(rollout.cpus_per_engine, gpu * rollout.tensor_parallel_size,
                                      rollout.resources_per_engine) for _ in range(rollout.num_engines)]
        v = config.verifiers
        if v.cpus_per_worker > 0 or v.resources_per_worker:
            count = reward_worker_count(v.num_workers, rollout.num_engines, v.engines_per_worker)
            roles["reward"] = [bundle(v.cpus_per_worker, 0.0, v.resources_per_worker) for _ in range(count)]
        if config.grpo.kl_coef > 0:
            roles["reference"] = [dict(rank)]
        if getattr(config, "judge", None) is not None:
            roles["judge"] = [bundle(config.judge.cpus, config.judge.num_gpus)]
    return roles


def colocated_share(config) -> dict[str, float] | None:
    """What each learner bundle also holds for the engine beside it (`distributed.colocate`): the engine's CPUs and
    custom resources (the GPU is the rank's own, shared); None when the recipe does not colocate."""
    if not getattr(config.distributed, "colocate", False):
        return None
    return bundle(config.rollout.cpus_per_engine, 0.0, config.rollout.resources_per_engine)


def check_resources(config) -> None:
    """Raise `ClusterResourceError` when the running cluster cannot hold every role of the recipe at once."""
    import ray

    roles = role_bundles(config)
    every = [b for bundles in roles.values() for b in bundles]
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    problems = missing_resources(every, ray.cluster_resources(), nodes)
    if problems:
        needs = ", ".join(f"{role} {len(b)} x {b[0]}" for role, b in roles.items())
        knobs = ("distributed.num_workers, rollout.num_engines, verifiers.num_workers, judge.cpus / num_gpus or "
                 "their cpus_per_* / resources_per_* / GPUs") if "engine" in roles else \
            "distributed.num_workers, distributed.cpus_per_worker, distributed.resources_per_worker or distributed.use_gpu"
        raise ClusterResourceError(
            f"{config.stage.upper()} needs {needs}; it does not fit: {'; '.join(problems)}. Lower {knobs}, "
            "or join a bigger cluster (distributed.ray_address or RAY_ADDRESS)."
        )


def placement(**groups) -> dict[str, list[str]]:
    """{role: the node id of each of its bundles}, from placement groups (role=group; None is skipped)."""
    from ray.util.placement_group import placement_group_table

    out = {}
    for role, group in groups.items():
        if group is not None:
            table = placement_group_table(group)["bundles_to_node_id"]
            out[role] = [table[i] for i in sorted(table)]
    return out
