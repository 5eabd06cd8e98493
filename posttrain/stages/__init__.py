"""The stage drivers, in the chain's order; each is `posttrain.stages.<stage>.run(config, resume=False) -> run dir`.

Drivers import torch, Ray and DeepSpeed, so `driver` imports one only when it runs.
"""

from __future__ import annotations

import importlib
from typing import Callable

from posttrain.registry import UnknownNameError

CHAIN = ("sft", "dpo", "rlvr")  # the chain's order


def driver(stage: str) -> Callable:
    """The `run` function of a stage's driver."""
    if stage not in CHAIN:
        raise UnknownNameError(f"unknown stage {stage!r}. Valid: {', '.join(CHAIN)}")
    return importlib.import_module(f"{__name__}.{stage}").run
