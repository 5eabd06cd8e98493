"""What the RLVR learner ranks run: response log-probs and the policy loss of one micro-batch.

These functions travel to the learner actors (`Learner.train_step` /
`Learner.infer` call them with the model and a `RolloutBatch`); the maths is
the registered pure functions of `posttrain.algorithms`.

Alignment: the batch is `prompt (left-padded, Tp) + response (right-padded,
Tr)` per row, so the logits at positions Tp-1 .. Tp+Tr-2 predict the Tr
response tokens; a packed batch runs every sample's real tokens as one row
with per-sample positions (`RolloutBatch.packed_sequences`), and the loss
sees the same (N, Tr) log-probs either way. Only response positions go
through the output layer, a chunk at a time (`posttrain.objectives.forward`).
Logits are divided by the sampling temperature first, so
the learner's log-probs are those of the distribution the engine sampled from
(posttrain/rollout/base.py), and the engine/learner importance ratio compares
like with like.

Stats come back as sums over the micro-batch's loss tokens (`*_sum`, with
`tokens`), which `Learner.train_step` adds up across micro-batches; the
driver divides by the token total for token-weighted means.
"""

from __future__ import annotations

import torch

from posttrain.algorithms.losses import POLICY_LOSSES, kl_k3
from posttrain.algorithms.masked import AGGREGATIONS, masked_sum
from posttrain.data.batches import RolloutBatch
from posttrain.objectives.forward import CHUNK_TOKENS, label_logprobs

IS_BAND = (0.5, 2.0)  # importance ratios outside this band are counted (`is_outside_frac`)


def response_token_logprobs(model, batch: RolloutBatch, *, temperature: float, chunk: int = CHUNK_TOKENS,
                            entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens under softmax(logits / temperature): ((N, Tr) float32, 0 on padding;
    entropy (N, Tr) detached or None).

    A padded batch runs as N rows of prompt + response; a packed one
    (`batch.packed`) as one row of every sample's real tokens, its values
    brought back to (N, Tr). The output layer runs on response positions
    only, `chunk` at a time. Temperature 0 (greedy) scores the untempered logits.
    """
    temperature = temperature if temperature > 0 else 1.0
    if not batch.packed:
        input_ids, attention_mask, position_ids = batch.sequences()
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        logps, _, ent = label_logprobs(model, inputs, batch.response_labels(), temperature=temperature, chunk=chunk,
                                       entropy=entropy)
        tp = batch.prompt_ids.shape[1]
        return logps[:, tp:], (ent[:, tp:] if ent is not None else None)
    input_ids, position_ids, labels, index = batch.packed_sequences()
    logps, _, ent = label_logprobs(model, {"input_ids": input_ids, "position_ids": position_ids}, labels,
                                   temperature=temperature, chunk=chunk, entropy=entropy)
    return _unpack(logps[0], index), (_unpack(ent[0], index) if ent is not None else None)


def _unpack(row: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Values of a packed row (L,) at `index` (N, Tr), 0 where index is -1."""
    return torch.where(index >= 0, row[index.clamp(min=0)], torch.zeros((), dtype=row.dtype, device=row.device))


def response_logprobs(model, batch: RolloutBatch, *, temperature: float = 1.0, chunk: int = CHUNK_TOKENS
                      ) -> torch.Tensor:
    """Log-probs of the response tokens under the model: (N, Tr) float32 on the CPU, 0 on padding.

    The log-prob phase: the learner's log-probs before a step's updates (old
    log-probs, when a step has several minibatches) or a reference policy's.
    """
    logps, _ = response_token_logprobs(model, batch, temperature=temperature, chunk=chunk)
    return logps.float().cpu()


def policy_loss_fn(model, batch: RolloutBatch, *, normalizer: float, world_size: int, loss: str, aggregation: str,
                   eps_low: float, eps_high: float, tis_cap: float | None, kl_coef: float,
                   temperature: float, chunk: int = CHUNK_TOKENS) -> tuple[torch.Tensor, dict[str, float]]:
    """The micro-batch's share of the step's policy loss, and its stats as sums.

    Old log-probs are `batch.old_logprobs` when the log-prob phase filled them
    (several minibatches per step); otherwise the current log-probs, detached
    (one minibatch: the weights have not moved since the samples were
    scored, so the ratio is exactly 1 and its gradient is the policy
    gradient). The aggregation divides by `normalizer`, the minibatch's count
    over all ranks; ranks' gradients are averaged by the backend, hence the
    factor `world_size`.
    """
    logps, entropy = response_token_logprobs(model, batch, temperature=temperature, chunk=chunk, entropy=True)
    mask = batch.response_mask
    old = batch.old_logprobs if batch.old_logprobs is not None else logps.detach()
    per_token, stats = POLICY_LOSSES.get(loss)(
        logps, old, batch.advantages, mask > 0, eps_low=eps_low, eps_high=eps_high,
        engine_logprobs=batch.engine_logprobs, tis_cap=tis_cap, ref_logprobs=batch.ref_logprobs, kl_coef=kl_coef,
    )
    value = AGGREGATIONS.get(aggregation)(per_token, mask, normalizer=max(normalizer, 1.0)) * world_size
    with torch.no_grad():
        out = _token_sums(stats, mask)
        out.update(_entropy_and_ratio_sums(entropy, old, batch.engine_logprobs, mask))
        out["loss_sum"] = float(value.detach()) / world_size * max(normalizer, 1.0)
    return value, out


def _token_sums(stats: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, float]:
    """Per-token means of the loss's stats, turned back into sums over this micro-batch's tokens."""
    tokens = float((mask > 0).sum())
    keep = ("clip_frac_low", "clip_frac_high", "approx_kl", "ratio_mean", "is_capped_frac", "kl_ref")
    return {f"{k}_sum": float(stats[k]) * tokens for k in keep if k in stats} | {"tokens": tokens}


def _entropy_and_ratio_sums(entropy: torch.Tensor, learner: torch.Tensor, engine: torch.Tensor,
                            mask: torch.Tensor) -> dict[str, float]:
    """Sums over loss tokens of: entropy, engine/learner importance ratio and its square, ratios outside
    `IS_BAND`, and k3 KL(engine || learner)."""
    weight = (mask > 0).float()
    log_ratio = (learner - engine).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    outside = ((ratio < IS_BAND[0]) | (ratio > IS_BAND[1])).float()
    return {
        "entropy_sum": float(masked_sum(entropy, weight)),
        "is_ratio_sum": float(masked_sum(ratio, weight)),
        "is_ratio_sq_sum": float(masked_sum(ratio * ratio, weight)),
        "is_outside_sum": float(masked_sum(outside, weight)),
        "engine_kl_sum": float(masked_sum(kl_k3(engine, learner), weight)),  # samples come from the engine
    }
