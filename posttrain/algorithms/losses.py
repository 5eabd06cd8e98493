"""Losses: SFT cross-entropy, log-probs and entropy, preference losses, policy-gradient losses.

Alignment convention (every per-token output in this module): `labels` is
aligned with the model's input, as in Hugging Face (`labels[:, t]` is token t
of the sequence, -100 where it carries no loss). A causal LM's logits at
position t-1 predict token t, so the shift happens here, explicitly, and the
result is aligned with `labels`:

    out[:, t] = f(logits[:, t - 1], labels[:, t])   for t >= 1
    out[:, 0] = 0 and mask[:, 0] = False            (nothing predicts token 0)

so a mask built on the token positions (a response mask, an assistant-token
mask) applies to the outputs unchanged. Log-softmax is taken in float32
whatever the logits' dtype.

Registries (one signature each):

- `PREFERENCE_LOSSES`: (policy_chosen_logps, policy_rejected_logps,
  ref_chosen_logps, ref_rejected_logps, chosen_lengths, rejected_lengths, *,
  beta, gamma=0.0, label_smoothing=0.0) -> (losses, chosen_rewards,
  rejected_rewards), all (B,). The *_logps are log-probs SUMMED over response
  tokens (`sequence_logprobs`); *_lengths are response token counts.
- `POLICY_LOSSES`: (logprobs, old_logprobs, advantages, mask, *, eps_low,
  eps_high, engine_logprobs=None, tis_cap=None, ref_logprobs=None,
  kl_coef=0.0) -> (per-token loss (B, T), stats dict of scalars). Aggregate the
  loss with `posttrain.algorithms.masked.AGGREGATIONS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from posttrain.algorithms.masked import masked_mean
from posttrain.registry import Registry

IGNORE_INDEX = -100
# exp() of a log-ratio beyond this is either an overflow or a sign of a broken
# rollout; verl clamps at the same bound (core_algos.compute_policy_loss).
_MAX_LOG_RATIO = 20.0

PREFERENCE_LOSSES: Registry = Registry("preference loss")
POLICY_LOSSES: Registry = Registry("policy loss")


# --------------------------------------------------------------------------- log-probs


def gather_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[..., target], no shift: logits (..., V), targets (...) -> (...) float32."""
    logits = logits.float()
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_logprobs(logits: Tensor, labels: Tensor, *, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Per-token log-probs of `labels`, aligned with `labels` (see the module docstring).

    logits: (B, T, V) from the model run on the input; labels: (B, T).
    Returns logps (B, T) float32, 0 where masked, and mask (B, T) bool, True
    where the label counts (t >= 1 and labels[:, t] != ignore_index).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (B, T)")
    targets = labels[:, 1:]  # (B, T-1): token t is predicted by logits[:, t-1]
    target_mask = targets != ignore_index
    logps = gather_logprobs(logits[:, :-1], targets.masked_fill(~target_mask, 0))
    logps = logps.masked_fill(~target_mask, 0.0)
    first = torch.zeros_like(logps[:, :1])
    mask = torch.cat([torch.zeros_like(target_mask[:, :1]), target_mask], dim=1)
    return torch.cat([first, logps], dim=1), mask


def sequence_logprobs(logits: Tensor, labels: Tensor, *, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Summed log-probs of each row's labelled tokens and their count.

    logits: (B, T, V); labels: (B, T) with ignore_index on prompt and padding.
    Returns (sum_logps (B,) float32, num_tokens (B,) int64), the inputs of the
    preference losses.
    """
    logps, mask = token_logprobs(logits, labels, ignore_index=ignore_index)
    return logps.sum(dim=-1), mask.sum(dim=-1)


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution, aligned like `token_logprobs`.

    logits: (B, T, V) -> (B, T) float32: out[:, t] = H(softmax(logits[:, t-1])),
    the entropy of the distribution token t was drawn from; out[:, 0] = 0.
    Materialises a float32 (B, T, V) tensor: call it under torch.no_grad() when
    it is only logged.
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1)  # (B, T-1)
    return torch.cat([torch.zeros_like(entropy[:, :1]), entropy], dim=1)


# --------------------------------------------------------------------------- SFT


def sft_token_loss(logits: Tensor, labels: Tensor, *, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Per-token cross-entropy -log p(labels[:, t] | tokens < t), aligned with labels.

    logits: (B, T, V); labels: (B, T), ignore_index (-100) where no loss.
    Returns (loss (B, T) float32, 0 where masked; mask (B, T) bool).
    """
    logps, mask = token_logprobs(logits, labels, ignore_index=ignore_index)
    return -logps, mask


def sft_loss_sum(logits: Tensor, labels: Tensor, *, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """(summed cross-entropy over labelled tokens, number of labelled tokens), both scalars.

    For gradient accumulation over micro-batches with different token counts,
    backpropagate loss_sum_k / N where N is the token count of the whole step
    (sum of num_tokens over micro-batches and ranks): the accumulated gradient
    then equals that of one big batch's mean loss. Dividing each micro-batch by
    its own count instead would weigh a token of a short micro-batch more.
    """
    loss, mask = sft_token_loss(logits, labels, ignore_index=ignore_index)
    return loss.sum(), mask.sum()


# --------------------------------------------------------------------------- preference


def _sigmoid_loss(logits: Tensor, label_smoothing: float) -> Tensor:
    """-(1 - eps) log sigma(z) - eps log sigma(-z): conservative DPO (Mitchell 2023, cDPO)."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    return -F.logsigmoid(logits) * (1.0 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing


def _per_token(logps: Tensor, lengths: Tensor) -> Tensor:
    """Summed log-probs -> mean per response token (a zero length is treated as 1)."""
    return logps / lengths.to(logps.dtype).clamp(min=1.0)


def _need(tensor: Tensor | None, name: str, loss: str) -> Tensor:
    if tensor is None:
        raise ValueError(f"preference loss {loss!r} needs {name} (reference log-probs)")
    return tensor


@PREFERENCE_LOSSES.register("dpo")
def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float,
    gamma: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO, sigmoid form (Rafailov et al. 2023, arXiv 2305.18290, eq. 7).

    z = beta * ((pi_c - ref_c) - (pi_r - ref_r)) on summed log-probs;
    loss = -(1 - ls) log sigma(z) - ls log sigma(-z) (label smoothing as in
    conservative DPO; TRL `loss_type="sigmoid"`). Rewards: beta * (pi - ref),
    detached. `gamma` and the lengths are unused.
    """
    ref_c = _need(ref_chosen_logps, "ref_chosen_logps", "dpo")
    ref_r = _need(ref_rejected_logps, "ref_rejected_logps", "dpo")
    chosen_ratio = policy_chosen_logps - ref_c  # (B,)
    rejected_ratio = policy_rejected_logps - ref_r  # (B,)
    losses = _sigmoid_loss(beta * (chosen_ratio - rejected_ratio), label_smoothing)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


@PREFERENCE_LOSSES.register("dpo_norm")
def dpo_norm_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float,
    gamma: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Length-normalised DPO, Olmo 3's choice (arXiv 2512.13961; Tulu 3, arXiv 2411.15124).

    DPO on log-probs averaged over response tokens: each side's log-ratio is
    divided by its own length, z = beta * ((pi_c - ref_c) / |y_c| - (pi_r -
    ref_r) / |y_r|) (open-instruct `dpo_norm`, beta 5 in Olmo 3). Rewards are
    the normalised ones, beta * (pi - ref) / |y|, detached.
    """
    ref_c = _need(ref_chosen_logps, "ref_chosen_logps", "dpo_norm")
    ref_r = _need(ref_rejected_logps, "ref_rejected_logps", "dpo_norm")
    chosen_ratio = _per_token(policy_chosen_logps - ref_c, chosen_lengths)
    rejected_ratio = _per_token(policy_rejected_logps - ref_r, rejected_lengths)
    losses = _sigmoid_loss(beta * (chosen_ratio - rejected_ratio), label_smoothing)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def chosen_nll(policy_chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """Per-pair negative log-likelihood of the chosen response, per token: -pi_c / |y_c|.

    Added to a preference loss with a weight (`dpo.nll_weight`; RPO, Pang et
    al. 2024, arXiv 2404.19733; TRL `rpo_alpha`), it keeps the chosen answers
    likely while the margin grows: without it a small model can raise the
    margin by lowering both sides and drift off its own format.
    """
    return -_per_token(policy_chosen_logps, chosen_lengths)


@PREFERENCE_LOSSES.register("ipo")
def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float,
    gamma: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """IPO (Azar et al. 2023, arXiv 2310.12036, eq. 17), beta playing the paper's tau.

    h = (pi_c - ref_c) / |y_c| - (pi_r - ref_r) / |y_r| on length-averaged
    log-probs (as TRL's `loss_type="ipo"`); loss = (h - 1 / (2 beta))^2.
    Rewards: beta * (pi - ref) / |y|, detached. gamma and label_smoothing unused.
    """
    ref_c = _need(ref_chosen_logps, "ref_chosen_logps", "ipo")
    ref_r = _need(ref_rejected_logps, "ref_rejected_logps", "ipo")
    chosen_ratio = _per_token(policy_chosen_logps - ref_c, chosen_lengths)
    rejected_ratio = _per_token(policy_rejected_logps - ref_r, rejected_lengths)
    losses = (chosen_ratio - rejected_ratio - 1.0 / (2.0 * beta)) ** 2
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


@PREFERENCE_LOSSES.register("simpo")
def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float,
    gamma: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO (Meng et al. 2024, arXiv 2405.14734, eq. 6): reference-free, with a margin.

    z = beta * pi_c / |y_c| - beta * pi_r / |y_r| - gamma;
    loss = -(1 - ls) log sigma(z) - ls log sigma(-z) (TRL CPOTrainer
    `loss_type="simpo"`, whose simpo_gamma is our gamma). Reference log-probs
    are ignored and may be None. Rewards: beta * pi / |y|, detached.
    """
    chosen = beta * _per_token(policy_chosen_logps, chosen_lengths)
    rejected = beta * _per_token(policy_rejected_logps, rejected_lengths)
    losses = _sigmoid_loss(chosen - rejected - gamma, label_smoothing)
    return losses, chosen.detach(), rejected.detach()


# --------------------------------------------------------------------------- policy gradient


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 estimator of KL(pi || pi_ref) per token, for tokens sampled from pi (Schulman 2020).

    k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, unbiased, low variance.
    Shapes (B, T) -> (B, T).
    """
    log_ratio = (ref_logprobs - logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return log_ratio.exp() - log_ratio - 1.0


@POLICY_LOSSES.register("grpo_clip")
def grpo_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.272,
    engine_logprobs: Tensor | None = None,
    tis_cap: float | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token clipped surrogate of GRPO / OlmoRL, with clip-higher and truncated IS.

    logprobs (B, T): the learner's current log-probs (with grad);
    old_logprobs (B, T): the learner's log-probs before this step's updates;
    advantages (B,) or (B, T); mask (B, T): response tokens that count.

        r     = exp(logprobs - old_logprobs)
        l_pg  = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)   (PPO, arXiv 1707.06347)
        w     = min(exp(old_logprobs - engine_logprobs), tis_cap), detached
        loss  = w * l_pg + kl_coef * k3(logprobs, ref_logprobs)

    Separate eps_low / eps_high is DAPO's clip-higher (arXiv 2503.14476; Olmo 3
    uses 0.2 / 0.272). w corrects for the inference engine sampling from a
    slightly different distribution than the learner computes (truncated IS,
    Yao et al. 2025 "Your efficient RL framework secretly brings you off-policy
    RL training"; open-instruct applies it to the policy term only, as here);
    tis_cap=None turns it off. The KL term is off unless kl_coef > 0 (Olmo 3:
    off). Returns the loss (B, T), 0 where masked, and detached scalar stats,
    means over masked tokens: clip_frac_low, clip_frac_high (tokens whose
    gradient the clip removed, on each side), approx_kl (k3 of KL(old || new)),
    ratio_mean; with engine_logprobs, is_ratio_mean and is_ratio_max (before
    the cap) and is_capped_frac; with ref_logprobs, kl_ref.
    """
    mask = mask.bool()
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # (B, 1) or (B, T)
    log_ratio = (logprobs - old_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = log_ratio.exp()
    pg_loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high))
    stats = _clip_stats(ratio.detach(), log_ratio.detach(), adv.detach(), mask, eps_low, eps_high)

    if tis_cap is not None:
        if engine_logprobs is None:
            raise ValueError("tis_cap is set but engine_logprobs is None")
        is_ratio = (old_logprobs - engine_logprobs).detach().clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO).exp()
        pg_loss = pg_loss * is_ratio.clamp(max=tis_cap)
        stats["is_capped_frac"] = masked_mean((is_ratio > tis_cap).float(), mask)
    if engine_logprobs is not None:
        stats.update(_is_stats(old_logprobs.detach(), engine_logprobs.detach(), mask))

    loss = pg_loss
    if kl_coef:
        if ref_logprobs is None:
            raise ValueError("kl_coef is set but ref_logprobs is None")
        kl = kl_k3(logprobs, ref_logprobs)
        loss = loss + kl_coef * kl
        stats["kl_ref"] = masked_mean(kl.detach(), mask)
    elif ref_logprobs is not None:
        stats["kl_ref"] = masked_mean(kl_k3(logprobs.detach(), ref_logprobs), mask)
    return torch.where(mask, loss, torch.zeros_like(loss)), stats


def _clip_stats(
    ratio: Tensor, log_ratio: Tensor, adv: Tensor, mask: Tensor, eps_low: float, eps_high: float
) -> dict[str, Tensor]:
    """Fractions of tokens clipped on each side, approx KL(old || new) and the mean ratio."""
    adv = adv.expand_as(ratio)
    clipped_high = (adv > 0) & (ratio > 1.0 + eps_high)
    clipped_low = (adv < 0) & (ratio < 1.0 - eps_low)
    return {
        "clip_frac_low": masked_mean(clipped_low.float(), mask),
        "clip_frac_high": masked_mean(clipped_high.float(), mask),
        "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),  # k3 with samples from old
        "ratio_mean": masked_mean(ratio, mask),
    }


def _is_stats(old_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Mean and max over masked tokens of exp(old - engine), before any cap."""
    is_ratio = (old_logprobs - engine_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO).exp()
    # ratios are positive, so 0 on masked tokens never wins the max; an empty mask gives 0
    masked = torch.where(mask, is_ratio, torch.zeros_like(is_ratio))
    masked_max = masked.amax() if masked.numel() else masked.new_zeros(())
    return {"is_ratio_mean": masked_mean(is_ratio, mask), "is_ratio_max": masked_max}
