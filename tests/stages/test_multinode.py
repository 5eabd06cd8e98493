"""SFT, DPO and RLVR on a real two-node Ray cluster started on this machine with `ray start` (tests/stages/ray_nodes.py).

The head offers the custom resource `rollout`, a second raylet `trainer`;
each node has two CPUs, so only the recipes' custom resources
(`distributed.resources_per_worker`, `rollout.resources_per_engine`) keep the
roles apart. The second raylet starts from another working directory without
the driver's PYTHONPATH, and in a mount namespace of its own where HIDDEN is
an empty tmpfs. The driver runs a chain from its own working directory with
relative paths (SFT on the micro model, DPO from the SFT checkpoint, RLVR from
the DPO one, two steps each), so a run finishes only if code reaches the
workers through the runtime env and paths reach the actors absolute.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import micro  # noqa: E402
import ray_nodes  # noqa: E402
import rlvr_toy  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.solo]  # Ray clusters of their own: see the marker

LEARNER, ENGINE = {"trainer": 1}, {"rollout": 1}
COMMON = {"deepspeed": {"enabled": False}, "logging": {"every": 1, "tensorboard": False, "progress": False},
          "distributed": {"num_workers": 1, "cpus_per_worker": 1, "resources_per_worker": LEARNER}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The two nodes: their address, node ids ("learner", "engine"), root directory and the hidden directory
    (None where no mount namespace can be made). Every stage run starts and ends a Ray job of its own on them,
    as the CLI does (StageRun: the job ships posttrain, rewards and the recipe's verifier plugins)."""
    import ray

    root = tmp_path_factory.mktemp("cluster")
    hidden = root / "hidden"
    hidden.mkdir()
    can_hide = ray_nodes.can_hide()
    nodes = ray_nodes.RayNodes(root / "logs")
    if ray.is_initialized():  # a connection left by an earlier test: this module's runs join its own cluster
        ray.shutdown()
    try:
        nodes.start_head(root / "head_cwd", cpus=2, resources={"rollout": 2})
        nodes.add_node("learner", root / "learner_cwd", cpus=2, resources={"trainer": 2},
                       hide=hidden if can_hide else None)
        nodes.wait()
        ray.init(address=nodes.address, logging_level="WARNING")
        ids = {}
        while len(ids) < 2:
            ids = {("learner" if "trainer" in n["Resources"] else "engine"): n["NodeID"]
                   for n in ray.nodes() if n["Alive"]}
        ray.shutdown()
        yield {"address": nodes.address, "root": root, "hidden": hidden if can_hide else None, **ids}
    finally:
        ray.shutdown()
        nodes.stop()


def config(raw: dict):
    from posttrain.config import validate

    return validate({**COMMON, **raw, "distributed": {**COMMON["distributed"], **raw.get("distributed", {})}})


def sft_recipe(model: str, train: str, out: str, address: str, resources: dict | None = None) -> dict:
    """Two SFT steps on the micro model, on the cluster at `address`."""
    return {"stage": "sft", "model": {"path": model}, "data": {"train": [{"path": train}], "max_length": 192},
            "batch": {"tokens": 768, "micro_batch_size": 2}, "optim": {"lr": 1e-3, "max_steps": 2},
            "output": {"dir": out},
            "distributed": {"ray_address": address, **({"resources_per_worker": resources} if resources else {})}}


def test_sft_dpo_rlvr_run_with_learners_and_engines_on_their_nodes(cluster, tmp_path, monkeypatch):
    """The chain runs across the nodes; placement follows the custom resources; every checkpoint lands under the
    driver's working directory (where its relative output.dir points), none under a node's; the workers import
    the posttrain that Ray shipped, not the one installed in the nodes' environment."""
    import ray

    from posttrain.orchestration.cluster import init_ray
    from posttrain.orchestration.shipping import plugin_modules
    from posttrain.orchestration.preflight import check_nodes
    from posttrain.stages import dpo, rlvr, sft

    built = micro.build(tmp_path)
    pairs = micro.build_pairs(tmp_path, train=32, heldout=8)
    toy = rlvr_toy.build(tmp_path / "toy", prompts=16, heldout=4)
    monkeypatch.chdir(tmp_path)  # every path below is relative to the driver's directory
    address = cluster["address"]

    sft.run(config(sft_recipe("model", "train.jsonl", "runs/sft", address)))
    dpo.run(config({**sft_recipe("runs/sft/checkpoint", os.path.relpath(pairs["train"]), "runs/dpo", address),
                    "stage": "dpo", "batch": {"sequences": 8, "micro_batch_size": 4}}))
    rlvr_config = rlvr_toy.recipe(
        {**toy, "model": Path("runs/dpo/checkpoint"), "train": Path(os.path.relpath(toy["train"]))}, Path("runs/rlvr"),
        **{"grpo.steps": 2, "data.heldout": [], "distributed.ray_address": address,
           "distributed.resources_per_worker": LEARNER, "rollout.resources_per_engine": ENGINE})
    rlvr.run(rlvr_config)
    init_ray(address, modules=plugin_modules([rlvr_config]))  # what StageRun checked on entry, asked again
    try:
        reports = check_nodes(rlvr_config, Path("runs/rlvr"))
    finally:
        ray.shutdown()

    manifests = {stage: json.loads((tmp_path / "runs" / stage / "checkpoint" / "manifest.json").read_text())
                 for stage in ("sft", "dpo", "rlvr")}
    for stage, manifest in manifests.items():
        assert (tmp_path / "runs" / stage / "checkpoint" / "model.safetensors").is_file(), stage
        assert manifest["placement"]["learner"] == [cluster["learner"]], stage
    assert manifests["rlvr"]["placement"]["engine"] == [cluster["engine"]]
    assert manifests["rlvr"]["metrics"]["steps"] == 2
    for node_cwd in ("head_cwd", "learner_cwd"):
        assert not list((cluster["root"] / node_cwd).iterdir()), f"something was written under {node_cwd}"

    assert {r["node"]: sorted(r["roles"]) for r in reports} == {cluster["learner"]: ["learner"],
                                                               cluster["engine"]: ["engine"]}
    assert all("runtime_resources" in r["origin"] for r in reports), [r["origin"] for r in reports]


def test_a_run_dir_a_learner_node_cannot_see_is_refused_before_any_work(cluster, tmp_path):
    """The learner node has its own, empty view of HIDDEN: an SFT run writing there fails on entry, naming the node,
    its role and the path; and a role whose custom resource no node offers fails naming the resource."""
    from posttrain.orchestration.cluster import ClusterResourceError
    from posttrain.orchestration.preflight import NodeCheckError
    from posttrain.stages import sft

    built = micro.build(tmp_path)
    address = cluster["address"]
    with pytest.raises(ClusterResourceError, match=r"gpu_box: needs 1, the cluster has 0 \(a custom resource"):
        sft.run(config(sft_recipe(str(built / "model"), str(built / "train.jsonl"), str(tmp_path / "a"), address,
                                  resources={"gpu_box": 1})))
    if cluster["hidden"] is None:
        pytest.skip("no mount namespace here (unshare -m): cannot make a node that does not see a directory")
    out = cluster["hidden"] / "run"
    with pytest.raises(NodeCheckError) as err:
        sft.run(config(sft_recipe(str(built / "model"), str(built / "train.jsonl"), str(out), address)))
    message = str(err.value)
    assert f"output.dir {out} is not visible from Ray node {cluster['learner']}" in message
    assert "may host the learner" in message and cluster["engine"] not in message
    assert not (out / "checkpoint").exists() and not list(out.glob(".posttrain-probe*"))
