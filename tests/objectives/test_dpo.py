"""DPO pieces without Ray: the reference-log-prob cache, the forward/loss function, micro-batch invariance."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from posttrain.algorithms.losses import PREFERENCE_LOSSES
from posttrain.data.preference import collate, filler, tokenize_pairs
from posttrain.data import reference_cache as R
from posttrain.objectives.dpo import dpo_loss_fn, eval_loss_fn, means, needs_reference, policy_logps, reference_fn
from posttrain.tiny.model import tiny_config
from posttrain.tiny.tokenizer import train_tokenizer

LOSS = dict(loss="dpo_norm", beta=5.0, gamma=0.0, label_smoothing=0.0)


def conv(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small tokenizer, a random tiny Olmo 3 saved as a checkpoint, and 10 tokenized pairs."""
    from transformers import Olmo3ForCausalLM

    corpus = [f"What is {i} plus 2? The answer is \\boxed{{{i + 2}}}." for i in range(40)] * 3
    tokenizer = train_tokenizer(corpus, vocab_size=300)
    torch.manual_seed(0)
    config = tiny_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    config.num_hidden_layers, config.layer_types = 2, ["full_attention"] * 2
    config.hidden_size, config.intermediate_size = 128, 256
    model = Olmo3ForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("ref")
    model.save_pretrained(path)
    rows = [{"chosen": conv(f"What is {i} plus 2?", f"The answer is \\boxed{{{i + 2}}}."),
             "rejected": conv(f"What is {i} plus 2?", f"The answer is {i + 3}" + " and more" * (i % 3))}
            for i in range(10)]
    pairs, _ = tokenize_pairs(tokenizer, rows, max_length=256)
    return tokenizer, model, path, pairs


def test_reference_cache_round_trip_and_keys(setup, tmp_path):
    tokenizer, model, path, pairs = setup
    pad = tokenizer.pad_token_id
    calls = []

    def make():
        calls.append(1)
        return R.compute(lambda b: policy_logps(model, b, pad), pairs, batch_size=3, pad_id=pad)

    key = R.cache_key(path, "fp", 256)
    first, hit = R.cached_or_compute(tmp_path, key, make)
    assert not hit and len(first) == len(pairs) and calls == [1]
    again, hit = R.cached_or_compute(tmp_path, key, make)
    assert hit and calls == [1]  # the rerun reads the cache instead of running the model
    for name in ("chosen", "rejected", "chosen_lengths", "rejected_lengths"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert first.chosen_lengths.tolist() == [len(p.chosen) for p in pairs]
    # the numbers are the model's summed response log-probs, batch by batch or one pair at a time
    single = collate(pairs, [4], pad)
    c, r = policy_logps(model, single, pad)
    assert torch.allclose(first.chosen[4], c[0], atol=1e-4) and torch.allclose(first.rejected[4], r[0], atol=1e-4)
    # every part of the key matters
    assert R.load(tmp_path, R.cache_key(path, "other", 256)) is None
    assert R.load(tmp_path, R.cache_key(path, "fp", 128)) is None
    other = tmp_path / "other_ckpt"
    model.save_pretrained(other)
    (other / "config.json").write_text((other / "config.json").read_text().replace("}", ', "note": 1}', 1))
    assert R.cache_key(other, "fp", 256)["reference_hash"] != key["reference_hash"]
    entry = R.cache_path(tmp_path, key)
    assert json.loads((entry / R.KEY_FILE).read_text()) == key
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_cache_write_is_atomic(setup, tmp_path):
    _, _, path, pairs = setup
    key = R.cache_key(path, "fp", 256)
    bad = R.ReferenceLogps(torch.zeros(2), torch.zeros(2), torch.ones(2, dtype=torch.long), object())  # fails to save
    with pytest.raises(Exception):
        R.save(tmp_path, key, bad)
    assert R.load(tmp_path, key) is None and list(tmp_path.iterdir()) == []


def test_from_results_needs_every_pair_and_skips_fillers(setup):
    _, _, _, pairs = setup
    results = [{"index": [0, 1], "chosen": [-1.0, -2.0], "rejected": [-3.0, -4.0]},
               {"index": [-1], "chosen": [9.0], "rejected": [9.0]}]
    with pytest.raises(RuntimeError, match="missing for 8 of 10"):
        R.from_results(results, pairs)
    full = results + [{"index": list(range(2, 10)), "chosen": [0.0] * 8, "rejected": [0.0] * 8}]
    ref = R.from_results(full, pairs)
    assert ref.chosen[:2].tolist() == [-1.0, -2.0] and ref.rejected[:2].tolist() == [-3.0, -4.0]


def test_reference_fn_matches_compute(setup):
    tokenizer, model, _, pairs = setup
    pad = tokenizer.pad_token_id
    out = reference_fn(model, collate(pairs, [2, 5], pad), pad_id=pad)
    assert out["index"] == [2, 5]
    ref = R.compute(lambda b: policy_logps(model, b, pad), pairs, batch_size=4, pad_id=pad)
    assert out["chosen"] == pytest.approx(ref.chosen[[2, 5]].tolist(), abs=1e-4)


def test_needs_reference():
    assert needs_reference("dpo") and needs_reference("dpo_norm") and needs_reference("ipo")
    assert not needs_reference("simpo")


def _grads(model, batches, pairs_in_step, pad):
    model.zero_grad()
    stats: dict[str, float] = {}
    for batch in batches:
        loss, s = dpo_loss_fn(model, batch, pad_id=pad, pairs_in_step=pairs_in_step, **LOSS)
        loss.backward()
        for k, v in s.items():
            stats[k] = stats.get(k, 0.0) + v
    return [p.grad.clone() for p in model.parameters() if p.grad is not None], stats


def test_micro_batches_and_fillers_equal_one_batch(setup):
    """k micro-batches (one of them a filler) give the gradient and stats of one batch of all pairs."""
    tokenizer, model, _, pairs = setup
    pad = tokenizer.pad_token_id
    ref = R.compute(lambda b: policy_logps(model, b, pad), pairs, batch_size=5, pad_id=pad).pair()
    ref = (ref[0] + torch.linspace(-1, 1, len(pairs)), ref[1])  # the policy differs from its reference
    whole, stats_whole = _grads(model, [collate(pairs, list(range(8)), pad, ref)], 8, pad)
    parts = [collate(pairs, [0, 1, 2], pad, ref), filler(pairs, pad, ref), collate(pairs, [3, 4, 5, 6, 7], pad, ref)]
    split, stats_split = _grads(model, parts, 8, pad)
    for a, b in zip(whole, split):
        assert torch.allclose(a, b, atol=1e-5)
    assert stats_split["pairs"] == 8 and stats_whole.keys() == stats_split.keys()
    for key in stats_whole:
        assert stats_split[key] == pytest.approx(stats_whole[key], abs=1e-4)
    # the logged loss is the registered loss averaged over the pairs
    batch = collate(pairs, list(range(8)), pad, ref)
    with torch.no_grad():
        c, r = policy_logps(model, batch, pad)
    expected, _, _ = PREFERENCE_LOSSES.get("dpo_norm")(
        c, r, batch.ref_chosen_logps, batch.ref_rejected_logps, batch.chosen_lengths, batch.rejected_lengths, beta=5.0
    )
    assert means(stats_whole)["loss"] == pytest.approx(float(expected.mean()), abs=1e-4)
    # two ranks with half the pairs each: each rank's loss x world_size / pairs, averaged by the backend
    rank0, _ = _grads(model, [collate(pairs, [0, 1, 2, 3], pad, ref)], 8, pad)
    rank1, _ = _grads(model, [collate(pairs, [4, 5, 6, 7], pad, ref)], 8, pad)
    for a, g0, g1 in zip(whole, rank0, rank1):
        assert torch.allclose(a, g0 + g1, atol=1e-5)


def test_nll_weight_adds_the_chosen_per_token_nll_to_each_pair(setup):
    tokenizer, model, _, pairs = setup
    pad = tokenizer.pad_token_id
    ref = R.compute(lambda b: policy_logps(model, b, pad), pairs, batch_size=5, pad_id=pad).pair()
    batch = collate(pairs, list(range(6)), pad, ref)
    with torch.no_grad():
        plain, stats = dpo_loss_fn(model, batch, pad_id=pad, pairs_in_step=6, **LOSS)
        weighted, _ = dpo_loss_fn(model, batch, pad_id=pad, pairs_in_step=6, nll_weight=0.5, **LOSS)
        c, _ = policy_logps(model, batch, pad)
    nll = -(c / batch.chosen_lengths)
    assert stats["chosen_nll"] == pytest.approx(float(nll.sum()), rel=1e-5) and float(nll.min()) > 0
    assert float(weighted - plain) == pytest.approx(0.5 * float(nll.mean()), rel=1e-4)


def test_eval_without_reference_reports_the_policy_preference(setup):
    tokenizer, model, _, pairs = setup
    pad = tokenizer.pad_token_id
    batch = collate(pairs, list(range(10)), pad)
    _, stats = eval_loss_fn(model, batch, pad_id=pad, **LOSS)
    assert "reward_acc" not in stats and stats["pairs"] == 10
    c, r = policy_logps(model, batch, pad)
    manual = ((c / batch.chosen_lengths) > (r / batch.rejected_lengths)).sum().item()
    assert stats["pref_acc"] == manual
    with_ref = dataclasses.replace(batch, ref_chosen_logps=c.detach(), ref_rejected_logps=r.detach())
    _, stats = eval_loss_fn(model, with_ref, pad_id=pad, **LOSS)
    # policy == reference: every implicit reward is 0, so none is strictly above the other
    assert stats["reward_acc"] == 0 and abs(stats["reward_margin"]) < 1e-4
