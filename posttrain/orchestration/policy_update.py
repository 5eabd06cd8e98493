"""The RLVR step's learner-side phases on Ray: log-probs and the policy update (the weight sync: weight_sync.py)."""

from __future__ import annotations

import ray

from posttrain.config import RLVRConfig
from posttrain.data.rlvr import UpdatePlan
from posttrain.objectives.rlvr import policy_loss_fn, response_logprobs
from posttrain.orchestration.learner_group import LearnerGroup


def fill_logprobs(plan: UpdatePlan, learners: LearnerGroup, reference, *, old: bool, temperature: float,
                  chunk: int) -> None:
    """The log-prob phase: old log-probs from the learner (several minibatches), reference log-probs (KL term)."""
    per_rank = [[b for minibatch in plan.batches for b in minibatch[r]] for r in range(learners.num_workers)]
    if old:
        outputs = learners.call_per_rank("infer", [(batches,) for batches in per_rank], fn=response_logprobs,
                                         temperature=temperature, chunk=chunk)
        for batches, logps in zip(per_rank, outputs):
            for batch, values in zip(batches, logps):
                batch.old_logprobs = values
    if reference is not None:
        flat = [b for batches in per_rank for b in batches]
        for batch, values in zip(flat, ray.get(reference.actor.logprobs.remote(flat, temperature, chunk))):
            batch.ref_logprobs = values


def update_policy(learners: LearnerGroup, plan: UpdatePlan, config: RLVRConfig) -> list[dict]:
    """The update phase: one optimizer step per minibatch, every rank its micro-batches; stats per rank and step."""
    grpo = config.grpo
    results = []
    for batches, normalizer in zip(plan.batches, plan.normalizers):
        results += learners.call_per_rank(
            "train_step", [(rank_batches,) for rank_batches in batches], loss_fn=policy_loss_fn, normalizer=normalizer,
            world_size=learners.num_workers, loss="grpo_clip", aggregation=grpo.loss_aggregation, eps_low=grpo.eps_low,
            eps_high=grpo.eps_high, tis_cap=grpo.truncated_is_cap, kl_coef=grpo.kl_coef,
            temperature=config.rollout.temperature, chunk=config.model.loss_chunk_tokens)
    return results

