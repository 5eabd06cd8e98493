"""RLVR data and loss pieces without Ray: prompts, the prompt stream, groups -> advantages -> update plans,
the learner-side log-probs and policy loss on a random tiny Olmo 3."""

from __future__ import annotations

import pytest
import torch

from posttrain.algorithms.masked import token_mean
from posttrain.algorithms.advantages import select_groups
from posttrain.data.rlvr import (
    Group, Prompt, PromptStream, Sample, encode_prompts, plan_update, rollout_batch, score_groups, step_samples,
)
from posttrain.objectives.rlvr import policy_loss_fn, response_logprobs
from posttrain.stages.rlvr_metrics import update_metrics
from posttrain.tiny.model import tiny_config
from posttrain.tiny.tokenizer import train_tokenizer

LOSS = dict(loss="grpo_clip", aggregation="token", eps_low=0.2, eps_high=0.272, tis_cap=None, kl_coef=0.0,
            temperature=1.0)


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"What is {i} plus 2? The answer is \\boxed{{{i + 2}}}." for i in range(40)] * 3
    return train_tokenizer(corpus, vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import Olmo3ForCausalLM

    torch.manual_seed(0)
    config = tiny_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    config.num_hidden_layers, config.layer_types, config.hidden_size, config.intermediate_size = 2, ["full_attention"] * 2, 128, 256
    return Olmo3ForCausalLM(config).eval()


def row(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i} plus 2?" + " Think." * (i % 4)}],
            "ground_truth": str(i + 2), "verifier": "math"}


def group(index: int, rewards: list[float], lengths: list[int], version: int = 0, truncated=None) -> Group:
    prompt = Prompt(index, [5, 6, 7][: 1 + index % 3], "math", "1")
    return Group(prompt=prompt, response_ids=[[9 + t % 5 for t in range(n)] for n in lengths],
                 engine_logprobs=[[-0.5] * n for n in lengths], truncated=truncated or [False] * len(lengths),
                 version=version, rewards=list(rewards))


def test_prompts_end_with_the_assistant_header_and_are_left_truncated(tokenizer):
    prompts, truncated = encode_prompts([row(i) for i in range(8)], tokenizer, max_prompt_length=12)
    full, _ = encode_prompts([row(i) for i in range(8)], tokenizer, max_prompt_length=10_000)
    assert truncated == sum(len(p.ids) > 12 for p in full) > 0
    for short, whole in zip(prompts, full):
        assert short.ids == whole.ids[-12:]  # the end (question + "<|im_start|>assistant\n") survives
    assert tokenizer.decode(full[0].ids).endswith("<|im_start|>assistant\n")
    assert (full[3].verifier, full[3].ground_truth, full[3].index) == ("math", "5", 3)


def test_prompt_stream_epochs_and_resuming_from_a_cursor():
    prompts = [Prompt(i, [i + 1], "math", str(i)) for i in range(5)]
    stream = PromptStream(prompts, seed=3)
    drawn = [p.index for p in stream.take(12)]
    assert sorted(drawn[:5]) == sorted(drawn[5:10]) == list(range(5))  # each epoch visits every prompt once
    assert drawn[:5] != drawn[5:10]  # in a new order
    resumed = PromptStream(prompts, seed=3, cursor=7)
    assert [p.index for p in resumed.take(5)] == [p.index for p in PromptStream(prompts, seed=3).take(12)][7:]
    assert stream.cursor == 12 and stream.epoch == pytest.approx(12 / 5)


def test_advantages_penalty_and_equal_groups():
    groups = [group(0, [1, 0, 1, 0], [3, 3, 3, 3]), group(1, [1, 1, 1, 1], [2, 9, 2, 2]), group(2, [0, 0, 0, 0], [4, 4, 4, 4])]
    plain = score_groups(groups, advantage="group_mean", overlong="none", overlong_buffer=0, max_response_length=10)
    assert plain.advantages[0].tolist() == [0.5, -0.5, 0.5, -0.5]
    assert plain.equal.tolist() == [False, True, True]
    # DAPO soft penalty, L = 10, buffer 2: length 9 is 1 token into the buffer -> -0.5; the group is no longer equal
    soft = score_groups(groups, advantage="group_mean", overlong="soft_penalty", overlong_buffer=2, max_response_length=10)
    assert soft.rewards[1].tolist() == [1.0, 0.5, 1.0, 1.0]
    assert soft.equal.tolist() == [False, False, True]
    assert soft.advantages[1].tolist() == pytest.approx([0.125, -0.375, 0.125, 0.125])


def test_format_reward_adds_a_bonus_for_the_variants_shape():
    texts = ["<think>3 + 2 = 5.</think>\\boxed{5}", "\\boxed{5}", "<think>3 + 2</think>5</think>5", "<think>ok</think>no"]
    groups = [group(0, [1, 1, 0, 0], [3, 3, 3, 3]), group(1, [1, 1, 1, 1], [3, 3, 3, 3])]
    for g in groups:
        g.texts = list(texts)
    think = score_groups(groups, advantage="group_mean", overlong="none", overlong_buffer=0, max_response_length=10,
                         format_reward=0.5, style="think")
    # well formed: one <think> block at the start, one </think>, a non-blank answer -> rows 0 and 3
    assert think.rewards.tolist() == [[1.5, 1.0, 0.0, 0.5], [1.5, 1.0, 1.0, 1.5]]
    assert think.equal.tolist() == [False, False]  # equal verifier scores, different shapes: a gradient
    instruct = score_groups(groups, advantage="group_mean", overlong="none", overlong_buffer=0, max_response_length=10,
                            format_reward=0.5, style="instruct")
    assert instruct.rewards[0].tolist() == [1.0, 1.5, 0.0, 0.0]  # Instruct's shape: no think tags
    off = score_groups(groups, advantage="group_mean", overlong="none", overlong_buffer=0, max_response_length=10)
    assert off.rewards.tolist() == [[1.0, 1.0, 0.0, 0.0], [1.0] * 4] and off.equal.tolist() == [False, True]


def test_select_groups_drops_equal_ones_and_caps_the_surplus():
    equal = torch.tensor([False, True, False, False, True, False])
    assert select_groups(equal, 3, True).tolist() == [True, False, True, True, False, False]
    assert select_groups(equal, 3, False).tolist() == [True] * 6


def test_overlong_filter_zeroes_the_weight_of_truncated_responses():
    groups = [group(0, [1, 0], [3, 5], truncated=[False, True])]
    scored = score_groups(groups, advantage="group_mean", overlong="filter", overlong_buffer=0, max_response_length=5)
    samples = step_samples(groups, scored, keep=torch.tensor([True]), overlong="filter")
    batch = rollout_batch(samples, pad_id=0)
    assert batch.response_mask.sum(dim=1).tolist() == [3.0, 0.0]
    assert batch.truncated.tolist() == [False, True]


def test_update_plan_splits_minibatches_and_ranks_evenly():
    groups = [group(i, [1, 0, 0, 1], [2 + i, 3, 4 + i % 2, 1], version=i % 2) for i in range(5)]
    scored = score_groups(groups, advantage="group_mean", overlong="none", overlong_buffer=0, max_response_length=10)
    samples = step_samples(groups, scored, keep=torch.ones(5, dtype=torch.bool), overlong="none")
    plan = plan_update(samples, minibatches=2, micro_batch_size=3, world_size=2, aggregation="token", pad_id=0, seed=1)
    assert len(plan.batches) == 2
    seen = 0
    for minibatch, normalizer in zip(plan.batches, plan.normalizers):
        assert len({len(rank) for rank in minibatch}) == 1  # every rank runs as many micro-batches
        weights = sum(float(b.response_mask.sum()) for rank in minibatch for b in rank)
        assert normalizer == weights  # the token count of the whole minibatch, all ranks
        seen += sum(int((b.group_index >= 0).sum()) for rank in minibatch for b in rank)
    assert seen == len(samples) == 20  # each sample once; filler batches carry group -1 and weight 0
    assert sum(plan.normalizers) == sum(len(s.response_ids) for s in samples)


def test_packed_update_plan_fills_micro_batches_by_tokens_and_balances_ranks():
    groups = [group(i, [1, 0, 0, 1], [2 + i, 3, 4 + i % 2, 1], version=0) for i in range(5)]
    scored = score_groups(groups, advantage="group_mean", overlong="none", overlong_buffer=0, max_response_length=10)
    samples = step_samples(groups, scored, keep=torch.ones(5, dtype=torch.bool), overlong="none")
    plain = plan_update(samples, minibatches=1, micro_batch_size=1, world_size=2, aggregation="token", pad_id=0, seed=1)
    packed = plan_update(samples, minibatches=1, micro_batch_size=1, world_size=2, aggregation="token", pad_id=0,
                         seed=1, pack_length=24)
    batches = [b for rank in packed.batches[0] for b in rank]
    assert all(b.packed for b in batches) and not any(b.packed for rank in plain.batches[0] for b in rank)
    real = [int(b.prompt_mask.sum() + b.response_lengths.sum()) for b in batches]
    assert max(real) <= 24 and len(batches) < len(samples) / 2  # several samples per forward pass
    assert packed.normalizers == plain.normalizers  # the same tokens count, however they are laid out
    loads = [sum(int(b.prompt_mask.sum() + b.response_lengths.sum()) for b in rank) for rank in packed.batches[0]]
    assert abs(loads[0] - loads[1]) <= 24  # longest-first onto the lighter rank
    assert len({len(rank) for rank in packed.batches[0]}) == 1


def test_padding_does_not_change_response_logprobs(model):
    """Left-padded prompts and right-padded responses: each row's log-probs equal the unpadded row's."""
    samples = [Sample([3, 4, 5, 6], [7, 8, 9], [0.0] * 3, 1.0, 0.5, 0, 0, False),
               Sample([3], [7, 8, 9, 10, 11], [0.0] * 5, 0.0, -0.5, 0, 0, False)]
    batched = response_logprobs(model, rollout_batch(samples, pad_id=0))
    for i, sample in enumerate(samples):
        alone = response_logprobs(model, rollout_batch([sample], pad_id=0))[0]
        n = len(sample.response_ids)
        assert torch.allclose(batched[i, :n], alone[:n], atol=1e-5)
        assert batched[i, n:].abs().sum() == 0
    # against a plain forward of the concatenated tokens
    ids = torch.tensor([samples[0].prompt_ids + samples[0].response_ids])
    logp = torch.log_softmax(model(ids).logits.float(), dim=-1)[0]
    manual = [logp[3 + t, tok].item() for t, tok in enumerate(samples[0].response_ids)]
    assert batched[0, :3].tolist() == pytest.approx(manual, abs=1e-5)


def test_policy_loss_on_policy_is_the_token_mean_policy_gradient(model):
    """One minibatch (old = current, detached): ratio 1, loss = -sum(A * mask) / N, no clipping, approx KL 0;
    and two micro-batches with the step's normaliser give the gradient of the whole batch."""
    samples = [Sample([3, 4], [7, 8, 9], [-1.0] * 3, 1.0, 0.75, 0, 0, False),
               Sample([3, 5, 6], [7, 8], [-1.0] * 2, 0.0, -0.25, 0, 0, False),
               Sample([4], [9, 9, 9, 9], [-1.0] * 4, 0.0, -0.5, 1, 0, False)]
    whole = rollout_batch(samples, pad_id=0)
    n = float(whole.response_mask.sum())
    model.zero_grad()
    loss, stats = policy_loss_fn(model, whole, normalizer=n, world_size=1, **LOSS)
    expected = -(0.75 * 3 - 0.25 * 2 - 0.5 * 4) / n
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-6)
    loss.backward()
    grad_whole = torch.cat([p.grad.flatten().clone() for p in model.parameters()])
    assert stats["tokens"] == n and stats["clip_frac_low_sum"] == 0 and stats["approx_kl_sum"] == pytest.approx(0)
    model.zero_grad()
    for part in ([samples[0]], samples[1:]):
        policy_loss_fn(model, rollout_batch(part, pad_id=0), normalizer=n, world_size=1, **LOSS)[0].backward()
    grad_split = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(grad_whole, grad_split, atol=1e-6)
    model.zero_grad()


def test_stale_old_logprobs_clip_and_engine_ratio_stats(model):
    """With old log-probs far below the current ones, positive-advantage tokens clip high; the IS stats
    compare the (old) learner log-probs with the engine's."""
    sample = Sample([3, 4], [7, 8, 9], [0.0] * 3, 1.0, 1.0, 0, 0, False)
    batch = rollout_batch([sample], pad_id=0)
    current = response_logprobs(model, batch)
    batch.old_logprobs = current - 1.0  # ratio e > 1 + eps_high
    batch.engine_logprobs = batch.old_logprobs + torch.log(torch.tensor(3.0))  # old / engine = 1/3
    loss, stats = policy_loss_fn(model, batch, normalizer=3.0, world_size=1, **LOSS)
    assert stats["clip_frac_high_sum"] == pytest.approx(3.0)
    metrics = update_metrics([stats])
    assert metrics["is_ratio/mean"] == pytest.approx(1 / 3, rel=1e-4)
    assert metrics["is_ratio/outside_frac"] == pytest.approx(1.0)
    assert metrics["clip_frac"] == pytest.approx(1.0)
    expected = -(1.0 + 0.272) * 1.0  # clipped: -clip(r) * A per token
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert token_mean(torch.ones(1, 3), batch.response_mask) == 1.0
