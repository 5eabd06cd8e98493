"""Before a stage starts, on every node that may host one of its actors: the same code, and the run's files.

On a cluster a stage's actors run on nodes other than the driver's, where two
things can differ from what the driver sees, and would otherwise fail an hour
in, or not at all:

- the code. With `distributed.ship_code` (default) Ray ships the driver's
  posttrain and rewards (posttrain/orchestration/cluster.py), so this catches a
  broken shipment; without it, it is the check that each node's own install is
  this code. Compared: a hash of the two packages' .py files (`code_fingerprint`).
- the files. Learners write checkpoints into the run directory (`output.dir`),
  SFT learners read their micro-batches from the token cache the driver
  filled (`data.cache_dir`), and learners, engines and a reference policy load
  `model.path`. On a node that does not mount them where the driver does (a
  node-local /tmp, a missing NFS mount), a checkpoint would land where nobody
  reads it. The driver writes a probe file into each shared directory
  (`shared_dirs`); a task on each node reads it and writes one back, which
  the driver reads: both directions, through the real mounts. What each role
  needs to see is the table `TOUCHES`.

Which nodes: those on which at least one bundle of a role fits (custom
resources included: `cluster.role_bundles`), i.e. every node the placement
may use for it. A single-node Ray (a local run) has nothing to check. Errors
name the node (id and IP), the roles it may host, the path, and what to do.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from pathlib import Path

from posttrain.orchestration.cluster import actor_path, fits, role_bundles

PROBE = ".posttrain-probe"
TIMEOUT_S = 180.0  # a node starts a worker (and unpacks shipped code) first; a busy 2-core machine is slow at that
# What each role's actors read or write on their node ("dirs": the shared directories, "model": model.path).
TOUCHES: dict[str, tuple[str, ...]] = {
    "learner": ("dirs", "model"),  # loads the start checkpoint, reads SFT's token cache, writes the checkpoints
    "engine": ("model",),
    "reference": ("model",),
    "reward": (),
}
# Why the learners need each shared directory (the recipe key names it), for the error message.
PURPOSE = {"output.dir": "write their checkpoints there", "data.cache_dir": "read the tokenised training data there"}
# Directories beyond output.dir that a stage's learners read, by stage: SFT's token cache (posttrain/data/sft.py).
STAGE_DIRS = {"sft": lambda config: {"data.cache_dir": _token_cache(config)}}


class NodeCheckError(RuntimeError):
    """A node that may host a role runs other code or does not see the run's files; the message says which."""


def package_root(module) -> Path:
    return Path(module.__file__).resolve().parent


def code_fingerprint() -> str:
    """sha256 (16 hex digits) of posttrain's and rewards' .py files, paths included, as this process imports them."""
    import posttrain
    import rewards

    digest = hashlib.sha256()
    for package in (posttrain, rewards):
        root = package_root(package)
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" not in path.parts:
                digest.update(f"{package.__name__}/{path.relative_to(root).as_posix()}\0".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _driver_code() -> tuple[str, str]:
    import posttrain

    return code_fingerprint(), str(package_root(posttrain))


def _token_cache(config) -> Path:
    from posttrain.data.token_cache import cache_root

    return cache_root(config.data)


def shared_dirs(config, run_dir: Path) -> dict[str, Path]:
    """{recipe key: absolute directory} that the driver writes and the learner nodes must see the same."""
    extra = STAGE_DIRS.get(config.stage, lambda config: {})(config)
    return {"output.dir": Path(run_dir).resolve(), **{k: Path(v).resolve() for k, v in extra.items()}}


def probe_node(dirs: dict[str, str], token: str, model_path: str | None) -> dict:
    """Run on one node: which code it imports, whether it sees the model and the driver's probe in each
    directory of `dirs` (then writes one back); `unseen` maps each directory it does not see to why."""
    import ray

    import posttrain

    node = ray.get_runtime_context().get_node_id()
    report = {"node": node, "ip": ray.util.get_node_ip_address(), "code": code_fingerprint(),
              "origin": str(package_root(posttrain)), "sees_model": model_path is None or Path(model_path).exists(),
              "unseen": {}}
    for key, directory in dirs.items():
        try:
            if (Path(directory) / f"{PROBE}-{token}").read_text() != token:
                raise OSError("the probe file there holds something else")
            (Path(directory) / f"{PROBE}-{token}.{node}").write_text(token)
        except FileNotFoundError:
            report["unseen"][key] = "a file the driver wrote there is missing on that node"
        except OSError as err:
            report["unseen"][key] = f"{type(err).__name__}: {err}"
    return report


def role_hosts(roles: dict[str, list[dict]], nodes: dict[str, dict[str, float]]) -> dict[str, list[str]]:
    """{node id: the roles with a bundle that fits on it}, from {role: bundles} and {node id: its resources};
    a node that no bundle fits is left out."""
    out: dict[str, list[str]] = {}
    for role, bundles in roles.items():
        for node, have in nodes.items():
            if any(fits(b, have) for b in bundles):
                out.setdefault(node, []).append(role)
    return out


def check_nodes(config, run_dir: Path, *, timeout_s: float = TIMEOUT_S) -> list[dict]:
    """Probe every node that may host a role (see the module docstring); raise `NodeCheckError` listing every
    problem. Returns the nodes' reports ([] on a single-node Ray)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = {n["NodeID"]: n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")}
    if len(nodes) < 2:
        return []
    hosts = role_hosts(role_bundles(config), nodes)
    dirs = shared_dirs(config, run_dir)
    model = actor_path(config.model.path)
    model = model if Path(model).is_absolute() and Path(model).exists() else None  # a hub name: fetched per node
    token = uuid.uuid4().hex
    probe = ray.remote(num_cpus=0, max_retries=0)(probe_node)
    try:
        for directory in dirs.values():
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"{PROBE}-{token}").write_text(token)
        pending = {node: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                   .remote({k: str(v) for k, v in dirs.items()}, token, model) for node in hosts}
        reports, problems = [], []
        for node, ref in pending.items():
            try:
                report = ray.get(ref, timeout=timeout_s)
            except Exception as err:  # the task could not run there: no code, a runtime env that failed, a timeout
                ray.cancel(ref, force=True)  # a task still waiting for a worker there must not linger
                lines = str(err).strip().splitlines() or [type(err).__name__]
                problems.append(f"Ray node {node} (may host the {', '.join(hosts[node])}) could not run the "
                                f"pre-flight check: {lines[-1]}. {_CODE_HINT}")
                continue
            reports.append({**report, "roles": hosts[node]})
            problems += _problems(report, hosts[node], dirs, config.model.path, token)
    finally:
        for directory in dirs.values():
            for path in directory.glob(f"{PROBE}-{token}*"):
                path.unlink(missing_ok=True)
    if problems:
        raise NodeCheckError("pre-flight check of the Ray nodes failed:\n- " + "\n- ".join(problems))
    return reports


_CODE_HINT = ("With distributed.ship_code: true (the default) Ray sends the driver's posttrain and rewards to every "
              "node; with false, every node must have this checkout installed, in the same Python environment.")
_MOUNT_HINT = ("Put it on a filesystem every node mounts at the same path (NFS, a cluster filesystem), or pin the "
               "roles to nodes that see it (distributed.resources_per_worker, rollout.resources_per_engine).")


def _problems(report: dict, roles: list[str], dirs: dict[str, Path], model_path: str, token: str) -> list[str]:
    """What is wrong on one node, from its report, as sentences naming the node, its roles and the path."""
    where = f"Ray node {report['node']} ({report['ip']}, may host the {', '.join(roles)})"
    needs = {need for role in roles for need in TOUCHES.get(role, ("dirs", "model"))}
    problems = []
    code, origin = _driver_code()
    if report["code"] != code:
        problems.append(f"{where} imports other posttrain code ({report['origin']}, code {report['code']}) than the "
                        f"driver ({origin}, code {code}). {_CODE_HINT}")
    for key, directory in dirs.items() if "dirs" in needs else ():
        why = f"The learners {PURPOSE.get(key, 'use it')}. {_MOUNT_HINT}"
        if key in report["unseen"]:
            problems.append(f"{key} {directory} is not visible from {where}: {report['unseen'][key]}. {why}")
        elif not (directory / f"{PROBE}-{token}.{report['node']}").is_file():
            problems.append(f"{key} {directory}: a file written there on {where} does not reach the driver (the "
                            f"path is another directory on that node). {why}")
    if "model" in needs and not report["sees_model"]:
        problems.append(f"model.path {model_path} does not exist on {where}. {_MOUNT_HINT}")
    return problems
