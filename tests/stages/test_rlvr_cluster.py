"""RLVR on a two-node Ray cluster simulated on this machine (`ray.cluster_utils.Cluster`).

Two nodes of one CPU each: the learner rank and the rollout engine cannot
share a node, so a run that finishes proves the roles talk across nodes
(weights to the engine, completions to the reward worker, batches to the
learner). A bundle bigger than any node is refused up front.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

import rlvr_toy  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.solo]  # Ray clusters of their own: see the marker


def test_rlvr_runs_across_two_nodes_and_refuses_what_no_node_can_hold(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from posttrain.orchestration.cluster import ClusterResourceError, init_ray
    from posttrain.stages import rlvr
    from posttrain.orchestration.topology import check_resources

    paths = rlvr_toy.build(tmp_path / "toy")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        big = rlvr_toy.recipe(paths, tmp_path / "big", **{"rollout.cpus_per_engine": 1.5,
                                                          "distributed.cpus_per_worker": 0.5,
                                                          "distributed.ray_address": cluster.address})
        init_ray(big.distributed.ray_address)
        with pytest.raises(ClusterResourceError, match=r"no single node can hold the bundle \{'CPU': 1.5\}"):
            check_resources(big)
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        ray.shutdown()

        out = tmp_path / "run"
        rlvr.run(rlvr_toy.recipe(paths, out, **{"grpo.steps": 2, "distributed.ray_address": cluster.address}))
        manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
        placement = manifest["placement"]
        assert len(nodes) == 2 and {placement["learner"][0], placement["engine"][0]} == nodes
        assert manifest["metrics"]["steps"] == 2 and (out / "checkpoint" / "config.json").is_file()
    finally:
        ray.shutdown()
        cluster.shutdown()
