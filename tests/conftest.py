"""Shared fixtures: the tiny default is built once per test session and reused.

Set POSTTRAIN_TEST_TINY=DIR to reuse an already-built tiny default across runs
(it is rebuilt when missing).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A built tiny default: DIR/base (checkpoint) and DIR/data/NAME/{train,heldout}.jsonl."""
    from posttrain import tiny

    out = Path(os.environ.get("POSTTRAIN_TEST_TINY") or tmp_path_factory.mktemp("tiny"))
    if not tiny.is_built(out):
        tiny.build(out, seed=0)
    return out


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA; they are deselected where there is none."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    keep = [item for item in items if "gpu" not in item.keywords]
    dropped = [item for item in items if "gpu" in item.keywords]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


# The tiny chains as the e2e tests run them: the demo's recipes as shipped (DPO's and RLVR's learning is
# asserted on the chains), except that RLVR evaluates in the loop only before and after (the chain's held-out
# suite measures every saved checkpoint). The SFT stages are the session's SFT runs (`tiny_sft_dirs`), copied into the
# chains: the pipeline's skip rule recognises them.
E2E_CHAIN_OVERRIDES = ("rlvr:eval.every=0",)
E2E_EVAL_SIZE = 100  # held-out prompts (and pairs) per checkpoint: about 5 points of noise on a pass rate


@pytest.fixture(scope="session")
def tiny_chains(tiny_dir, tiny_sft_dirs, tmp_path_factory) -> Path:
    """`posttrain demo` on the session's tiny default: RUN/{think,instruct}/{sft,dpo,rlvr}, eval.json, the report.

    RUN/<variant>/sft starts as a copy of the session's SFT run of that variant (so the demo skips it);
    the rest runs through the real CLI (E2E_CHAIN_OVERRIDES); RUN/demo.log holds what it printed.
    """
    import shutil
    import subprocess
    import sys

    run = tmp_path_factory.mktemp("chains")
    for variant, sft_dir in tiny_sft_dirs.items():
        shutil.copytree(sft_dir, run / variant / "sft")
    command = [sys.executable, "-m", "posttrain", "demo", "--tiny", str(tiny_dir), "--run-dir", str(run),
               "--eval-size", str(E2E_EVAL_SIZE), *E2E_CHAIN_OVERRIDES]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600)
    (run / "demo.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (f"posttrain demo exited with status {result.returncode}; stderr's end:\n"
                                    f"{result.stderr[-3000:]}\nstdout's end:\n{result.stdout[-1000:]}")
    return run


# --------------------------------------------------------------------------
# The tiny SFT stage as its recipes run it, once per session, through the CLI.


def run_stage_cli(stage: str, recipe: str, out: Path, overrides: list[str], *, timeout: float = 1800) -> float:
    """`python -m posttrain STAGE --recipe RECIPE --output-dir OUT OVERRIDES`; returns its wall seconds.

    OUT/cli.log holds what it printed; a failure shows its last lines.
    """
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "posttrain", stage, "--recipe", recipe, "--output-dir", str(out), *overrides]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "cli.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (f"posttrain {stage} exited with status {result.returncode}; stderr's end:\n"
                                    f"{result.stderr[-3000:]}\nstdout's end:\n{result.stdout[-1000:]}")
    (out / "cli_wall_s.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def tiny_sft_overrides(tiny: Path, variant: str, model: Path) -> list[str]:
    """Point a tiny SFT recipe (paths under runs/tiny/) at the session's tiny default and a start checkpoint."""
    data = tiny / "data" / f"sft_{variant}"
    return [f"model.path={model}", f"data.train.0.path={data / 'train.jsonl'}",
            f"data.heldout.0.path={data / 'heldout.jsonl'}"]


@pytest.fixture(scope="session")
def sft_think_dir(tiny_dir, tmp_path_factory) -> Path:
    """Run dir of `posttrain sft --recipe recipes/tiny/think/sft.yaml` from the tiny base.

    OUT/checkpoint/ (the Think SFT checkpoint), metrics.jsonl, manifest.json,
    plots/, cli.log and cli_wall_s.txt (the command's wall seconds).
    """
    out = tmp_path_factory.mktemp("sft_think")
    run_stage_cli("sft", "recipes/tiny/think/sft.yaml", out, tiny_sft_overrides(tiny_dir, "think", tiny_dir / "base"))
    return out


@pytest.fixture(scope="session")
def sft_instruct_dir(tiny_dir, sft_think_dir, tmp_path_factory) -> Path:
    """Run dir of `posttrain sft --recipe recipes/tiny/instruct/sft.yaml`, started from the Think SFT
    checkpoint as in Olmo 3; same layout as `sft_think_dir`."""
    out = tmp_path_factory.mktemp("sft_instruct")
    start = sft_think_dir / "checkpoint"
    run_stage_cli("sft", "recipes/tiny/instruct/sft.yaml", out, tiny_sft_overrides(tiny_dir, "instruct", start))
    return out


@pytest.fixture(scope="session")
def tiny_sft_dirs(sft_think_dir, sft_instruct_dir) -> dict[str, Path]:
    """{"think": run dir, "instruct": run dir} of the tiny SFT stage (each holds checkpoint/)."""
    return {"think": sft_think_dir, "instruct": sft_instruct_dir}
