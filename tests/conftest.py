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
