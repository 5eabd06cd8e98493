"""A stop signal in the middle of any stage leaves a resumable checkpoint, and `--resume` finishes the run from it.

For each of SFT, DPO and RLVR: the real CLI in a subprocess on a micro
model (joining the test run's Ray, or for RLVR starting its own); once two
steps are in metrics.jsonl it gets SIGINT sent to its whole process group, as
a terminal's Ctrl-C does (for RLVR, Ray's own processes included), or SIGTERM
sent to the driver alone, as a scheduler does. The run finishes its step, saves a resumable checkpoint, exports
nothing and exits with status 130 (posttrain/stages/scaffold.py); `--resume`
then runs the remaining steps, each logged once, and exports. SFT and DPO
train through DeepSpeed ZeRO-2, the RLVR toy on the plain torch backend, so
both learners' resumable state is saved on a stop.
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
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import micro  # noqa: E402
import rlvr_toy  # noqa: E402

from posttrain.checkpoints import EXPORT_DIR, MANIFEST, latest_resumable, read_json  # noqa: E402
from posttrain.config import dump_yaml  # noqa: E402
from posttrain.metrics import read_metrics  # noqa: E402

pytestmark = pytest.mark.slow

STEPS = {"sft": 40, "dpo": 30, "rlvr": 12}  # SFT and DPO steps take tens of milliseconds: room to stop mid-way
STEP_KEY = {"sft": "loss", "dpo": "loss", "rlvr": "reward/mean"}  # in a training step's record (not in eval records)
COMMON = {"output": {"save_every": 0, "keep_last": 1},
          "distributed": {"num_workers": 1, "cpus_per_worker": 1},
          "deepspeed": {"enabled": True, "zero_stage": 2},
          "logging": {"every": 1, "tensorboard": False, "progress": False}}


def write_recipe(stage: str, tmp_path: Path, out: Path) -> Path:
    """A recipe of STEPS[stage] steps on the micro model (SFT, DPO) or the RLVR toy setting."""
    if stage == "rlvr":
        paths = rlvr_toy.build(tmp_path / "toy")
        config = rlvr_toy.recipe(paths, out, **{"grpo.steps": STEPS["rlvr"], "grpo.max_async_steps": 1})
        text = dump_yaml(config)
    else:
        built = micro.build(tmp_path)
        data = {"train": [{"path": str(built / "train.jsonl")}], "max_length": 192}
        batch = {"tokens": 768, "micro_batch_size": 2}
        if stage == "dpo":
            pairs = micro.build_pairs(tmp_path, train=256)
            data = {"train": [{"path": str(pairs["train"])}], "heldout": [{"path": str(pairs["heldout"])}],
                    "max_length": 192}
            batch = {"sequences": 8, "micro_batch_size": 4}
        text = yaml.safe_dump({
            "stage": stage, "model": {"path": str(built / "model")}, "data": data, "batch": batch,
            "optim": {"lr": 1e-3, "max_steps": STEPS[stage], "epochs": 3},  # 3 epochs hold more steps than that
            **{k: dict(v) for k, v in COMMON.items()}, "output": {**COMMON["output"], "dir": str(out)}})
    recipe = tmp_path / f"{stage}.yaml"
    recipe.write_text(text)
    return recipe


def start(stage: str, recipe: Path, log: Path, *extra: str, own_ray: bool = False) -> subprocess.Popen:
    """`python -m posttrain STAGE --recipe RECIPE`, in a session of its own, its output in `log`; with `own_ray`
    it starts a local Ray of its own (in its session: a signal to the group reaches Ray's processes too) instead
    of joining the test run's."""
    env = {k: v for k, v in os.environ.items() if not (own_ray and k == "RAY_ADDRESS")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")])))
    with open(log, "w") as handle:  # a file, not a pipe: a chatty run never blocks on a full pipe
        return subprocess.Popen([sys.executable, "-m", "posttrain", stage, "--recipe", str(recipe), *extra],
                                cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def tail(log: Path, chars: int = 6000) -> str:
    return f"\n---- the run's output (last {chars} characters) ----\n{log.read_text()[-chars:]}"


def training_steps(out: Path, stage: str) -> list[int]:
    return [r["step"] for r in read_metrics(out) if STEP_KEY[stage] in r]


@pytest.mark.parametrize("stage, sig, to_group", [
    ("sft", signal.SIGTERM, False),  # a scheduler's stop, to the driver alone
    ("dpo", signal.SIGINT, True),  # a terminal's Ctrl-C, to the driver's process group
    ("rlvr", signal.SIGINT, True),  # ... with a Ray of its own in that group
], ids=["sft-SIGTERM", "dpo-SIGINT", "rlvr-SIGINT"])
def test_a_stop_signal_saves_a_resumable_checkpoint_and_resume_finishes(stage, sig, to_group, tmp_path):
    total, out = STEPS[stage], tmp_path / "run"
    recipe = write_recipe(stage, tmp_path, out)

    log = tmp_path / "interrupted.log"
    proc = start(stage, recipe, log, own_ray=stage == "rlvr")
    try:
        deadline = time.time() + 600
        while len(training_steps(out, stage)) < 2:
            assert proc.poll() is None, f"{stage} exited with {proc.returncode} before step 2{tail(log)}"
            assert time.time() < deadline, f"{stage}: no 2 steps logged within 600 s{tail(log)}"
            time.sleep(0.05)
        os.killpg(proc.pid, sig) if to_group else proc.send_signal(sig)
        try:
            status = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{stage} still running 300 s after {sig.name}{tail(log)}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert status == 130, f"{stage} exited with {status} after {sig.name}, not 130{tail(log)}"
    saved = latest_resumable(out)
    assert saved is not None, f"{stage}: no resumable checkpoint after {sig.name}{tail(log)}"
    stopped_at = read_json(saved / "trainer_state.json")["step"]
    assert 2 <= stopped_at < total, f"{stage}: stopped at step {stopped_at} of {total}{tail(log)}"
    assert f"resumable checkpoint at step {stopped_at}" in log.read_text(), tail(log)
    assert not (out / EXPORT_DIR).exists(), f"{stage}: an unfinished run exported {out / EXPORT_DIR}"

    log = tmp_path / "resumed.log"
    began = time.time()
    proc = start(stage, recipe, log, "--resume")
    try:
        status = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{stage} --resume still running after 600 s{tail(log)}")
    assert status == 0, f"{stage} --resume exited with {status}{tail(log)}"
    assert f"resumed from {saved} at step {stopped_at}" in log.read_text(), tail(log)
    steps = training_steps(out, stage)
    assert steps == list(range(1, total + 1)), f"{stage}: logged steps {steps}{tail(log)}"  # none doubled or lost
    manifest = json.loads((out / EXPORT_DIR / MANIFEST).read_text())
    assert manifest["metrics"]["steps"] == total, manifest["metrics"]
    if stage == "rlvr":  # this process's start-up, not the interrupted run's time as well
        assert manifest["startup_s"] < time.time() - began, (manifest["startup_s"], time.time() - began)
