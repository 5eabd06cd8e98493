"""The DeepSpeed config a learner builds: each stage gets the tuned keys it uses, and only those."""

from __future__ import annotations

import pytest

from posttrain.config import DeepSpeedSection
from posttrain.learner.backends import deepspeed_config, zero_optimization

TUNED = dict(overlap_comm=True, reduce_bucket_size=16_777_216, allgather_bucket_size=33_554_432,
             stage3_prefetch_bucket_size=15_099_494, stage3_param_persistence_threshold=40_960,
             stage3_max_live_parameters=500_000_000)


@pytest.mark.parametrize("stage, sent", [
    (0, set()),
    (1, {"overlap_comm", "reduce_bucket_size", "allgather_bucket_size"}),
    (2, {"overlap_comm", "reduce_bucket_size", "allgather_bucket_size"}),
    (3, {"overlap_comm", "reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
         "stage3_max_live_parameters"}),
])
def test_each_stage_gets_the_keys_it_uses(stage, sent):
    zero = zero_optimization(DeepSpeedSection(zero_stage=stage, **TUNED))
    assert zero["stage"] == stage and zero["contiguous_gradients"] is True
    assert set(zero) - {"stage", "contiguous_gradients"} == sent
    assert all(zero[key] == TUNED[key] for key in sent)


def test_defaults_are_deepspeeds_with_overlap_on():
    zero = zero_optimization(DeepSpeedSection(zero_stage=3))
    assert zero["overlap_comm"] is True
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"]) == (500_000_000, 50_000_000)
    assert (zero["stage3_param_persistence_threshold"], zero["stage3_max_live_parameters"]) == (100_000, 1_000_000_000)


def test_stage3_keys_are_accepted_and_ignored_below_stage_3():
    """A ZeRO-3 recipe switched to stage 2 by one override keeps its stage3_* values, unsent."""
    ds = DeepSpeedSection(zero_stage=2, stage3_prefetch_bucket_size=1)
    assert "stage3_prefetch_bucket_size" not in zero_optimization(ds)


def test_offload_and_batch_bookkeeping():
    config = deepspeed_config(DeepSpeedSection(zero_stage=3, offload_optimizer=True, offload_params=True),
                              micro_batch_size=2, accumulation=4, max_grad_norm=1.0, dtype="bfloat16", world_size=8)
    assert config["train_batch_size"] == 64 and config["bf16"]["enabled"]
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
