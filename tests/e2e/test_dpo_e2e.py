"""`posttrain dpo` on a tiny SFT checkpoint: resuming after a kill, and the reference cache on a rerun.

Whether the tiny DPO recipes learn (held-out preference accuracy before and
after) is asserted on the chains that run them as shipped (tests/e2e/test_learning.py).
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

from posttrain.checkpoints import read_json
from posttrain.metrics import read_metrics

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def dpo_command(
    variant: str, tiny_dir: Path, sft_dir: Path, out: Path, *overrides: str, resume: bool = False
) -> list[str]:
    data = tiny_dir / "data" / f"dpo_{variant}"
    return [sys.executable, "-m", "posttrain", "dpo", "--recipe", str(REPO / f"recipes/tiny/{variant}/dpo.yaml"),
            "--output-dir", str(out), *(["--resume"] if resume else []),
            f"model.path={sft_dir / 'checkpoint'}", f"data.train.0.path={data / 'train.jsonl'}",
            f"data.heldout.0.path={data / 'heldout.jsonl'}", "logging.progress=false", *overrides]


def run(command: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def _kill_when(process: subprocess.Popen, ready: Path, timeout: float) -> None:
    """SIGKILL the run's whole process group (driver, Ray, learner) once `ready` exists."""
    deadline = time.time() + timeout
    while not ready.exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, f"{ready} never appeared"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_tiny_dpo_resumes_after_a_kill_and_reuses_the_reference_cache(tiny_dir, plumbing_chains, tmp_path):
    short = ["data.train.0.count=48", "data.heldout.0.count=32", "batch.sequences=8", "batch.micro_batch_size=4", "output.save_every=2",
             "output.keep_last=3", "logging.every=1"]
    sft = plumbing_chains / "think" / "sft"
    straight = tmp_path / "straight"
    run(dpo_command("think", tiny_dir, sft, straight, *short))

    killed = tmp_path / "killed"
    process = subprocess.Popen(dpo_command("think", tiny_dir, sft, killed, *short), cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _kill_when(process, killed / "resumable" / "step_00000002" / "trainer_state.json", timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert not (killed / "manifest.json").exists()
    result = run(dpo_command("think", tiny_dir, sft, killed, *short, resume=True))
    assert "resumed from" in result.stdout and "cache hit" in result.stdout

    a, b = read_json(straight / "manifest.json"), read_json(killed / "manifest.json")
    assert b["data"]["reference_cache"]["hit"] is True and a["data"]["reference_cache"]["hit"] is False
    for key in ("loss", "reward_margin", "heldout_pref_acc", "heldout_loss"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-3, abs=1e-4), key
    steps = [r["step"] for r in read_metrics(killed) if "loss" in r]
    assert steps == sorted(set(steps)) == list(range(1, 7))  # the redone steps are not logged twice
    assert json.loads((killed / "manifest.json").read_text())["parent"]["path"].endswith("checkpoint")
