"""The shared learner in-process on the plain-torch backend (posttrain/learner/core.py).

DeepSpeed ZeRO ranks under Ray are tested in tests/orchestration/test_learner_group.py.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Olmo3Config, Olmo3ForCausalLM

from posttrain.config import DeepSpeedSection, LoraSection, ModelSection, OptimSection
from posttrain.data.packing import collate_padded
from posttrain.learner import Learner, LearnerSpec
from posttrain.learner.core import param_groups
from posttrain.objectives.sft import sft_loss


def micro_model(path) -> str:
    config = Olmo3Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=128,
                         layer_types=["full_attention"] * 2, sliding_window=128, tie_word_embeddings=False,
                         pad_token_id=1, eos_token_id=0, bos_token_id=None)
    torch.manual_seed(0)
    Olmo3ForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return micro_model(tmp_path_factory.mktemp("micro") / "model")


def spec(path, *, lora=False, steps=10, lr=1e-2, weight_decay=0.0) -> LearnerSpec:
    return LearnerSpec(model=ModelSection(path=path), optim=OptimSection(lr=lr, weight_decay=weight_decay),
                       deepspeed=DeepSpeedSection(enabled=False), lora=LoraSection(enabled=lora, r=4, alpha=8),
                       micro_batch_size=2, accumulation=2, total_steps=steps)


def examples(lengths, offset=2):
    return [{"input_ids": [offset + (i * 7 + j) % 50 for j in range(n)],
             "labels": [offset + (i * 7 + j) % 50 for j in range(n)]} for i, n in enumerate(lengths)]


def params(learner):
    return {n: p.detach().clone() for n, p in learner.hf_model().named_parameters()}


def test_two_micro_batches_equal_one_batch(model_dir):
    """Step-wide token normalisation: micro-batches of different token counts = one big batch, exactly."""
    rows = examples([5, 17, 9, 3])
    whole = collate_padded(rows, pad_token_id=1)
    parts = [collate_padded(rows[:1], pad_token_id=1), collate_padded(rows[1:], pad_token_id=1)]
    n = whole.num_loss_tokens
    assert n == sum(p.num_loss_tokens for p in parts)

    one = Learner(spec(model_dir))
    r_one = one.train_step([whole], sft_loss, normalizer=n, world_size=1)
    acc = Learner(spec(model_dir))
    r_acc = acc.train_step(parts, sft_loss, normalizer=n, world_size=1)
    assert r_acc["loss_sum"] == pytest.approx(r_one["loss_sum"], rel=1e-5)
    assert r_acc["loss_tokens"] == r_one["loss_tokens"] == n
    assert r_acc["grad_norm"] == pytest.approx(r_one["grad_norm"], rel=1e-5)
    # Adam's first step is about lr * sign(grad): elements with a near-zero gradient may flip on
    # rounding noise, so compare the updated models by what they compute, not weight by weight
    second = [m.train_step([whole], sft_loss, normalizer=n, world_size=1)["loss_sum"] for m in (one, acc)]
    assert second[0] == pytest.approx(second[1], rel=1e-4)
    assert second[0] < r_one["loss_sum"]


def test_the_schedule_warms_up_then_decays(model_dir):
    learner = Learner(LearnerSpec(model=ModelSection(path=model_dir), optim=OptimSection(lr=1.0, warmup_ratio=0.2),
                                  deepspeed=DeepSpeedSection(enabled=False), lora=LoraSection(), micro_batch_size=1,
                                  accumulation=1, total_steps=10))
    batch = collate_padded(examples([4]), pad_token_id=1)
    lrs = [learner.train_step([batch], sft_loss, normalizer=batch.num_loss_tokens, world_size=1)["lr"]
           for _ in range(4)]
    assert lrs == pytest.approx([1 / 3, 2 / 3, 1.0, 7 / 8])  # W = 2 of 10 steps, then linear to 0


def test_save_and_load_state_continue_exactly(model_dir, tmp_path):
    batch = collate_padded(examples([6, 11]), pad_token_id=1)
    step = lambda lr_: lr_.train_step([batch], sft_loss, normalizer=batch.num_loss_tokens, world_size=1)
    learner = Learner(spec(model_dir))
    step(learner)
    learner.save_state(tmp_path)
    after_save = [step(learner) for _ in range(2)]
    fresh = Learner(spec(model_dir))
    fresh.load_state(tmp_path)
    resumed = [step(fresh) for _ in range(2)]
    for a, b in zip(after_save, resumed):
        assert a["loss_sum"] == pytest.approx(b["loss_sum"], abs=1e-6)
        assert a["lr"] == b["lr"]
    assert fresh.steps_done == learner.steps_done == 3


def test_lora_trains_adapters_only_and_exports_merged_weights(model_dir, tmp_path):
    learner = Learner(spec(model_dir, lora=True))
    base_before = params(learner)
    batch = collate_padded(examples([8, 12]), pad_token_id=1)
    for _ in range(3):
        learner.train_step([batch], sft_loss, normalizer=batch.num_loss_tokens, world_size=1)
    trainable = [n for n, p in learner.backend.unwrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {n: p for n, p in params(learner).items() if "lora_" not in n}
    assert frozen and all(torch.equal(base_before[n], p) for n, p in frozen.items())  # base unchanged

    learner.export(tmp_path)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path)
    names = {n for n, _ in exported.named_parameters()}
    assert not any("lora" in n or "base_layer" in n for n in names)
    with torch.no_grad():
        want = learner.backend.unwrapped(**batch.model_inputs()).logits
        got = exported(**batch.model_inputs()).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    base = {n.replace(".base_layer.", "."): p for n, p in base_before.items() if "lora_" not in n}
    changed = [n for n, w in exported.named_parameters() if not torch.equal(w, base[n])]
    assert any("q_proj" in n for n in changed)  # the adapters really were merged in


def test_full_export_round_trips(model_dir, tmp_path):
    learner = Learner(spec(model_dir))
    batch = collate_padded(examples([5, 9]), pad_token_id=1)
    learner.train_step([batch], sft_loss, normalizer=batch.num_loss_tokens, world_size=1)
    learner.export(tmp_path)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path)
    for name, value in exported.named_parameters():
        torch.testing.assert_close(value, params(learner)[name])
    assert exported.config.use_cache is True  # inference checkpoints keep their cache


def test_weight_decay_skips_vectors(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    decay, keep = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in keep["params"])
    assert len(decay["params"]) + len(keep["params"]) == len(list(model.parameters()))


def test_token_logprobs_align_with_labels(model_dir):
    learner = Learner(spec(model_dir))
    batch = collate_padded(examples([4, 7]), pad_token_id=1)
    logps, mask = learner.token_logprobs(batch)
    assert logps.shape == mask.shape == batch.labels.shape
    assert not mask[:, 0].any() and int(mask.sum()) == batch.num_loss_tokens
    assert (logps[mask] < 0).all() and (logps[~mask] == 0).all()


def test_flex_attention_is_refused_on_the_cpu_before_any_work(model_dir):
    bad = spec(model_dir)
    bad.model = ModelSection(path=model_dir, attn_implementation="flex_attention")
    with pytest.raises(ValueError, match="flex_attention trains on CUDA GPUs only"):
        Learner(bad)
