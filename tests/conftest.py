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


# The tiny chains as the e2e tests run them: the demo's recipes, shortened so that both chains fit a few
# minutes; each stage's own e2e test is where its learning is pinned.
E2E_CHAIN_OVERRIDES = (
    "sft:optim.max_steps=40",
    "dpo:optim.max_steps=10",
    "rlvr:grpo.steps=4",
    "rlvr:eval.every=0",
    "rlvr:eval.max_prompts=32",
)
E2E_EVAL_PROMPTS = 48


@pytest.fixture(scope="session")
def tiny_chains(tiny_dir, tmp_path_factory) -> Path:
    """`posttrain demo` on the session's tiny default: RUN/{think,instruct}/{sft,dpo,rlvr}, eval.json, the report.

    Runs the real CLI once per session (E2E_CHAIN_OVERRIDES); RUN/demo.log holds what it printed.
    """
    import subprocess
    import sys

    run = tmp_path_factory.mktemp("chains")
    command = [sys.executable, "-m", "posttrain", "demo", "--tiny", str(tiny_dir), "--run-dir", str(run),
               "--eval-prompts", str(E2E_EVAL_PROMPTS), *E2E_CHAIN_OVERRIDES]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600)
    (run / "demo.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"posttrain demo failed:\n{(result.stdout + result.stderr)[-4000:]}"
    return run
