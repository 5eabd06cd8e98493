"""Learner ranks as Ray actors with DeepSpeed ZeRO over gloo (posttrain/orchestration/learner_group.py).

Two ranks on the CPU, each given half of a step's rows, must compute what one
in-process rank computes on all of them.
"""

from __future__ import annotations

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from posttrain.config import DeepSpeedSection, LoraSection, ModelSection, OptimSection
from posttrain.data.packing import collate_padded
from posttrain.learner import Learner, LearnerSpec
from posttrain.orchestration.cluster import ClusterResourceError
from posttrain.orchestration.learner_group import LearnerGroup
from posttrain.objectives.sft import sft_loss

pytestmark = pytest.mark.slow




@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import Olmo3Config, Olmo3ForCausalLM

    config = Olmo3Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=128,
                         layer_types=["full_attention"] * 2, sliding_window=128, tie_word_embeddings=False,
                         pad_token_id=1, eos_token_id=0, bos_token_id=None)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("micro") / "model"
    Olmo3ForCausalLM(config).save_pretrained(path)
    return str(path)


def spec(path, *, zero_stage, deepspeed=True, lora=False) -> LearnerSpec:
    return LearnerSpec(model=ModelSection(path=path), optim=OptimSection(lr=1e-2),
                       # no parameter stays whole under ZeRO-3: the output layer is gathered and released too
                       deepspeed=DeepSpeedSection(enabled=deepspeed, zero_stage=zero_stage,
                                                  stage3_param_persistence_threshold=0),
                       lora=LoraSection(enabled=lora, r=4, alpha=8), micro_batch_size=2, accumulation=1,
                       total_steps=10)


ROWS = [{"input_ids": [2 + (i * 5 + j) % 50 for j in range(n)], "labels": [2 + (i * 5 + j) % 50 for j in range(n)]}
        for i, n in enumerate([5, 17, 9, 3])]


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_zero_ranks_match_one_rank_on_the_whole_batch(local_ray, model_dir, zero_stage, tmp_path):
    """Loss chunks of 3 positions: the ranks run different numbers of chunks (12 and 18 loss tokens), which
    must not change how often each calls the output layer (ZeRO-3 gathers it: a collective)."""
    whole = collate_padded(ROWS, pad_token_id=1)
    halves = [collate_padded(ROWS[0::2], pad_token_id=1), collate_padded(ROWS[1::2], pad_token_id=1)]
    n = whole.num_loss_tokens

    single = Learner(spec(model_dir, zero_stage=0, deepspeed=False))
    want = [single.train_step([whole], sft_loss, normalizer=n, world_size=1) for _ in range(2)]

    group = LearnerGroup(spec(model_dir, zero_stage=zero_stage), 2, cpus_per_worker=1)
    try:
        got = [group.call_per_rank("train_step", [([h],) for h in halves], loss_fn=sft_loss, normalizer=n,
                                   world_size=2, chunk=3) for _ in range(2)]
        group.call("export", str(tmp_path))
    finally:
        group.shutdown()
    for w, ranks in zip(want, got):
        assert sum(r["loss_sum"] for r in ranks) == pytest.approx(w["loss_sum"], rel=1e-5)
        assert ranks[0]["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-4)
        assert ranks[0]["lr"] == ranks[1]["lr"] == w["lr"]
    exported = AutoModelForCausalLM.from_pretrained(tmp_path)  # whole tensors, gathered from the partitions
    with torch.no_grad():
        torch.testing.assert_close(exported(**whole.model_inputs()).logits,
                                   single.hf_model()(**whole.model_inputs()).logits, atol=2e-3, rtol=1e-3)


def test_asking_for_more_than_the_cluster_has_fails_at_once(local_ray, model_dir):
    total = int(ray.cluster_resources()["CPU"])
    with pytest.raises(ClusterResourceError, match=f"CPU: needs {2 * total}, the cluster has {total}"):
        LearnerGroup(spec(model_dir, zero_stage=2), total, cpus_per_worker=2)
    with pytest.raises(ClusterResourceError, match="GPU: needs 1, the cluster has 0"):
        LearnerGroup(spec(model_dir, zero_stage=2), 1, use_gpu=True)
