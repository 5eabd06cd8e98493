"""Resource checks and worker environment (posttrain/orchestration/cluster.py), without starting Ray."""

from __future__ import annotations

from posttrain.orchestration.cluster import bundle, missing_resources, worker_env


def test_fitting_bundles_report_nothing():
    assert missing_resources([bundle(1), bundle(1)], {"CPU": 2.0}) == []
    assert missing_resources([bundle(1, 1)] * 4, {"CPU": 8.0, "GPU": 4.0}, nodes=[{"CPU": 8.0, "GPU": 4.0}]) == []


def test_missing_totals_name_the_resource_and_both_amounts():
    problems = missing_resources([bundle(2, 1)] * 3, {"CPU": 4.0})
    assert problems == ["CPU: needs 6, the cluster has 4", "GPU: needs 3, the cluster has 0"]


def test_a_bundle_larger_than_every_node_is_reported():
    # 8 GPUs in total, but no node has the 6 one bundle asks for
    nodes = [{"CPU": 16.0, "GPU": 4.0}, {"CPU": 16.0, "GPU": 4.0}]
    problems = missing_resources([{"CPU": 1.0, "GPU": 6.0}], {"CPU": 32.0, "GPU": 8.0}, nodes)
    assert problems == ["no single node can hold the bundle {'CPU': 1.0, 'GPU': 6.0}"]


def test_worker_env_carries_offline_flags_and_prefixed_settings(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    env = worker_env({"EXTRA": "y"})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["HF_HUB_OFFLINE"] == "1" and env["EXTRA"] == "y"
    assert "UNRELATED_SECRET" not in env


def test_worker_env_leaves_the_hub_online_unless_the_driver_says_otherwise(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert "HF_HUB_OFFLINE" not in worker_env()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert worker_env()["HF_HUB_OFFLINE"] == "0"


def test_actors_are_handed_absolute_local_paths_and_hub_names_as_they_are(tmp_path, monkeypatch):
    from posttrain.orchestration.cluster import actor_path

    (tmp_path / "ckpt").mkdir()
    monkeypatch.chdir(tmp_path)
    assert actor_path("ckpt") == str(tmp_path / "ckpt")
    assert actor_path("allenai/Olmo-3-1025-7B") == "allenai/Olmo-3-1025-7B"


def test_custom_resources_join_the_bundle_and_a_missing_one_is_named_as_custom():
    assert bundle(1, 0, {"trainer": 1}) == {"CPU": 1.0, "trainer": 1.0}
    assert bundle(0, 0, {"scorer": 1}) == {"scorer": 1.0}  # a reward worker may reserve no CPU
    problems = missing_resources([bundle(1, 0, {"trainer": 1})] * 2, {"CPU": 4.0, "trainer": 1.0})
    assert problems == ["trainer: needs 2, the cluster has 1 (a custom resource: nodes offer it when started with "
                        "ray start --resources '{\"trainer\": N}')"]


def test_role_bundles_carry_each_roles_custom_resources(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
    import rlvr_toy

    from posttrain.orchestration.cluster import role_bundles

    paths = {"model": tmp_path / "m", "train": tmp_path / "t.jsonl", "heldout": tmp_path / "h.jsonl"}
    config = rlvr_toy.recipe(paths, tmp_path / "out", **{
        "distributed.resources_per_worker": {"trainer": 1}, "rollout.resources_per_engine": {"rollout": 1},
        "verifiers.resources_per_worker": {"scorer": 0.5}, "grpo.kl_coef": 0.1, "rollout.num_engines": 2})
    assert role_bundles(config) == {
        "learner": [{"CPU": 1.0, "trainer": 1.0}],
        "engine": [{"CPU": 1.0, "rollout": 1.0}] * 2,
        "reward": [{"scorer": 0.5}],  # cpus_per_worker 0 in the toy recipe: reserved for its custom resource alone
        "reference": [{"CPU": 1.0, "trainer": 1.0}],
    }

