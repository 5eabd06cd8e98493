"""posttrain.data.packing: bin packing, packed rows, collators, and document masking in a real Olmo-3."""

from __future__ import annotations

import random

import pytest
import torch

from posttrain.algorithms.losses import sft_token_loss
from posttrain.data.packing import (
    PACKING_STRATEGIES,
    collate_packed,
    collate_padded,
    pack_examples,
    padding_stats,
)


def _naive_first_fit(lengths, capacity):
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins, free = [], []
    for i in order:
        row = next((r for r, f in enumerate(free) if f >= lengths[i]), None)
        if row is None:
            bins.append([]), free.append(capacity)
            row = len(bins) - 1
        bins[row].append(i)
        free[row] -= lengths[i]
    return bins


def _naive_best_fit(lengths, capacity):
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins, free = [], []
    for i in order:
        fits = [r for r, f in enumerate(free) if f >= lengths[i]]
        if not fits:
            bins.append([]), free.append(capacity)
            row = len(bins) - 1
        else:
            row = min(fits, key=lambda r: free[r])
        bins[row].append(i)
        free[row] -= lengths[i]
    return bins


def _examples(lengths, seed=0, vocab=256, prompt=3):
    """Token lists with the first `prompt` labels masked (a stand-in for the prompt)."""
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(2, vocab) for _ in range(n)]
        out.append({"input_ids": ids, "labels": [-100] * min(prompt, n) + ids[prompt:]})
    return out


# --------------------------------------------------------------------------- bin packing


def test_first_fit_decreasing_hand_worked():
    """Capacity 8, lengths [6, 5, 3, 2]: 6 -> row 0 (2 free), 5 -> row 1 (3 free), 3 -> row 1, 2 -> row 0."""
    assert PACKING_STRATEGIES.get("first_fit_decreasing")([6, 5, 3, 2], 8) == [[0, 3], [1, 2]]


def test_best_fit_prefers_the_tightest_row():
    """Capacity 10, lengths [8, 6, 3, 1]: 8 -> row 0 (2 free), 6 -> row 1 (4 free), 3 -> row 1 (1 free).

    The 1 goes to row 0 under first fit (oldest row that fits) and to row 1 under
    best fit (least room left), filling row 1 exactly.
    """
    assert PACKING_STRATEGIES.get("first_fit_decreasing")([8, 6, 3, 1], 10) == [[0, 3], [1, 2]]
    assert PACKING_STRATEGIES.get("best_fit_decreasing")([8, 6, 3, 1], 10) == [[0], [1, 2, 3]]


@pytest.mark.parametrize(
    "name, reference",
    [("first_fit_decreasing", _naive_first_fit), ("best_fit_decreasing", _naive_best_fit)],
)
def test_strategies_match_quadratic_reference(name, reference):
    rng = random.Random(0)
    for trial in range(20):
        capacity = rng.choice([16, 64, 100])
        lengths = [rng.randint(1, capacity) for _ in range(rng.randint(1, 200))]
        bins = PACKING_STRATEGIES.get(name)(lengths, capacity)
        assert bins == reference(lengths, capacity), (trial, capacity)
        assert sorted(i for row in bins for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= capacity for row in bins)


def test_packing_is_nearly_optimal_on_skewed_lengths():
    """20,000 documents, lengths skewed short (exponential, mean ~250, max 2048): rows >= 97% full."""
    rng = random.Random(1)
    lengths = [min(2048, 1 + int(rng.expovariate(1 / 250))) for _ in range(20_000)]
    lower_bound = -(-sum(lengths) // 2048)
    for name in PACKING_STRATEGIES:
        rows = len(PACKING_STRATEGIES.get(name)(lengths, 2048))
        assert rows <= lower_bound / 0.97, name


# --------------------------------------------------------------------------- packed rows and collators


def test_packed_rows_restart_positions_and_mask_first_labels():
    examples = [
        {"input_ids": [10, 11, 12], "labels": [10, 11, 12]},
        {"input_ids": [20, 21], "labels": [-100, 21]},
        {"input_ids": [30, 31, 32, 33], "labels": [-100, -100, 32, 33]},
    ]
    rows = pack_examples(examples, 6, strategy="first_fit_decreasing")
    assert [row.example_indices for row in rows] == [[2, 1], [0]]
    assert rows[0].input_ids == [30, 31, 32, 33, 20, 21]
    assert rows[0].position_ids == [0, 1, 2, 3, 0, 1]
    assert rows[0].labels == [-100, -100, 32, 33, -100, 21]
    assert rows[0].document_lengths == [4, 2]
    assert rows[1].labels == [-100, 11, 12]  # first token of each document carries no loss

    batch = collate_packed(rows, pad_token_id=0)
    assert batch.attention_mask is None
    assert batch.input_ids.tolist()[1] == [10, 11, 12, 0, 0, 0]
    assert batch.labels.tolist()[1] == [-100, 11, 12, -100, -100, -100]
    assert batch.position_ids.tolist()[1] == [0, 1, 2, 0, 1, 2]  # padding is a document of its own
    assert padding_stats(batch) == {"real_tokens": 9.0, "total_tokens": 12.0, "padding_fraction": 0.25}


def test_bad_examples_name_the_example():
    with pytest.raises(ValueError, match="example 1: input_ids has 9 tokens"):
        pack_examples(_examples([3, 9]), 8)
    with pytest.raises(ValueError, match="example 0: input_ids has 2 tokens but labels has 1"):
        pack_examples([{"input_ids": [1, 2], "labels": [1]}], 8)
    with pytest.raises(ValueError, match="example 0: missing field 'labels'"):
        pack_examples([{"input_ids": [1, 2]}], 8)


def test_padded_collator_and_stats():
    """Lengths [6, 2, 4, 4] padded to 6: 16 real of 24 slots, padding 1/3; packed into 8: 16 of 16."""
    examples = _examples([6, 2, 4, 4])
    padded = collate_padded(examples, pad_token_id=0)
    assert padded.attention_mask.tolist()[1] == [1, 1, 0, 0, 0, 0]
    assert padded.labels.tolist()[1][2:] == [-100] * 4
    assert padding_stats(padded)["padding_fraction"] == pytest.approx(1 / 3)
    packed = collate_packed(pack_examples(examples, 8), pad_token_id=0)
    assert packed.input_ids.shape == (2, 8)
    assert padding_stats(packed)["padding_fraction"] == 0.0


# --------------------------------------------------------------------------- document masking in transformers


def _tiny_olmo3(attn_implementation: str):
    """Random Olmo-3: hidden 128, 2 heads of 64, 2 layers (sliding window 6, then full), vocab 256."""
    from transformers import Olmo3Config, Olmo3ForCausalLM

    config = Olmo3Config(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        sliding_window=6,  # shorter than the documents, so the sliding mask is exercised too
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
        eos_token_id=1,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(0)
    return Olmo3ForCausalLM(config).eval()


def _per_document_losses(model, rows, batch, **forward):
    """Per-token losses of the packed batch, cut back into documents: {example index: (T_doc,)}."""
    with torch.no_grad():
        logits = model(**batch.model_inputs(), **forward).logits
    loss, _ = sft_token_loss(logits, batch.labels)
    out = {}
    for r, row in enumerate(rows):
        start = 0
        for index, n in zip(row.example_indices, row.document_lengths):
            out[index] = loss[r, start : start + n]
            start += n
    return out


def _unpacked_losses(model, examples):
    out = {}
    with torch.no_grad():
        for i, example in enumerate(examples):
            ids = torch.tensor([example["input_ids"]])
            loss, _ = sft_token_loss(model(input_ids=ids).logits, torch.tensor([example["labels"]]))
            out[i] = loss[0]
    return out


@pytest.mark.slow  # importing transformers' Olmo-3 takes most of it
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_losses_equal_unpacked_in_olmo3(attn_implementation):
    """Packed without attention_mask and with use_cache=False: every per-token loss within 1e-4.

    The default use_cache=True makes the model build an (empty) cache first, which turns off
    transformers' packed-sequence detection: documents then see each other and losses move.
    """
    model = _tiny_olmo3(attn_implementation)
    examples = _examples([17, 5, 9, 30, 12, 3, 22, 8, 14], seed=2)
    rows = pack_examples(examples, 40)
    assert any(len(row.document_lengths) >= 3 for row in rows)
    batch = collate_packed(rows, pad_token_id=0, pad_to=40)  # padded rows too

    unpacked = _unpacked_losses(model, examples)
    packed = _per_document_losses(model, rows, batch, use_cache=False)
    for i in range(len(examples)):
        assert torch.allclose(packed[i], unpacked[i], atol=1e-4), i

    leaky = _per_document_losses(model, rows, batch)  # config.use_cache is True
    worst = max((leaky[i] - unpacked[i]).abs().max().item() for i in range(len(examples)))
    assert worst > 1e-2

    padded = collate_padded(examples, pad_token_id=0)
    with torch.no_grad():
        padded_loss, _ = sft_token_loss(model(**padded.model_inputs()).logits, padded.labels)
    for i, example in enumerate(examples):
        assert torch.allclose(padded_loss[i, : len(example["input_ids"])], unpacked[i], atol=1e-4), i


@pytest.mark.slow  # flex attention compiles its kernel on first use (about 20 s on 2 cores)
def test_flex_attention_matches_sdpa_on_packed_rows():
    """Block masks (documents, and the sliding window of 6 on layer 0) give sdpa's logits on packed rows.

    Forward only: torch has no flex attention backward on the CPU; the GPU check times training with it."""
    examples = _examples([17, 5, 9, 30, 12, 3], seed=4)
    rows = pack_examples(examples, 40)
    batch = collate_packed(rows, pad_token_id=0, pad_to=40)
    with torch.no_grad():
        sdpa = _tiny_olmo3("sdpa")(**batch.model_inputs(), use_cache=False).logits
        flex = _tiny_olmo3("flex_attention")(**batch.model_inputs(), use_cache=False).logits
    assert torch.allclose(flex, sdpa, atol=1e-4), (flex - sdpa).abs().max()
