"""`posttrain rlvr` end to end: GRPO learns what a plugged-in verifier rewards, and a run logs every metric.

The learning test runs the real stage (Ray, the engine actor, the DeepSpeed
learner, reward workers importing the user's module) from the tiny Think SFT
checkpoint. The logging test reads the Think plumbing chain's RLVR run (`plumbing_chains`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from posttrain.checkpoints import EXPORT_DIR, MANIFEST, read_json
from posttrain.config import load_recipe
from posttrain.metrics import read_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
PLUGIN_REWARD_GAIN_MIN = 0.25  # mean reward, last 5 steps over the first 5


SHORT_ANSWERS = textwrap.dedent("""
    import rewards


    @rewards.register("short_answer")
    def short_answer(prediction, label, **context):
        return len(prediction) < int(label)
""")


def test_rlvr_learns_what_a_plugged_in_verifier_rewards(sft_think_dir, tiny_dir, tmp_path, record):
    """GRPO from the tiny Think SFT checkpoint with a verifier from a user's module (`verifiers.modules`):
    reward 1 for an answer shorter than 60 characters. Some of the answers start below it; the policy must
    learn to answer shorter within 20 steps. The threshold is under the worst case measured over several
    seeds, with a margin (tests/e2e/test_learning.py says why)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "short_answers.py").write_text(SHORT_ANSWERS)
    rows = [json.loads(line) for line in (tiny_dir / "data" / "rlvr" / "train.jsonl").read_text().splitlines()[:400]]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": r["messages"], "ground_truth": "60", "verifier": "short_answer"})
                            + "\n" for r in rows))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "posttrain", "rlvr", "--recipe", str(REPO / "recipes/tiny/think/rlvr.yaml"),
               "--output-dir", str(run), f"model.path={sft_think_dir / EXPORT_DIR}", f"data.train.0.path={data}",
               "data.heldout=[]", "verifiers.modules=[short_answers]", "optim.lr=1e-4", "grpo.steps=20",
               "rollout.temperature=1.0", "grpo.format_reward=0.0",  # the plugged-in verifier alone pays
               "eval.every=0", "logging.every=1", "logging.progress=false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    steps = [r for r in read_metrics(run) if "reward/mean" in r]
    first = sum(r["reward/mean"] for r in steps[:5]) / 5
    last = sum(r["reward/mean"] for r in steps[-5:]) / 5
    record(f"plugged-in verifier: reward gain over 20 steps (first 5 steps {first:.3f})", last - first,
           PLUGIN_REWARD_GAIN_MIN)
    assert first < 0.7 and last - first >= PLUGIN_REWARD_GAIN_MIN


def test_rlvr_logs_every_metric_and_phase_and_draws_curves(plumbing_chains):
    run: Path = plumbing_chains / "think" / "rlvr"
    config = load_recipe(run / "config.yaml")
    steps = [r for r in read_metrics(run) if "reward/mean" in r]
    assert steps[-1]["step"] == config.grpo.steps
    expected = {
        "reward/mean", "reward/std", "reward/mean/math", "reward/std/ifeval", "pass_rate", "pass_rate/ifeval",
        "groups/filtered_frac", "response/length", "response/format_rate", "entropy", "clip_frac", "approx_kl",
        "is_ratio/mean", "is_ratio/std", "tokens_per_s/generate", "tokens_per_s/train", "weight_sync/load_s", "idle/learner",
        "idle/engine", "staleness/max", "verifier/unscored", "lr", "grad_norm",
        *(f"time/{phase}" for phase in ("generate", "score", "advantages", "logprobs", "update", "sync")),
    }
    assert expected <= set(steps[-1])
    assert max(r["staleness/max"] for r in steps) <= config.grpo.max_async_steps
    assert all(r["tokens_per_s/generate"] > 0 for r in steps)
    assert all(0.0 <= r["response/format_rate"] <= 1.0 for r in steps)
    for name in ("reward", "time", "is_ratio", "idle"):
        assert (run / "plots" / f"{name}.png").is_file()
    manifest = json.loads((run / EXPORT_DIR / MANIFEST).read_text())
    assert manifest["stage"] == "rlvr" and manifest["parent"]["path"] == str(plumbing_chains / "think" / "dpo" / EXPORT_DIR)
    assert set(manifest["placement"]) >= {"learner", "engine"}
    assert (run / EXPORT_DIR / "tokenizer.json").is_file() and (run / EXPORT_DIR / "config.json").is_file()
