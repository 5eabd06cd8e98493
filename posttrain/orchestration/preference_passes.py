"""Forward-only passes of the DPO learner ranks over many pairs: reference log-probs and held-out statistics.

Pairs go out in calls of `FORWARD_CALL_BATCHES` batches per rank, so no call
ships the whole dataset; every rank gets as many batches per call (filler
pairs pad the last), which ZeRO-3's collective forwards need. Forward-only
batches are `REFERENCE_BATCH_FACTOR` times the training micro-batch: they
hold no activations for a backward pass.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.config import DPOConfig
from posttrain.data import preference as P
from posttrain.data import reference_cache as R
from posttrain.metrics import progress
from posttrain.objectives.dpo import eval_loss_fn, means, reference_fn
from posttrain.orchestration.learner_group import LearnerGroup

REFERENCE_BATCH_FACTOR = 2
FORWARD_CALL_BATCHES = 64  # batches per rank in one Ray call


def forward_passes(learners: LearnerGroup, config: DPOConfig, pairs: list, pad_id: int, method: str, desc: str,
                   ref=None, /, **kwargs) -> list:
    """`learner.<method>(batches, ...)` over all pairs in order, spread over the ranks; one result per rank and call."""
    world, size = config.distributed.num_workers, config.batch.micro_batch_size * REFERENCE_BATCH_FACTOR
    chunks = [list(range(s, min(s + size, len(pairs)))) for s in range(0, len(pairs), size)]
    per_call = FORWARD_CALL_BATCHES * world
    bar = progress(len(chunks), desc=desc, unit="batch", enabled=config.logging.progress)
    results = []
    for start in range(0, len(chunks), per_call):
        per_rank = [chunks[start:start + per_call][r::world] for r in range(world)]
        count = max(len(part) for part in per_rank)
        batches = [[P.collate(pairs, c, pad_id, ref) for c in part]
                   + [P.filler(pairs, pad_id, ref)] * (count - len(part)) for part in per_rank]
        results += learners.call_per_rank(method, [(b,) for b in batches], **kwargs)
        bar.update(min(per_call, len(chunks) - start))
    bar.close()
    return results


def reference_logps(learners: LearnerGroup, config: DPOConfig, pairs: list, split: str, root: Path,
                    pad_id: int) -> tuple[R.ReferenceLogps, bool]:
    """(reference log-probs of `pairs`, cache hit?): from the cache, else computed by the learners' current weights
    (before the first update they are the reference)."""
    key = R.cache_key(config.model.path, P.fingerprint(pairs), config.data.max_length, split=split)

    def compute() -> R.ReferenceLogps:
        results = forward_passes(learners, config, pairs, pad_id, "infer", f"reference log-probs ({split})",
                                 fn=reference_fn, pad_id=pad_id, chunk=config.model.loss_chunk_tokens)
        return R.from_results([r for rank_call in results for r in rank_call], pairs)

    return R.cached_or_compute(root, key, compute)


def preference_before(ref: R.ReferenceLogps) -> dict:
    """Held-out preference accuracy of the starting policy (its log-probs are the reference's)."""
    per_tok_c = ref.chosen / ref.chosen_lengths.clamp(min=1)
    per_tok_r = ref.rejected / ref.rejected_lengths.clamp(min=1)
    return {"heldout_pref_acc_before": float((per_tok_c > per_tok_r).float().mean()),
            "heldout_logps_chosen_tok_before": float(per_tok_c.mean()),
            "heldout_logps_rejected_tok_before": float(per_tok_r.mean())}


def preference_stats(learners: LearnerGroup, config: DPOConfig, pairs: list, ref, pad_id: int,
                     loss_kwargs: dict) -> dict:
    """Per-pair means of the preference stats of `pairs` under the current weights (all ranks share the work)."""
    stats = forward_passes(learners, config, pairs, pad_id, "evaluate", "held-out evaluation",
                           ref.pair() if ref is not None else None, loss_fn=eval_loss_fn, **loss_kwargs)
    totals: dict[str, float] = {}
    for rank_stats in stats:
        for key, value in rank_stats.items():
            totals[key] = totals.get(key, 0.0) + value
    return means(totals)
