"""posttrain.algorithms.losses: log-probs, SFT, preference and policy-gradient losses.

Each formula is checked on hand-computed tensors (numbers in the docstrings),
then against an independent implementation or an invariance.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from posttrain.algorithms.losses import (
    POLICY_LOSSES,
    PREFERENCE_LOSSES,
    chosen_nll,
    grpo_clip_loss,
    kl_k3,
    sequence_logprobs,
    sft_loss_sum,
    sft_token_loss,
    token_entropy,
    token_logprobs,
)
from posttrain.algorithms.masked import aggregate

LN = math.log


def _logits_3x2() -> torch.Tensor:
    """(1, 3, 2): position 0 gives p = [1/4, 3/4], position 1 gives p = [0.8, 0.2], position 2 unused."""
    return torch.tensor([[[0.0, LN(3.0)], [LN(4.0), 0.0], [5.0, -5.0]]])


# --------------------------------------------------------------------------- log-probs and SFT


def test_token_logprobs_are_shifted_and_aligned_with_labels():
    """labels [7?, 1, 0]: token 1 is predicted by position 0 (p=3/4), token 2 by position 1 (p=0.8).

    out = [0, ln 0.75, ln 0.8] = [0, -0.28768, -0.22314]; position 0 is always masked.
    """
    logps, mask = token_logprobs(_logits_3x2(), torch.tensor([[1, 1, 0]]))
    assert torch.allclose(logps, torch.tensor([[0.0, -0.2876821, -0.2231436]]), atol=1e-6)
    assert mask.tolist() == [[False, True, True]]


def test_ignore_index_masks_and_zeroes():
    logps, mask = token_logprobs(_logits_3x2(), torch.tensor([[1, 1, -100]]))
    assert torch.allclose(logps, torch.tensor([[0.0, -0.2876821, 0.0]]), atol=1e-6)
    assert mask.tolist() == [[False, True, False]]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs(_logits_3x2(), torch.tensor([[1, 1]]))


def test_sft_loss_equals_torch_cross_entropy_on_shifted_inputs():
    """Our sum / count equals F.cross_entropy(mean) with the usual HF shift, bf16 logits included."""
    torch.manual_seed(0)
    logits = torch.randn(3, 9, 17)
    labels = torch.randint(0, 17, (3, 9))
    labels[0, :4] = -100
    labels[2, 6:] = -100
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 17), labels[:, 1:].reshape(-1), ignore_index=-100)
    total, count = sft_loss_sum(logits, labels)
    assert count.item() == int((labels[:, 1:] != -100).sum())
    assert (total / count).item() == pytest.approx(expected.item(), rel=1e-6)
    loss, mask = sft_token_loss(logits.bfloat16(), labels)
    assert loss.dtype == torch.float32
    assert (loss.sum() / mask.sum()).item() == pytest.approx(expected.item(), rel=2e-2)


def test_sft_accumulation_over_uneven_micro_batches_equals_one_big_batch():
    """Micro-batches with 2 and 13 labelled tokens: sum_k loss_sum_k / N equals the big batch mean, grads too."""
    torch.manual_seed(1)
    logits = torch.randn(4, 8, 11, requires_grad=True)
    labels = torch.randint(0, 11, (4, 8))
    labels[0, :5] = -100  # micro-batch 1 = row 0: 2 labelled tokens
    labels[0, 7] = -100
    _, big_count = sft_loss_sum(logits, labels)
    big = sft_loss_sum(logits, labels)[0] / big_count
    (big_grad,) = torch.autograd.grad(big, logits)

    splits = (slice(0, 1), slice(1, 4))
    counts = [sft_loss_sum(logits[s], labels[s])[1] for s in splits]
    assert [c.item() for c in counts] == [2, 21]
    accumulated = sum(sft_loss_sum(logits[s], labels[s])[0] / sum(counts) for s in splits)
    (acc_grad,) = torch.autograd.grad(accumulated, logits)
    assert accumulated.item() == pytest.approx(big.item(), rel=1e-6)
    assert torch.allclose(acc_grad, big_grad, atol=1e-7)


def test_sequence_logprobs_sum_the_labelled_tokens():
    """Row of the 3x2 example: ln 0.75 + ln 0.8 = -0.51083 over 2 tokens."""
    total, count = sequence_logprobs(_logits_3x2(), torch.tensor([[-100, 1, 0]]))
    assert total.item() == pytest.approx(LN(0.75) + LN(0.8), abs=1e-6)
    assert count.tolist() == [2]


def test_token_entropy_hand_worked():
    """H([1/4, 3/4]) = 0.56234 at position 1; uniform over 2 = ln 2 at position 2; position 0 is 0."""
    logits = torch.tensor([[[0.0, LN(3.0)], [0.0, 0.0], [1.0, 2.0]]])
    assert torch.allclose(token_entropy(logits), torch.tensor([[0.0, 0.5623351, LN(2.0)]]), atol=1e-6)


# --------------------------------------------------------------------------- preference losses

B1 = lambda *values: torch.tensor(values, dtype=torch.float32)  # noqa: E731


def test_dpo_hand_worked():
    """pi_c=-1, ref_c=-2, pi_r=-3, ref_r=-2, beta 0.5: z = 0.5 * (1 - (-1)) = 1.

    loss = log(1 + e^-1) = 0.313262; rewards 0.5, -0.5. With label smoothing 0.1:
    0.9 * 0.313262 + 0.1 * log(1 + e^1) = 0.413262.
    """
    args = (B1(-1.0), B1(-3.0), B1(-2.0), B1(-2.0), B1(5), B1(9))
    losses, chosen, rejected = PREFERENCE_LOSSES.get("dpo")(*args, beta=0.5)
    assert losses.item() == pytest.approx(0.3132617, abs=1e-6)
    assert (chosen.item(), rejected.item()) == pytest.approx((0.5, -0.5))
    smoothed, _, _ = PREFERENCE_LOSSES.get("dpo")(*args, beta=0.5, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(0.4132617, abs=1e-6)


def test_dpo_norm_hand_worked():
    """Olmo 3 beta 5. Chosen: (-7.6 - -8) / 4 tokens = 0.1; rejected: (-4.2 - -4) / 2 tokens = -0.1.

    z = 5 * 0.2 = 1, loss 0.313262, rewards 0.5 and -0.5. Plain DPO on the same
    sums: z = 5 * (0.4 + 0.2) = 3, loss log(1 + e^-3) = 0.048587.
    """
    args = (B1(-7.6), B1(-4.2), B1(-8.0), B1(-4.0), B1(4), B1(2))
    losses, chosen, rejected = PREFERENCE_LOSSES.get("dpo_norm")(*args, beta=5.0)
    assert losses.item() == pytest.approx(0.3132617, abs=1e-5)
    assert (chosen.item(), rejected.item()) == pytest.approx((0.5, -0.5), abs=1e-5)
    plain, _, _ = PREFERENCE_LOSSES.get("dpo")(*args, beta=5.0)
    assert plain.item() == pytest.approx(0.0485874, abs=1e-5)


def test_chosen_nll_is_the_per_token_negative_log_likelihood():
    """Chosen sums -7.6 over 4 tokens and -3.0 over 0 tokens (a filler, counted as 1): 1.9 and 3.0."""
    nll = chosen_nll(torch.tensor([-7.6, -3.0]), torch.tensor([4, 0]))
    assert nll.tolist() == pytest.approx([1.9, 3.0])


def test_ipo_hand_worked():
    """Same pair, beta 0.5: h = 0.1 - (-0.1) = 0.2, loss (0.2 - 1 / (2 * 0.5))^2 = 0.64; rewards 0.05, -0.05."""
    args = (B1(-7.6), B1(-4.2), B1(-8.0), B1(-4.0), B1(4), B1(2))
    losses, chosen, rejected = PREFERENCE_LOSSES.get("ipo")(*args, beta=0.5)
    assert losses.item() == pytest.approx(0.64, abs=1e-5)
    assert (chosen.item(), rejected.item()) == pytest.approx((0.05, -0.05), abs=1e-6)


def test_simpo_hand_worked_and_reference_free():
    """pi_c = -4 over 4 tokens (-1), pi_r = -6 over 2 (-3), beta 2, gamma 0.5.

    z = 2 * -1 - 2 * -3 - 0.5 = 3.5, loss log(1 + e^-3.5) = 0.029750; rewards -2, -6.
    """
    losses, chosen, rejected = PREFERENCE_LOSSES.get("simpo")(
        B1(-4.0), B1(-6.0), None, None, B1(4), B1(2), beta=2.0, gamma=0.5
    )
    assert losses.item() == pytest.approx(0.0297504, abs=1e-6)
    assert (chosen.item(), rejected.item()) == pytest.approx((-2.0, -6.0))


def test_reference_losses_need_reference_logps():
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        PREFERENCE_LOSSES.get("dpo_norm")(B1(-1.0), B1(-2.0), None, None, B1(1), B1(1), beta=5.0)


def test_preference_losses_push_the_right_way():
    """The gradient of every loss raises the chosen log-prob and lowers the rejected one."""
    for name in PREFERENCE_LOSSES:
        chosen = torch.tensor([-10.0], requires_grad=True)
        rejected = torch.tensor([-10.0], requires_grad=True)
        losses, _, _ = PREFERENCE_LOSSES.get(name)(
            chosen, rejected, B1(-10.0), B1(-10.0), B1(5), B1(5), beta=0.5, gamma=0.5
        )
        grad_c, grad_r = torch.autograd.grad(losses.sum(), (chosen, rejected))
        assert grad_c.item() < 0 < grad_r.item(), name


def _trl_cpo_loss(loss_type, chosen, rejected, *, beta, label_smoothing=0.0, simpo_gamma=0.0):
    """TRL's own CPOTrainer.cpo_loss, called unbound on a namespace holding the attributes it reads."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.cpo import CPOTrainer

    trainer = SimpleNamespace(
        alpha=0.0,
        beta=beta,
        loss_type=loss_type,
        label_smoothing=label_smoothing,
        simpo_gamma=simpo_gamma,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )
    return CPOTrainer.cpo_loss(trainer, chosen, rejected)


@pytest.mark.slow  # importing TRL's trainers takes ~20 s
def test_matches_trl_cpo_loss():
    """TRL's DPOTrainer computes its loss inline in `_compute_loss` around a model forward, so it
    cannot be called on tensors. TRL's CPOTrainer.cpo_loss can, and its sigmoid / ipo / simpo
    branches are DPO / IPO / SimPO once fed log-ratios (pi - ref, summed or per token) instead of
    log-probs, which is what we feed it here.
    """
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(8) * 20 - 40 for _ in range(4))
    lc, lr = torch.randint(1, 50, (8,)).float(), torch.randint(1, 50, (8,)).float()
    cases = [
        ("dpo", "sigmoid", pc - rc, pr - rr, dict(beta=0.1, label_smoothing=0.2)),
        ("dpo_norm", "sigmoid", (pc - rc) / lc, (pr - rr) / lr, dict(beta=5.0)),
        ("ipo", "ipo", (pc - rc) / lc, (pr - rr) / lr, dict(beta=0.3)),
        ("simpo", "simpo", pc / lc, pr / lr, dict(beta=2.5, simpo_gamma=1.25, label_smoothing=0.1)),
    ]
    for ours, trl_type, trl_chosen, trl_rejected, kwargs in cases:
        expected = _trl_cpo_loss(trl_type, trl_chosen, trl_rejected, **kwargs)
        gamma = kwargs.pop("simpo_gamma", 0.0)
        got = PREFERENCE_LOSSES.get(ours)(pc, pr, rc, rr, lc, lr, gamma=gamma, **kwargs)
        for mine, theirs in zip(got, expected):
            assert torch.allclose(mine, theirs, rtol=1e-5, atol=1e-6), ours


# --------------------------------------------------------------------------- policy gradient

# Four tokens, old log-prob 0, ratios r = [1.5, 0.5, 0.5, 1.5], advantages [+1, +1, -1, -1] (per token).
RATIOS = torch.tensor([[1.5, 0.5, 0.5, 1.5]])
ADV = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
OLD = torch.zeros(1, 4)
ALL = torch.ones(1, 4)


def test_grpo_clip_hand_worked():
    """eps 0.2 / 0.272: per token -min(rA, clip(r)A):
    (+1, 1.5) -> -1.272 clipped high; (+1, 0.5) -> -0.5; (-1, 0.5) -> 0.8 clipped low; (-1, 1.5) -> 1.5.
    Gradients d loss / d logp = -A r where unclipped, 0 where clipped: [0, -0.5, 0, 1.5].
    Stats: clip fractions 1/4 each; approx KL = mean(r - 1 - ln r) = (0.094535 + 0.193147) / 2 = 0.143841.
    """
    logprobs = RATIOS.log().requires_grad_(True)
    loss, stats = grpo_clip_loss(logprobs, OLD, ADV, ALL, eps_low=0.2, eps_high=0.272)
    assert torch.allclose(loss, torch.tensor([[-1.272, -0.5, 0.8, 1.5]]), atol=1e-6)
    (grad,) = torch.autograd.grad(loss.sum(), logprobs)
    assert torch.allclose(grad, torch.tensor([[0.0, -0.5, 0.0, 1.5]]), atol=1e-6)
    assert stats["clip_frac_high"].item() == pytest.approx(0.25)
    assert stats["clip_frac_low"].item() == pytest.approx(0.25)
    assert stats["approx_kl"].item() == pytest.approx(0.1438410, abs=1e-6)
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    assert "is_ratio_mean" not in stats and "kl_ref" not in stats


def test_grpo_clip_is_registered_and_takes_sequence_advantages():
    """Advantages (B,) broadcast over tokens: same as passing them per token."""
    per_seq, _ = POLICY_LOSSES.get("grpo_clip")(RATIOS.log(), OLD, torch.tensor([2.0]), ALL, eps_low=0.2, eps_high=0.2)
    per_tok, _ = grpo_clip_loss(RATIOS.log(), OLD, torch.full((1, 4), 2.0), ALL, eps_low=0.2, eps_high=0.2)
    assert torch.allclose(per_seq, per_tok)
    assert torch.allclose(per_seq, torch.tensor([[-2.4, -1.0, -1.0, -2.4]]), atol=1e-6)


def test_truncated_importance_sampling():
    """old - engine = [ln 3, ln 0.5, 0, 0]: weights min(., cap 2) = [2, 0.5, 1, 1], detached.

    Loss = [-1.272 * 2, -0.5 * 0.5, 0.8, 1.5]; ratio stats before the cap: mean (3 + 0.5 + 1 + 1) / 4
    = 1.375, max 3, capped fraction 1/4. cap None: the weights are off but the stats stay.
    """
    engine = OLD - torch.tensor([[LN(3.0), LN(0.5), 0.0, 0.0]])
    logprobs = RATIOS.log().requires_grad_(True)
    loss, stats = grpo_clip_loss(logprobs, OLD, ADV, ALL, engine_logprobs=engine, tis_cap=2.0)
    assert torch.allclose(loss, torch.tensor([[-2.544, -0.25, 0.8, 1.5]]), atol=1e-5)
    (grad,) = torch.autograd.grad(loss.sum(), logprobs)
    assert torch.allclose(grad, torch.tensor([[0.0, -0.25, 0.0, 1.5]]), atol=1e-5)
    assert stats["is_ratio_mean"].item() == pytest.approx(1.375, abs=1e-5)
    assert stats["is_ratio_max"].item() == pytest.approx(3.0, abs=1e-5)
    assert stats["is_capped_frac"].item() == pytest.approx(0.25)

    off, off_stats = grpo_clip_loss(RATIOS.log(), OLD, ADV, ALL, engine_logprobs=engine, tis_cap=None)
    assert torch.allclose(off, torch.tensor([[-1.272, -0.5, 0.8, 1.5]]), atol=1e-6)
    assert off_stats["is_ratio_max"].item() == pytest.approx(3.0, abs=1e-5)
    with pytest.raises(ValueError, match="engine_logprobs"):
        grpo_clip_loss(RATIOS.log(), OLD, ADV, ALL, tis_cap=2.0)


def test_kl_penalty_k3():
    """ref = logp + ln 2: k3 = 2 - ln 2 - 1 = 0.306853 per token, d k3 / d logp = 1 - 2 = -1.

    With kl_coef 0.1 and zero advantages the loss is 0.0306853 per token, gradient -0.1.
    """
    logprobs = torch.full((1, 4), -1.0, requires_grad=True)
    ref = logprobs.detach() + LN(2.0)
    assert torch.allclose(kl_k3(logprobs.detach(), ref), torch.full((1, 4), 0.3068528), atol=1e-6)
    loss, stats = grpo_clip_loss(logprobs, logprobs.detach(), torch.zeros(1), ALL, ref_logprobs=ref, kl_coef=0.1)
    assert torch.allclose(loss, torch.full((1, 4), 0.0306853), atol=1e-6)
    (grad,) = torch.autograd.grad(loss.sum(), logprobs)
    assert torch.allclose(grad, torch.full((1, 4), -0.1), atol=1e-6)
    assert stats["kl_ref"].item() == pytest.approx(0.3068528, abs=1e-6)


def test_masked_tokens_are_zero_and_garbage_safe():
    """Padding with absurd log-probs contributes 0 loss, 0 gradient, and stays out of the stats."""
    logprobs = torch.tensor([[0.0, 50.0]], requires_grad=True)
    old = torch.tensor([[0.0, -1e9]])
    mask = torch.tensor([[1.0, 0.0]])
    loss, stats = grpo_clip_loss(logprobs, old, torch.tensor([1.0]), mask, engine_logprobs=old, tis_cap=2.0)
    (grad,) = torch.autograd.grad(loss.sum(), logprobs)
    assert loss[0, 1].item() == 0.0 and grad[0, 1].item() == 0.0
    assert all(torch.isfinite(v) for v in stats.values())
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    assert stats["is_ratio_max"].item() == pytest.approx(1.0)


def test_on_policy_step_is_the_plain_policy_gradient():
    """With logprobs == old (one minibatch, k = 0), token-mean loss gradient is -A / N per token."""
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, _ = grpo_clip_loss(logprobs, logprobs.detach(), torch.tensor([0.5, -1.0]), mask)
    (grad,) = torch.autograd.grad(aggregate(loss, mask, "token"), logprobs)
    expected = torch.tensor([[-0.5, -0.5, -0.5], [1.0, 1.0, 0.0]]) / 5
    assert torch.allclose(grad, expected, atol=1e-7)
