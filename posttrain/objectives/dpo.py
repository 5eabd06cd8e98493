"""The DPO forward pass: a `PreferenceBatch` through the model to summed log-probs, losses and stats.

These are the functions the learner runs on each rank (`Learner.train_step`,
`Learner.evaluate` and `Learner.infer` call `fn(model, batch, **kwargs)`);
the maths is `posttrain.algorithms.losses`. Chosen and rejected rows go
through the model as one (2B, T) batch, as TRL's `concatenated_forward` does:
one forward and one backward per micro-batch instead of two.

Rows whose `example_index` is -1 are fillers that keep an idle rank in step
with the others' collectives; they carry no loss and no stats.

Stats are sums over the micro-batch's pairs (the learner sums them over
micro-batches, the driver over ranks and divides by `pairs`), so logged
values are exact means whatever the micro-batching:

    pairs, loss, reward_chosen, reward_rejected, reward_margin, reward_acc
    (implicit reward of chosen above rejected), logps_chosen, logps_rejected
    (summed over response tokens), logps_chosen_tok, logps_rejected_tok (per
    response token), pref_acc (the policy's per-token log-prob of chosen above
    rejected: the model's own preference, defined with or without a
    reference).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from posttrain.algorithms.losses import PREFERENCE_LOSSES, chosen_nll
from posttrain.data.batches import PreferenceBatch
from posttrain.data.preference import concatenated
from posttrain.objectives.forward import CHUNK_TOKENS, label_logprobs


def needs_reference(loss: str) -> bool:
    """Does the registered loss use reference log-probs? (Reference-free losses accept None for them.)"""
    one, zero = torch.ones(1), torch.zeros(1)
    try:
        PREFERENCE_LOSSES.get(loss)(zero, zero, None, None, one, one, beta=1.0)
    except ValueError:
        return True
    return False


def policy_logps(model, batch: PreferenceBatch, pad_id: int, chunk: int = CHUNK_TOKENS) -> tuple[Tensor, Tensor]:
    """Summed response log-probs under `model`: (chosen (B,), rejected (B,)) float32."""
    inputs = concatenated(batch, pad_id)
    labels = inputs.pop("labels")
    logps, _, _ = label_logprobs(model, inputs, labels, chunk=chunk)
    sums = logps.sum(dim=-1)  # (2B,)
    n = batch.chosen_input_ids.shape[0]
    return sums[:n], sums[n:]


def _valid(batch: PreferenceBatch) -> Tensor:
    """(B,) bool: real pairs (filler rows have example_index -1)."""
    if batch.example_index is None:
        return torch.ones(batch.chosen_input_ids.shape[0], dtype=torch.bool, device=batch.chosen_input_ids.device)
    return batch.example_index >= 0


def preference_stats(
    chosen: Tensor, rejected: Tensor, batch: PreferenceBatch, rewards: Optional[tuple[Tensor, Tensor]] = None
) -> dict[str, float]:
    """Sums over the real pairs of a micro-batch; see the module docstring."""
    valid = _valid(batch)
    chosen, rejected = chosen.detach()[valid], rejected.detach()[valid]
    per_tok_c = chosen / batch.chosen_lengths[valid].clamp(min=1)
    per_tok_r = rejected / batch.rejected_lengths[valid].clamp(min=1)
    stats = {
        "pairs": float(valid.sum()),
        "logps_chosen": float(chosen.sum()),
        "logps_rejected": float(rejected.sum()),
        "logps_chosen_tok": float(per_tok_c.sum()),
        "logps_rejected_tok": float(per_tok_r.sum()),
        "pref_acc": float((per_tok_c > per_tok_r).sum()),
    }
    if rewards is not None:
        reward_c, reward_r = rewards[0].detach()[valid], rewards[1].detach()[valid]
        stats.update(
            reward_chosen=float(reward_c.sum()),
            reward_rejected=float(reward_r.sum()),
            reward_margin=float((reward_c - reward_r).sum()),
            reward_acc=float((reward_c > reward_r).sum()),
        )
    return stats


def dpo_loss_fn(
    model,
    batch: PreferenceBatch,
    *,
    loss: str,
    beta: float,
    gamma: float,
    label_smoothing: float,
    pad_id: int,
    pairs_in_step: int,
    world_size: int = 1,
    nll_weight: float = 0.0,
    chunk: int = CHUNK_TOKENS,
) -> tuple[Tensor, dict[str, float]]:
    """(sum of the micro-batch's pair losses x world_size / pairs in the whole step, summed stats).

    The backends average gradients over ranks (divide by world_size), so
    multiplying back by it and dividing by the step's pair count (all
    micro-batches, all ranks) makes the step's gradient that of the mean loss
    over its pairs, however they are split. `nll_weight` > 0 adds that times
    the chosen side's per-token NLL to each pair's loss (`chosen_nll`).
    """
    chosen, rejected = policy_logps(model, batch, pad_id, chunk)
    losses, reward_c, reward_r = PREFERENCE_LOSSES.get(loss)(
        chosen, rejected, batch.ref_chosen_logps, batch.ref_rejected_logps,
        batch.chosen_lengths, batch.rejected_lengths, beta=beta, gamma=gamma, label_smoothing=label_smoothing,
    )
    nll = chosen_nll(chosen, batch.chosen_lengths)
    if nll_weight:
        losses = losses + nll_weight * nll
    losses = torch.where(_valid(batch), losses, torch.zeros_like(losses))
    stats = preference_stats(chosen, rejected, batch, (reward_c, reward_r))
    stats["loss"] = float(losses.detach().sum())
    stats["chosen_nll"] = float(torch.where(_valid(batch), nll, torch.zeros_like(nll)).detach().sum())
    return losses.sum() * (world_size / max(pairs_in_step, 1)), stats


def eval_loss_fn(model, batch: PreferenceBatch, *, pad_id: int, **loss_kwargs) -> tuple[Tensor, dict[str, float]]:
    """Held-out statistics (no gradients are taken); implicit rewards when the loss can compute them."""
    if batch.has_reference or not needs_reference(loss_kwargs["loss"]):
        return dpo_loss_fn(model, batch, pad_id=pad_id, pairs_in_step=1, **loss_kwargs)
    chosen, rejected = policy_logps(model, batch, pad_id, loss_kwargs.get("chunk", CHUNK_TOKENS))
    return chosen.sum() * 0.0, preference_stats(chosen, rejected, batch)


def reference_fn(model, batch: PreferenceBatch, *, pad_id: int, chunk: int = CHUNK_TOKENS) -> dict[str, list]:
    """Reference log-probs of one batch for `posttrain.data.reference_cache.from_results`."""
    chosen, rejected = policy_logps(model, batch, pad_id, chunk)
    return {"index": batch.example_index.tolist(), "chosen": chosen.float().cpu().tolist(),
            "rejected": rejected.float().cpu().tolist()}


def means(totals: dict[str, float]) -> dict[str, float]:
    """Per-pair means of summed stats (`pairs` itself and the learner's grad_norm and lr pass through)."""
    pairs = max(totals.get("pairs", 0.0), 1.0)
    passthrough = ("pairs", "grad_norm", "lr")
    return {k: (v if k in passthrough else v / pairs) for k, v in totals.items()}
