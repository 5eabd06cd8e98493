"""RLVR with a `judge` section: the stage starts the judge server on Ray, hands its endpoint to the reward
workers, trains on llm_judge rows, and stops the server at the end.

The server here is tests/orchestration/fake_judge_server.py (every reply "Score: 7"), put in vLLM's place
by patching `judge_server.SERVER` in this (the driver's) process; tests/orchestration/test_judge_server.py
serves the tiny model with vLLM itself.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

import rlvr_toy  # noqa: E402

from posttrain.metrics import read_metrics  # noqa: E402

pytestmark = pytest.mark.slow
FAKE = str(HERE.parent / "orchestration" / "fake_judge_server.py")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from posttrain.orchestration.cluster import init_ray

    init_ray(num_cpus=3)
    yield
    ray.shutdown()


def test_rlvr_scores_llm_judge_rows_through_the_judge_it_serves(tmp_path, local_ray, monkeypatch, capsys):
    from posttrain.orchestration import judge_server
    from posttrain.stages import rlvr

    monkeypatch.setattr(judge_server, "SERVER", (FAKE,))
    toy = rlvr_toy.build(tmp_path / "toy", prompts=8, heldout=4, verifiers=("llm_judge",))
    config = rlvr_toy.recipe(toy, tmp_path / "run", **{
        "grpo.steps": 2, "grpo.filter_equal_groups": False, "grpo.max_async_steps": 0,
        "judge.model": "unused", "judge.served_name": "toy-judge", "judge.cpus": 0.5})
    rlvr.run(config)

    steps = [r for r in read_metrics(tmp_path / "run") if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["reward/mean/llm_judge"] == pytest.approx(0.7) and r["verifier/unscored"] == 0 for r in steps)
    assert all(0 <= r["scorer/utilization"] and r["scorer/queue_wait_s"] >= 0 for r in steps)
    manifest = json.loads((tmp_path / "run" / "checkpoint" / "manifest.json").read_text())
    assert len(manifest["placement"]["judge"]) == 1  # its own bundle, on a node
    host, port = re.search(r"\[judge\] toy-judge serving at http://(\S+):(\d+)/v1", capsys.readouterr().out).groups()
    with pytest.raises(ConnectionRefusedError):  # stopped with the run (a live server would accept, then say 401)
        socket.create_connection((host, int(port)), timeout=5)
