"""Rollout engines behind one interface (`base.Engine`), registered in `ENGINES`.

Importing this package registers the built-in engines; the heavy libraries
(vllm) are imported only when an engine is built.
"""

from posttrain.rollout import hf_engine, vllm_engine  # noqa: F401  (register "hf" and "vllm")
from posttrain.rollout.base import ENGINES, Completion, Engine, build_engine, sample_seed

__all__ = ["ENGINES", "Completion", "Engine", "build_engine", "sample_seed"]
