"""The pre-flight check's decisions (posttrain/orchestration/preflight.py), without Ray: which nodes are probed,
and what a node's report turns into. The probe on real nodes runs in tests/stages/test_multinode.py."""

from __future__ import annotations

from pathlib import Path

from posttrain.orchestration import preflight
from posttrain.orchestration.preflight import code_fingerprint, role_hosts


def test_a_node_is_probed_for_the_roles_whose_bundles_fit_on_it():
    roles = {"learner": [{"CPU": 1.0, "trainer": 1.0}] * 2, "engine": [{"CPU": 1.0, "rollout": 1.0}],
             "reward": [{"CPU": 1.0}]}
    nodes = {"a": {"CPU": 4.0, "trainer": 2.0}, "b": {"CPU": 4.0, "rollout": 1.0}, "c": {"GPU": 8.0}}
    assert role_hosts(roles, nodes) == {"a": ["learner", "reward"], "b": ["engine", "reward"]}


def report(**values) -> dict:
    code, origin = preflight._driver_code()
    return {"node": "n1", "ip": "10.0.0.2", "code": code, "origin": origin, "sees_model": True, "unseen": {},
            **values}


def problems(tmp_path: Path, roles: list[str], token: str = "t", node_wrote: bool = True, **values) -> list[str]:
    """The problems of node n1's report, for a run dir (tmp_path) where n1 wrote its probe file back, or not."""
    if node_wrote:
        (tmp_path / f"{preflight.PROBE}-{token}.n1").write_text(token)
    return preflight._problems(report(**values), roles, {"output.dir": tmp_path}, "ckpt/model", token)


def test_a_node_that_sees_everything_with_the_same_code_passes(tmp_path):
    assert problems(tmp_path, ["learner", "engine"]) == []


def test_an_output_dir_a_learner_node_cannot_see_names_the_node_its_roles_and_the_path(tmp_path):
    unseen = {"unseen": {"output.dir": "a file the driver wrote there is missing on that node"}}
    [message] = problems(tmp_path, ["learner"], **unseen)
    assert message.startswith(f"output.dir {tmp_path} is not visible from Ray node n1 (10.0.0.2, may host the "
                              "learner): a file the driver wrote there is missing on that node. The learners write "
                              "their checkpoints there.")
    assert "NFS" in message
    # engines and reward workers never write there: a node that hosts only them needs not see it
    assert problems(tmp_path, ["engine", "reward"], **unseen) == []


def test_a_file_a_node_writes_that_never_reaches_the_driver_is_a_different_directory(tmp_path):
    [message] = problems(tmp_path, ["learner"], node_wrote=False)
    assert "does not reach the driver" in message and "Ray node n1" in message


def test_a_model_a_node_cannot_read_and_other_code_are_reported_together(tmp_path):
    found = problems(tmp_path, ["engine"], sees_model=False, code="0" * 16, origin="/opt/old/posttrain")
    assert len(found) == 2
    assert "imports other posttrain code (/opt/old/posttrain, code 0000000000000000)" in found[0]
    assert "distributed.ship_code" in found[0]
    assert found[1].startswith("model.path ckpt/model does not exist on Ray node n1")
    assert problems(tmp_path, ["reward"], sees_model=False) == []  # reward workers load no model


def test_the_code_fingerprint_follows_the_source():
    assert code_fingerprint() == code_fingerprint() and len(code_fingerprint()) == 16


def test_sft_learners_also_need_the_token_cache_the_driver_fills(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
    import rlvr_toy

    from posttrain.config import validate

    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "tokens"))
    sft = validate({"stage": "sft", "model": {"path": "m"}, "data": {"train": [{"path": "t.jsonl"}]},
                    "output": {"dir": str(tmp_path / "run")}, "optim": {"lr": 1e-5}, "batch": {"sequences": 8}})
    assert preflight.shared_dirs(sft, tmp_path / "run") == {"output.dir": tmp_path / "run",
                                                             "data.cache_dir": tmp_path / "tokens"}
    rlvr = rlvr_toy.recipe({"model": tmp_path, "train": tmp_path, "heldout": tmp_path}, tmp_path / "run")
    assert preflight.shared_dirs(rlvr, tmp_path / "run") == {"output.dir": tmp_path / "run"}
