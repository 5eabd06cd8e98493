"""The run report: tables from manifests and eval.json, curves, lineage; the HTML renders in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from posttrain.checkpoints import EXPORT_DIR, MANIFEST, atomic_dir, build_manifest, finalize_export, write_json_atomic
from posttrain.cli import main
from posttrain.eval.heldout import EVAL_FILE
from posttrain.metrics import MetricsLogger
from posttrain.report import REPORT_HTML, REPORT_MD, find_chains, summary_text, write_report
from posttrain.pipeline import CHAIN, PIPELINE_FILE

STAGE_METRICS = {"sft": {"heldout_loss": 1.25, "loss": 1.1, "steps": 4},
                 "dpo": {"heldout_pref_acc": 0.81, "heldout_reward_acc": 0.77, "loss": 0.5, "steps": 4},
                 "rlvr": {"eval/pass@1": 0.42, "eval/pass@1/math": 0.5, "loss": 0.01, "steps": 4}}
EVAL = {"input": 0.05, "sft": 0.30, "dpo": 0.35, "rlvr": 0.45}  # pass@1 after each stage


def fake_chain(run_dir: Path, variant: str, base: Path) -> None:
    """A chain's run directory as the pipeline leaves it: manifests, metrics.jsonl, pipeline.json, eval.json."""
    parent = base
    for index, stage in enumerate(CHAIN):
        out = run_dir / stage
        with MetricsLogger(out, tensorboard=False) as logger:
            for step in range(1, 5):
                values = {"loss": 2.0 / step + index}
                if stage == "rlvr":
                    values.update({"reward/mean": 0.1 * step, "pass_rate": 0.08 * step})
                logger.log(step, values)
        config = {"stage": stage, "variant": variant, "optim": {"lr": 1e-4},
                  "data": {"train": [{"path": str(base.parent / f"{stage}.jsonl")}]}}
        manifest = build_manifest(stage=stage, config=config, config_hash=f"{stage}hash", parent=parent,
                                  metrics=STAGE_METRICS[stage], wall_time_s=10.0 * (index + 1))
        with atomic_dir(out / EXPORT_DIR) as tmp:
            (tmp / "config.json").write_text("{}")
            (tmp / "model.safetensors").write_bytes(stage.encode())
            finalize_export(tmp, manifest)
        parent = out / EXPORT_DIR
    stages = [{"stage": s, "action": "ran", "reason": "no previous run"} for s in CHAIN]
    write_json_atomic(run_dir / PIPELINE_FILE, {"variant": variant, "wall_s": 61.0, "stages": stages})
    results = {name: {"checkpoint": str(base if name == "input" else run_dir / name / EXPORT_DIR),
                      "metrics": {"pass@1": value, "pass@1/math": value, "pass@1/ifeval": value / 2, "format": 0.9,
                                  "pref_acc": 0.6, "pairs": 50}} for name, value in EVAL.items()}
    write_json_atomic(run_dir / EVAL_FILE, {"suite": {"prompts": 40, "pairs": 50, "max_tokens": 64}, "results": results})


@pytest.fixture
def demo_dir(tmp_path) -> Path:
    base = tmp_path / "tiny" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    for stage in CHAIN:
        (tmp_path / "tiny" / f"{stage}.jsonl").write_text("{}\n")
    run = tmp_path / "demo"
    fake_chain(run / "think", "think", base)
    fake_chain(run / "instruct", "instruct", run / "think" / "sft" / EXPORT_DIR)
    return run


def test_a_directory_of_chains_is_found_think_first(demo_dir):
    assert [c.name for c in find_chains(demo_dir)] == ["think", "instruct"]
    assert [c.name for c in find_chains(demo_dir / "instruct")] == ["instruct"]
    assert [s.stage for s in find_chains(demo_dir)[0].stages] == list(CHAIN)


def test_the_markdown_holds_the_tables_curves_and_lineage(demo_dir):
    written = write_report(demo_dir)
    md = written.markdown.read_text()
    assert written.chains == ("think", "instruct")
    # held-out metrics after each stage: one column per checkpoint, values in stage order
    assert "| metric | input | SFT | DPO | RLVR (final) |" in md
    assert "| pass@1, all verifiers | 0.050 | 0.300 | 0.350 | 0.450 |" in md
    assert "| pass@1, ifeval | 0.025 | 0.150 | 0.175 | 0.225 |" in md
    assert "| preference accuracy | 0.600 | 0.600 | 0.600 | 0.600 |" in md
    # the stages' own measurements and the stage table
    assert "heldout_pref_acc 0.810" in md and "eval/pass@1 0.420" in md
    assert "| DPO | ran (no previous run) | 20s | 4 |" in md
    # curves: written as PNGs and linked relatively
    assert len(written.images) == 4 and all(p.is_file() and p.stat().st_size > 5000 for p in written.images)
    assert "![think loss curves](report/think_loss.png)" in md and "(report/instruct_reward.png)" in md
    # lineage: each stage's input and its hash, recipe hash, data fingerprints
    think_sft = json.loads((demo_dir / "think" / "sft" / EXPORT_DIR / MANIFEST).read_text())
    assert f"({think_sft['content_hash']})" in md.split("## Instruct chain")[1]  # the instruct SFT's input is the think SFT
    assert "rlvrhash" in md and think_sft["data_sources"].popitem()[1] in md


def test_the_html_is_self_contained(demo_dir):
    page = write_report(demo_dir).html.read_text()
    assert page.count("src='data:image/png;base64,") == 4
    assert "src='http" not in page and "href=" not in page  # nothing to fetch
    assert "<th>RLVR (final)</th>" in page and "<code>" in page


def test_summary_text_shows_both_chains_for_the_terminal(demo_dir):
    text = summary_text(demo_dir)
    assert "think chain (" in text and "instruct: held-out metrics after each stage" in text
    assert "pass@1, all verifiers  0.050  0.300  0.350  0.450" in text


def test_a_single_stage_run_without_pipeline_or_eval_still_reports(tmp_path, demo_dir):
    only = tmp_path / "only"
    shutil.copytree(demo_dir / "think" / "sft", only / "sft")
    written = write_report(only)
    md = written.markdown.read_text()
    assert "No evaluation was recorded" in md and "| SFT | - | 10s | 4 |" in md
    assert [p.name for p in written.images] == ["only_loss.png"]


def test_the_report_command(demo_dir, tmp_path, capsys):
    assert main(["report", str(demo_dir)]) == 0
    out = capsys.readouterr().out
    assert str(demo_dir / REPORT_HTML) in out and str(demo_dir / REPORT_MD) in out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no stage manifests here" in capsys.readouterr().err


# --------------------------------------------------------------------------
# Rendering in a real browser

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium is needed to render the report: apt-get install -y chromium (make test does it as root)"
    return found


def screenshot(page: Path, out: Path, profile: Path, size: str = "1280,2400") -> Image.Image:
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
               f"--screenshot={out}", page.resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HOME": str(profile)})
    assert result.returncode == 0 and out.is_file(), result.stderr[-2000:]
    return Image.open(out).convert("RGB")


@pytest.mark.slow
def test_the_html_renders_in_headless_chromium(demo_dir, tmp_path):
    written = write_report(demo_dir)
    shot = screenshot(written.html, tmp_path / "report.png", tmp_path / "profile")
    assert shot.size == (1280, 2400)
    gray = shot.convert("L")
    non_white = sum(1 for v in gray.getdata() if v < 235) / (shot.size[0] * shot.size[1])
    assert non_white > 0.03, f"the page looks blank: {non_white:.3%} non-white pixels"
    assert ImageStat.Stat(gray).stddev[0] > 20
    # the embedded curves render: matplotlib's default blue line (#1f77b4) is on the page
    blue = sum(1 for r, g, b in shot.getdata() if abs(r - 31) < 40 and abs(g - 119) < 40 and b > 150)
    assert blue > 200, f"no curve pixels found ({blue})"
    # the table header band (#e8eefc) renders too
    header = sum(1 for r, g, b in shot.getdata() if (r, g, b) == (232, 238, 252))
    assert header > 1000
