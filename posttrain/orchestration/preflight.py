"""Before a stage starts, on every node that may host one of its actors: the same code, and the run's files.

On a cluster a stage's actors run on nodes other than the driver's, where two
things can differ from what the driver sees, and would otherwise fail an hour
in, or not at all:

- the code. With `distributed.ship_code` (default) Ray ships the driver's
  posttrain and rewards (posttrain/orchestration/cluster.py), so this catches a
  broken shipment; without it, it is the check that each node's own install is
  this code. Compared: a hash of the two packages' .py files (`code_fingerprint`).
- the files. Learners write checkpoints into the run directory (`output.dir`)
  and learners, engines and a reference policy load `model.path`. On a node
  that does not mount them where the driver does (a node-local /tmp, a missing
  NFS mount), a checkpoint would land where nobody reads it. The driver writes
  a probe file into the run directory; a task on each node reads it and writes
  one back, which the driver reads: both directions, through the real mounts.
  What each role needs to see is the table `TOUCHES`.

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

from posttrain.orchestration.cluster import actor_path, role_bundles

PROBE = ".posttrain-probe"
TIMEOUT_S = 180.0  # a node starts a worker (and unpacks shipped code) first; a busy 2-core machine is slow at that
# What each role's actors read or write on their node ("output": the run directory, "model": model.path).
TOUCHES: dict[str, tuple[str, ...]] = {
    "learner": ("output", "model"),  # loads the start checkpoint, writes resumable checkpoints and the export
    "engine": ("model",),
    "reference": ("model",),
    "reward": (),
}


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


def probe_node(run_dir: str, token: str, model_path: str | None) -> dict:
    """Run on one node: which code it imports, and whether it sees the driver's probe and the model."""
    import ray

    import posttrain

    node = ray.get_runtime_context().get_node_id()
    report = {"node": node, "ip": ray.util.get_node_ip_address(), "code": code_fingerprint(),
              "origin": str(package_root(posttrain)), "sees_model": model_path is None or Path(model_path).exists()}
    probe = Path(run_dir) / f"{PROBE}-{token}"
    try:
        report["sees_output"] = probe.read_text() == token
        if report["sees_output"]:
            (Path(run_dir) / f"{PROBE}-{token}.{node}").write_text(token)
    except OSError as err:
        report["sees_output"], report["output_error"] = False, f"{type(err).__name__}: {err}"
    return report


def role_nodes(config) -> dict[str, list[str]]:
    """{node id: the roles whose bundles fit on it} over the alive nodes (a node no bundle fits is left out)."""
    import ray

    nodes = {n["NodeID"]: n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")}
    out: dict[str, list[str]] = {}
    for role, bundles in role_bundles(config).items():
        for node, have in nodes.items():
            if any(all(have.get(k, 0.0) + 1e-9 >= v for k, v in b.items() if v) for b in bundles):
                out.setdefault(node, []).append(role)
    return out


def check_nodes(config, run_dir: Path, *, timeout_s: float = TIMEOUT_S) -> list[dict]:
    """Probe every node that may host a role (see the module docstring); raise `NodeCheckError` listing every
    problem. Returns the nodes' reports ([] on a single-node Ray)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if sum(1 for n in ray.nodes() if n.get("Alive")) < 2:
        return []
    hosts = role_nodes(config)
    run_dir = Path(run_dir).resolve()
    model = actor_path(config.model.path)
    model = model if Path(model).is_absolute() and Path(model).exists() else None  # a hub name: fetched per node
    token = uuid.uuid4().hex
    probe = ray.remote(num_cpus=0, max_retries=0)(probe_node)
    (run_dir / f"{PROBE}-{token}").write_text(token)
    try:
        pending = {node: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                   .remote(str(run_dir), token, model) for node in hosts}
        reports, problems = [], []
        for node, ref in pending.items():
            try:
                report = ray.get(ref, timeout=timeout_s)
            except Exception as err:  # the task could not run there: no code, a runtime env that failed, a timeout
                lines = str(err).strip().splitlines() or [type(err).__name__]
                problems.append(f"Ray node {node} (may host the {', '.join(hosts[node])}) could not run the "
                                f"pre-flight check: {lines[-1]}. {_CODE_HINT}")
                continue
            reports.append({**report, "roles": hosts[node]})
            problems += _problems(report, hosts[node], run_dir, config.model.path, token)
    finally:
        for path in run_dir.glob(f"{PROBE}-{token}*"):
            path.unlink(missing_ok=True)
    if problems:
        raise NodeCheckError("pre-flight check of the Ray nodes failed:\n- " + "\n- ".join(problems))
    return reports


_CODE_HINT = ("With distributed.ship_code: true (the default) Ray sends the driver's posttrain and rewards to every "
              "node; with false, every node must have this checkout installed, in the same Python environment.")
_MOUNT_HINT = ("Put it on a filesystem every node mounts at the same path (NFS, a cluster filesystem), or pin the "
               "roles to nodes that see it (distributed.resources_per_worker, rollout.resources_per_engine).")


def _problems(report: dict, roles: list[str], run_dir: Path, model_path: str, token: str) -> list[str]:
    """What is wrong on one node, from its report, as sentences naming the node, its roles and the path."""
    where = f"Ray node {report['node']} ({report['ip']}, may host the {', '.join(roles)})"
    needs = {need for role in roles for need in TOUCHES.get(role, ("output", "model"))}
    problems = []
    code, origin = _driver_code()
    if report["code"] != code:
        problems.append(f"{where} imports other posttrain code ({report['origin']}, code {report['code']}) than the "
                        f"driver ({origin}, code {code}). {_CODE_HINT}")
    if "output" in needs and not report["sees_output"]:
        detail = report.get("output_error", "a file the driver wrote there is missing on that node")
        problems.append(f"output.dir {run_dir} is not visible from {where}: {detail}. The learners write "
                        f"checkpoints there. {_MOUNT_HINT}")
    elif "output" in needs and not (run_dir / f"{PROBE}-{token}.{report['node']}").is_file():
        problems.append(f"output.dir {run_dir}: a file written there on {where} does not reach the driver (the path "
                        f"is another directory on that node). {_MOUNT_HINT}")
    if "model" in needs and not report["sees_model"]:
        problems.append(f"model.path {model_path} does not exist on {where}. {_MOUNT_HINT}")
    return problems
