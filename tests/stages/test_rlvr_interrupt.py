"""Ctrl-C during an RLVR run leaves a resumable checkpoint, and `--resume` finishes the run from it.

The real CLI in a subprocess, interrupted by a real SIGINT sent to its whole
process group, as a terminal's Ctrl-C is (Ray's own processes included).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rlvr_toy  # noqa: E402

from posttrain.checkpoints import latest_resumable, read_json  # noqa: E402
from posttrain.config import dump_yaml  # noqa: E402
from posttrain.metrics import read_metrics  # noqa: E402

pytestmark = pytest.mark.slow
STEPS = 14


def cli(recipe: Path, *extra: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "posttrain", "rlvr", "--recipe", str(recipe), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_sigint_saves_a_resumable_checkpoint_and_resume_finishes(tmp_path):
    paths = rlvr_toy.build(tmp_path / "toy")
    out = tmp_path / "run"
    config = rlvr_toy.recipe(paths, out, **{"grpo.steps": STEPS, "grpo.max_async_steps": 1})
    recipe = tmp_path / "rlvr.yaml"
    recipe.write_text(dump_yaml(config))

    proc = cli(recipe, start_new_session=True)
    deadline = time.time() + 600
    while not any(r.get("step", 0) >= 2 and "reward/mean" in r for r in read_metrics(out)):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no training step within the deadline"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output
    saved = latest_resumable(out)
    assert saved is not None, output
    stopped_at = read_json(saved / "trainer_state.json")["step"]
    assert 2 <= stopped_at < STEPS
    assert f"resumable checkpoint at step {stopped_at}" in output
    assert not (out / "checkpoint").exists()  # no export of an unfinished run

    proc = cli(recipe, "--resume")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    assert f"resumed from {saved} at step {stopped_at}" in output
    steps = [r["step"] for r in read_metrics(out) if "reward/mean" in r]
    assert steps == list(range(1, STEPS + 1))  # the interrupted tail was dropped and redone, once
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == STEPS
