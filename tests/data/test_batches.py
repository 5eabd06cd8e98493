"""posttrain.data.batches: shapes are checked, batches move and pickle intact."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from posttrain.data.batches import PreferenceBatch, RolloutBatch, SFTBatch


def _sft() -> SFTBatch:
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    return SFTBatch(
        input_ids=ids,
        labels=torch.tensor([[-100, 6, 7, -100], [-100, 9, -100, -100]]),
        position_ids=torch.arange(4).repeat(2, 1),
        attention_mask=(ids != 0).long(),
        row_lengths=torch.tensor([3, 2]),
    )


def _preference() -> PreferenceBatch:
    return PreferenceBatch(
        chosen_input_ids=torch.ones(2, 5, dtype=torch.long),
        chosen_attention_mask=torch.ones(2, 5, dtype=torch.long),
        chosen_labels=torch.full((2, 5), -100),
        chosen_lengths=torch.tensor([3, 2]),
        rejected_input_ids=torch.ones(2, 7, dtype=torch.long),
        rejected_attention_mask=torch.ones(2, 7, dtype=torch.long),
        rejected_labels=torch.full((2, 7), -100),
        rejected_lengths=torch.tensor([4, 1]),
        ref_chosen_logps=torch.tensor([-3.0, -2.0]),
        ref_rejected_logps=torch.tensor([-5.0, -1.0]),
    )


def _rollout() -> RolloutBatch:
    """Two samples of one group: prompts [_, 3, 4] and [5, 6, 7] (left-padded), responses of 2 and 3 tokens."""
    return RolloutBatch(
        prompt_ids=torch.tensor([[0, 3, 4], [5, 6, 7]]),
        prompt_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]),
        response_ids=torch.tensor([[11, 12, 0], [13, 14, 15]]),
        response_lengths=torch.tensor([2, 3]),
        response_mask=torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
        engine_logprobs=torch.tensor([[-0.5, -0.1, 0.0], [-1.0, -2.0, -0.2]]),
        rewards=torch.tensor([1.0, 0.0]),
        advantages=torch.tensor([0.5, -0.5]),
        group_index=torch.tensor([0, 0]),
        policy_version=torch.tensor([3, 4]),
        truncated=torch.tensor([False, True]),
    )


def _assert_same(a, b):
    assert type(a) is type(b)
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        same = torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y  # flags (`packed`) are plain values
        assert same, field.name


@pytest.mark.parametrize("make", [_sft, _preference, _rollout])
def test_pickle_round_trip(make):
    batch = make()
    _assert_same(pickle.loads(pickle.dumps(batch)), batch)


@pytest.mark.parametrize("make", [_sft, _preference, _rollout])
def test_to_moves_every_tensor_and_keeps_none(make):
    batch = make()
    moved = batch.to("meta")
    for field in dataclasses.fields(batch):
        value, original = getattr(moved, field.name), getattr(batch, field.name)
        if isinstance(original, torch.Tensor):
            assert value.device.type == "meta" and original.device.type == "cpu", field.name
        else:
            assert value == original, field.name  # None and plain flags stay as they are


def test_sft_batch_model_inputs_and_counts():
    batch = _sft()
    assert set(batch.model_inputs()) == {"input_ids", "position_ids", "attention_mask"}
    assert batch.num_loss_tokens == 3
    packed = dataclasses.replace(batch, attention_mask=None)
    assert "attention_mask" not in packed.model_inputs()


def test_shape_mismatches_name_the_field():
    with pytest.raises(ValueError, match=r"SFTBatch.labels: dim T is 3, other fields have 4"):
        SFTBatch(input_ids=torch.zeros(2, 4), labels=torch.zeros(2, 3), position_ids=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"PreferenceBatch.rejected_lengths: dim B is 3"):
        dataclasses.replace(_preference(), rejected_lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"RolloutBatch.engine_logprobs: expected shape \(N, Tr\)"):
        dataclasses.replace(_rollout(), engine_logprobs=torch.zeros(2))


def test_preference_batch_has_reference():
    assert _preference().has_reference
    assert not dataclasses.replace(_preference(), ref_chosen_logps=None, ref_rejected_logps=None).has_reference


def test_rollout_sequences_and_staleness():
    """Row 0: pad, 3, 4 | 11, 12, pad -> positions [0, 0, 1, 2, 3, 0-clamped]; row 1 is all real."""
    batch = _rollout()
    input_ids, attention_mask, position_ids = batch.sequences()
    assert input_ids.tolist() == [[0, 3, 4, 11, 12, 0], [5, 6, 7, 13, 14, 15]]
    assert attention_mask.tolist() == [[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    assert position_ids[0, 1:5].tolist() == [0, 1, 2, 3]
    assert position_ids[1].tolist() == [0, 1, 2, 3, 4, 5]
    assert batch.staleness(4).tolist() == [1, 0]
    assert len(batch) == 2
