"""The SFT stage end to end.

The tiny Think SFT run of the learning chain (tests/conftest.py) leaves a
complete checkpoint (weights, tokenizer with chat template, generation config,
manifest, plots); whether it teaches the format is asserted in
tests/e2e/test_learning.py.

Micro runs (a 2-layer model built here, a few seconds of training each):
a run killed with SIGKILL mid-way and resumed with --resume ends at the loss
of an uninterrupted run; two ranks under Ray (gloo, ZeRO-2) follow the loss
curve of one.
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

from posttrain.checkpoints import EXPORT_DIR, MANIFEST, checkpoint_hash, latest_resumable, read_json
from posttrain.config import load_recipe
from posttrain.data.chat import CHAT_TEMPLATE
from posttrain.metrics import read_metrics

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "stages"))  # micro.py: the micro model and chats


def test_the_sft_checkpoint_is_complete_and_traceable(sft_think_dir, tiny_dir):
    checkpoint = sft_think_dir / EXPORT_DIR
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", MANIFEST):
        assert (checkpoint / name).is_file(), name
    tokenizer_config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    template = tokenizer_config.get("chat_template") or (checkpoint / "chat_template.jinja").read_text()
    assert template == CHAT_TEMPLATE
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    im_end = json.loads((checkpoint / "tokenizer.json").read_text())["model"]["vocab"]["<|im_end|>"]
    assert im_end in (generation["eos_token_id"] if isinstance(generation["eos_token_id"], list)
                      else [generation["eos_token_id"]])

    manifest = read_json(checkpoint / MANIFEST)
    assert manifest == read_json(sft_think_dir / MANIFEST)
    assert manifest["stage"] == "sft" and manifest["parent"]["hash"] == checkpoint_hash(tiny_dir / "base")
    assert manifest["content_hash"] == checkpoint_hash(checkpoint, use_manifest=False)
    assert manifest["data"]["examples"] > 0 and manifest["data"]["fingerprint"]
    for counted in ("skipped_bad_rows", "overlong_dropped", "overlong_truncated", "no_target_dropped"):
        assert counted in manifest["data"]
    assert manifest["config"]["stage"] == "sft" and manifest["config_hash"]
    assert manifest["git"]["commit"] and manifest["packages"]["deepspeed"]
    assert manifest["metrics"]["heldout_loss"] > 0 and manifest["wall_time_s"] > 0

    records = read_metrics(sft_think_dir)
    assert [r["step"] for r in records] == sorted({r["step"] for r in records})
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "padding_fraction"):
        assert all(key in r for r in records), key
    assert records[-1]["loss"] < records[0]["loss"]
    assert 0 <= records[-1]["padding_fraction"] < 0.2  # packed rows are nearly full
    assert (sft_think_dir / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- resume and ranks, on a micro model


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    """A 2-layer Olmo-3, its tokenizer and 300 chats (think style, some multi-turn) in DIR (tests/stages/micro.py)."""
    import micro as builders

    out = builders.build(tmp_path_factory.mktemp("micro"))
    recipe = {
        "stage": "sft", "model": {"path": str(out / "model")},
        "data": {"train": [{"path": str(out / "train.jsonl")}], "max_length": 192},
        "output": {"dir": str(out / "unused"), "save_every": 5, "keep_last": 2},
        "optim": {"lr": 3e-3, "epochs": 3},
        "batch": {"tokens": 768, "micro_batch_size": 2},
        "distributed": {"num_workers": 1, "cpus_per_worker": 1},
        "deepspeed": {"enabled": True, "zero_stage": 2},
        "logging": {"every": 1, "tensorboard": False, "progress": False},
    }
    (out / "sft.yaml").write_text(yaml.safe_dump(recipe))
    return out


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for this module; CLI subprocesses join it through RAY_ADDRESS."""
    import ray

    from posttrain.orchestration.cluster import init_ray

    started = not ray.is_initialized()
    init_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def uninterrupted(micro, ray_address, tmp_path_factory) -> Path:
    from posttrain.stages.sft import run

    return run(load_recipe(micro / "sft.yaml", [f"output.dir={tmp_path_factory.mktemp('uninterrupted')}"]))


def cli(micro: Path, out: Path, ray_address: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, RAY_ADDRESS=ray_address)
    return subprocess.Popen([sys.executable, "-m", "posttrain", "sft", "--recipe", str(micro / "sft.yaml"),
                             "--output-dir", str(out), *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_a_killed_run_resumes_to_the_loss_of_an_uninterrupted_one(micro, ray_address, uninterrupted, tmp_path):
    total = read_metrics(uninterrupted)[-1]["step"]
    out = tmp_path / "killed"
    proc = cli(micro, out, ray_address)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        latest = latest_resumable(out)
        if latest is not None and int(latest.name.split("_")[1]) >= 10:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read()[-3000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = max(r["step"] for r in read_metrics(out))
    assert killed_at < total and not (out / EXPORT_DIR).exists()

    resumed = cli(micro, out, ray_address, "--resume")
    log, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, log[-3000:]
    resumed_from = int(log.split("resumed from")[1].split("at step")[1].split()[0])
    assert 10 <= resumed_from <= killed_at

    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, total + 1))  # the redone steps are not doubled
    want = {r["step"]: r["loss"] for r in read_metrics(uninterrupted)}
    got = {r["step"]: r["loss"] for r in records}
    final_gap = abs(got[total] - want[total])
    print(f"killed at step {killed_at}, resumed from {resumed_from}; final loss {got[total]:.6f} vs "
          f"{want[total]:.6f} uninterrupted (gap {final_gap:.2e})")
    assert final_gap <= 1e-4
    assert max(abs(got[s] - want[s]) for s in range(resumed_from + 1, total + 1)) <= 1e-4


def test_two_ranks_under_ray_follow_the_loss_curve_of_one(micro, ray_address, uninterrupted, tmp_path):
    from posttrain.stages.sft import run

    out = run(load_recipe(micro / "sft.yaml", [f"output.dir={tmp_path}", "distributed.num_workers=2"]))
    one = [r["loss"] for r in read_metrics(uninterrupted)]
    two = [r["loss"] for r in read_metrics(out)]
    assert len(one) == len(two)
    gaps = [abs(a - b) for a, b in zip(one, two)]
    print(f"1 vs 2 ranks: first-step gap {gaps[0]:.2e}, largest gap {max(gaps):.2e}, final {one[-1]:.4f}/{two[-1]:.4f}")
    assert gaps[0] <= 1e-5  # the same rows, the same normalisation: the same loss
    assert max(gaps) <= 1e-3  # reduction order only: the curves stay together
    assert read_json(out / MANIFEST)["plan"]["world_size"] == 2


def test_lora_sft_exports_merged_full_weights(micro, ray_address, tmp_path):
    """LoRA through the stage (ZeRO-3): the exported checkpoint is a plain model whose adapted matrices moved."""
    import torch
    from transformers import AutoModelForCausalLM

    from posttrain.stages.sft import run

    out = run(load_recipe(micro / "sft.yaml", [f"output.dir={tmp_path}", "lora.enabled=true", "lora.r=4",
                                               "deepspeed.zero_stage=3", "optim.max_steps=6", "output.save_every=0"]))
    base = dict(AutoModelForCausalLM.from_pretrained(micro / "model").named_parameters())
    merged = AutoModelForCausalLM.from_pretrained(out / EXPORT_DIR)
    names = [n for n, _ in merged.named_parameters()]
    assert names == list(base) and not any("lora" in n for n in names)
    moved = {n for n, p in merged.named_parameters() if not torch.equal(p, base[n])}
    assert any(n.endswith("q_proj.weight") for n in moved)
    assert not any("norm" in n or "embed" in n for n in moved)  # only adapted linear layers change
    assert read_json(out / MANIFEST)["model"]["trainable_parameters"] < read_json(out / MANIFEST)["model"]["parameters"]
