"""The chunked output layer: values and gradients equal the whole-logits computation, padded and packed."""

from __future__ import annotations

import pytest
import torch

from posttrain.algorithms.chunked import chunked_logprobs
from posttrain.algorithms.losses import IGNORE_INDEX, gather_logprobs, sft_loss_sum, token_logprobs
from posttrain.data.batches import RolloutBatch
from posttrain.data.rlvr import Sample, rollout_batch
from posttrain.objectives.forward import causal_lm, label_logprobs, plain_head
from posttrain.objectives.rlvr import policy_loss_fn, response_logprobs
from posttrain.objectives.sft import sft_loss

VOCAB = 256


def _olmo3(seed: int = 0, **extra):
    """Random Olmo 3: hidden 64, 2 layers (a sliding window of 6, then full attention), float32."""
    from transformers import Olmo3Config, Olmo3ForCausalLM

    config = Olmo3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, sliding_window=6,
                         layer_types=["sliding_attention", "full_attention"], pad_token_id=0, eos_token_id=1,
                         attn_implementation="sdpa", **extra)
    torch.manual_seed(seed)
    return Olmo3ForCausalLM(config)


def _grads(model) -> dict[str, torch.Tensor]:
    out = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _assert_same_grads(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=1e-4), (name, (a[name] - b[name]).abs().max())


# --------------------------------------------------------------------------- the maths


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1, 5, 0])
def test_chunked_logprobs_equal_whole_logits_values_entropy_and_gradients(temperature, chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))

    logps, entropy = chunked_logprobs(head, hidden, targets, temperature=temperature, chunk=chunk, entropy=True)
    (logps * torch.linspace(-1, 1, 23)).sum().backward()
    got = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None

    logits = head(hidden) / temperature
    expected = gather_logprobs(logits, targets)
    (expected * torch.linspace(-1, 1, 23)).sum().backward()
    logp = torch.log_softmax(logits.detach(), dim=-1)
    assert torch.allclose(logps, expected, atol=1e-6)
    assert torch.allclose(entropy, -(logp.exp() * logp).sum(-1), atol=1e-5)
    assert not entropy.requires_grad
    assert torch.allclose(got[0], hidden.grad, atol=1e-6) and torch.allclose(got[1], head.weight.grad, atol=1e-6)


def test_chunked_logprobs_without_grad_and_on_no_positions():
    head = torch.nn.Linear(8, 10, bias=False)
    with torch.no_grad():
        logps, entropy = chunked_logprobs(head, torch.randn(4, 8), torch.zeros(4, dtype=torch.long), chunk=3)
    assert logps.shape == (4,) and entropy is None
    empty, _ = chunked_logprobs(head, torch.randn(0, 8, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,)
    empty.sum().backward()  # an all-filtered micro-batch still backpropagates
    with pytest.raises(ValueError, match="temperature"):
        chunked_logprobs(head, torch.randn(2, 8), torch.zeros(2, dtype=torch.long), temperature=0.0)


# --------------------------------------------------------------------------- through a model


def _labelled_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (3, 20), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 14:] = 0  # right padding
    labels = ids.clone()
    labels[:, :6] = IGNORE_INDEX  # prompt
    labels[attention == 0] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": attention}, labels


@pytest.mark.slow  # transformers' Olmo 3
@pytest.mark.parametrize("chunk", [4, 0])
def test_label_logprobs_equal_token_logprobs_on_full_logits(chunk):
    model = _olmo3()
    inputs, labels = _labelled_batch()

    logps, mask, _ = label_logprobs(model, inputs, labels, chunk=chunk)
    (logps.sum() * 0.5).backward()
    got = _grads(model)
    expected, expected_mask = token_logprobs(model(**inputs, use_cache=False).logits, labels)
    (expected.sum() * 0.5).backward()
    assert torch.equal(mask, expected_mask)
    assert torch.allclose(logps, expected, atol=1e-5)
    _assert_same_grads(got, _grads(model))
    assert type(model.lm_head).forward is torch.nn.Linear.forward and "forward" not in vars(model.lm_head)


@pytest.mark.slow
def test_sft_loss_equals_the_whole_logits_cross_entropy():
    from posttrain.data.batches import SFTBatch

    model = _olmo3()
    inputs, labels = _labelled_batch(seed=3)
    positions = (inputs["attention_mask"].cumsum(1) - 1).clamp(min=0)
    batch = SFTBatch(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], position_ids=positions,
                     labels=labels)
    loss, stats = sft_loss(model, batch, normalizer=7.0, world_size=2, chunk=5)
    loss.backward()
    got = _grads(model)
    loss_sum, count = sft_loss_sum(model(**batch.model_inputs(), use_cache=False).logits, labels)
    (loss_sum * 2 / 7.0).backward()
    assert stats["loss_tokens"] == float(count)
    assert stats["loss_sum"] == pytest.approx(float(loss_sum.detach()), rel=1e-5)
    _assert_same_grads(got, _grads(model))


@pytest.mark.slow
def test_models_with_a_logit_transform_take_the_whole_logits_path():
    model = _olmo3(final_logit_softcapping=3.0)
    assert not plain_head(model) and plain_head(_olmo3())
    inputs, labels = _labelled_batch()
    logps, _, _ = label_logprobs(model, inputs, labels, chunk=4)
    expected, _ = token_logprobs(model(**inputs, use_cache=False).logits, labels)
    assert torch.allclose(logps, expected, atol=1e-5)


def test_causal_lm_unwraps_wrappers_and_refuses_other_modules():
    model = _olmo3()

    class Engine(torch.nn.Module):  # DeepSpeedEngine and DDP hold the model as `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert causal_lm(Engine(model)) is model
    with pytest.raises(TypeError, match="Linear is not a causal LM"):
        causal_lm(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------- RLVR: padded, packed, old path


def _samples(seed: int = 0) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (p, r) in enumerate([(5, 9), (3, 2), (8, 12), (4, 1), (6, 7)]):
        prompt = torch.randint(2, VOCAB, (p,), generator=g).tolist()
        response = torch.randint(2, VOCAB, (r,), generator=g).tolist()
        logprobs = (-torch.rand(r, generator=g) * 3).tolist()
        out.append(Sample(prompt, response, logprobs, reward=float(i % 2), advantage=float(i % 2) - 0.4, group=i // 2,
                          version=0, truncated=False))
    return out


def _old_policy_loss(model, batch: RolloutBatch, temperature: float, normalizer: float):
    """The whole-logits computation the chunked path replaces: tempered (N, Tr, V) logits, then gather."""
    from posttrain.algorithms.losses import POLICY_LOSSES
    from posttrain.algorithms.masked import AGGREGATIONS

    input_ids, attention_mask, position_ids = batch.sequences()
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits
    tp, tr = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    logits = logits[:, tp - 1: tp + tr - 1] / temperature
    logps = gather_logprobs(logits, batch.response_ids)
    per_token, _ = POLICY_LOSSES.get("grpo_clip")(logps, logps.detach(), batch.advantages, batch.response_mask > 0,
                                                  engine_logprobs=batch.engine_logprobs)
    logp = torch.log_softmax(logits.detach(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    value = AGGREGATIONS.get("token")(per_token, batch.response_mask, normalizer=normalizer)
    return value, logps.detach() * (batch.response_mask > 0), (entropy * (batch.response_mask > 0)).sum()


@pytest.mark.slow
def test_rlvr_loss_padded_packed_and_whole_logits_agree():
    """Loss, gradients, log-probs and entropy equal within 1e-5 whichever way the micro-batch runs."""
    model = _olmo3()
    padded = rollout_batch(_samples(), pad_id=0)
    packed = rollout_batch(_samples(), pad_id=0)
    packed.packed = True
    kwargs = dict(normalizer=20.0, world_size=1, loss="grpo_clip", aggregation="token", eps_low=0.2, eps_high=0.272,
                  tis_cap=None, kl_coef=0.0, temperature=0.8)

    results = {}
    for name, batch in (("padded", padded), ("packed", packed)):
        value, stats = policy_loss_fn(model, batch, chunk=3, **kwargs)
        value.backward()
        results[name] = (float(value.detach()), stats, _grads(model),
                         response_logprobs(model, batch, temperature=0.8, chunk=3))
    value, logps, entropy_sum = _old_policy_loss(model, padded, 0.8, 20.0)
    value.backward()
    old_grads = _grads(model)

    for name in ("padded", "packed"):
        got_value, stats, grads, got_logps = results[name]
        assert got_value == pytest.approx(float(value.detach()), abs=1e-5), name
        assert stats["entropy_sum"] == pytest.approx(float(entropy_sum), rel=1e-5), name
        assert torch.allclose(got_logps, logps, atol=1e-5), name
        _assert_same_grads(grads, old_grads)


def test_packed_sequences_lay_samples_end_to_end():
    batch = rollout_batch(_samples()[:2], pad_id=0)  # prompts 5 and 3, responses 9 and 2
    ids, positions, labels, index = batch.packed_sequences()
    assert ids.shape == (1, 19)
    assert positions[0].tolist() == list(range(14)) + list(range(5))
    assert (labels[0, :5] == IGNORE_INDEX).all() and labels[0, 5:14].tolist() == batch.response_ids[0].tolist()
    assert index[0].tolist() == list(range(5, 14))
    assert index[1].tolist() == [17, 18] + [-1] * 7
    assert ids[0, index[1, :2]].tolist() == batch.response_ids[1, :2].tolist()
