"""The numbers an RLVR step logs, from its groups, its learner stats and its timers.

Keys (metrics.jsonl, TensorBoard):

- rollouts: `reward/mean`, `reward/std` and per verifier `reward/mean/<v>`,
  `reward/std/<v>`; `pass_rate` and `pass_rate/<v>` (share of responses with
  score 1); `groups/filtered_frac` (groups dropped because every reward was
  equal), `groups/drawn`, `groups/refills` (active sampling); `response/length`
  (mean), `response/length_max`, `response/truncated_frac`,
  `response/format_rate` (share in the variant's shape); `staleness/mean`,
  `staleness/max` (learner steps between the generating weights and the
  update, from a response's first token), `staleness/token_mean` (per token,
  from the weights that made it: lower than `staleness/mean` when in-flight
  updates changed them mid-response), `inflight/switched_frac` (share of
  responses whose weights changed mid-way); `verifier/unscored` (crashes,
  timeouts, None: scored 0).
- update (token-weighted over the step): `loss`, `entropy`, `clip_frac`
  (`clip_frac_low` + `clip_frac_high`), `approx_kl` (old vs updated policy,
  non-zero only with several minibatches), `is_ratio/mean`, `is_ratio/std`,
  `is_ratio/outside_frac` (engine vs learner probabilities, outside [0.5, 2]),
  `is_ratio/capped_frac`, `engine_kl` (k3 KL(engine || learner)), `kl_ref`
  (with a KL term), `grad_norm`, `lr`.
- speed: `tokens_per_s/generate` (response tokens per second of engine time,
  per engine), `tokens_per_s/train` (real tokens per second of the update
  phase), `weight_sync/load_s` (engines' `load_weights` seconds, slowest
  engine), `idle/learner` and `idle/engine` (share of the step's wall time
  with no work on the learner, or per engine), and `time/<phase>`.
- scoring (posttrain/orchestration/scoring.py): `scorer/seconds` (reward
  workers' scoring time for the step's requests, summed), `scorer/utilization`
  (that over reward workers x step wall time: near 1, scoring is what the
  step waits for; add reward workers), `scorer/queue_wait_s` and
  `scorer/queue_wait_max_s` (mean and largest seconds a request's completions
  waited between their engine finishing and a reward worker starting on
  them); `time/score` is what the learner waited for scores after generation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

from posttrain.data.chat import is_well_formed
from posttrain.data.rlvr import Group
from posttrain.eval.heldout import PASS, score_fractions


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def rollout_metrics(groups: Sequence[Group], kept: Sequence[bool], step: int, drawn: int, refills: int,
                    unscored: int, style: str | None = None) -> dict[str, float]:
    """Rewards, pass rates, filtering, lengths, shape (with `style`) and staleness of a step's groups (all of them,
    kept or not)."""
    by_verifier: dict[str, list[float]] = defaultdict(list)
    passes: dict[str, list[bool]] = defaultdict(list)  # every verifier of the row passed
    lengths, truncated, staleness, token_staleness, switched = [], [], [], [0, 0], []
    for group in groups:
        by_verifier[group.verifier_name].extend(group.rewards)
        passes[group.verifier_name].extend(f >= PASS for f in score_fractions(group))
        lengths.extend(len(r) for r in group.response_ids)
        truncated.extend(group.truncated)
    for group, keep in zip(groups, kept):
        if keep:
            staleness.extend([step - group.version] * len(group.rewards))
            for sample in range(len(group.response_ids)):
                segments = group.token_versions(sample)
                token_staleness[0] += sum(count * (step - version) for count, version in segments)
                token_staleness[1] += sum(count for count, _ in segments)
                switched.append(len(segments) > 1)
    rewards = [r for values in by_verifier.values() for r in values]
    out = dict(zip(("reward/mean", "reward/std"), _mean_std(rewards)))
    out["pass_rate"] = sum(sum(p) for p in passes.values()) / max(len(rewards), 1)
    for name, values in sorted(by_verifier.items()):
        out[f"reward/mean/{name}"], out[f"reward/std/{name}"] = _mean_std(values)
        out[f"pass_rate/{name}"] = sum(passes[name]) / len(values)
    out.update({
        "groups/filtered_frac": 1.0 - sum(kept) / max(len(groups), 1),
        "groups/drawn": drawn,
        "groups/refills": refills,
        "response/length": sum(lengths) / max(len(lengths), 1),
        "response/length_max": max(lengths, default=0),
        "response/truncated_frac": sum(truncated) / max(len(truncated), 1),
        "staleness/mean": sum(staleness) / len(staleness) if staleness else 0.0,
        "staleness/max": max(staleness, default=0),
        "staleness/token_mean": token_staleness[0] / token_staleness[1] if token_staleness[1] else 0.0,
        "inflight/switched_frac": sum(switched) / len(switched) if switched else 0.0,
        "verifier/unscored": unscored,
    })
    if style is not None:
        shapes = [is_well_formed(text, style) for group in groups for text in group.texts]
        out["response/format_rate"] = sum(shapes) / max(len(shapes), 1)
    return out


def update_metrics(results: Sequence[dict]) -> dict[str, float]:
    """Token-weighted means of the learner's stat sums (every rank, every minibatch)."""
    if not results:
        return {}
    total: dict[str, float] = defaultdict(float)
    for result in results:
        for key, value in result.items():
            total[key] += value
    tokens = max(total["tokens"], 1.0)
    mean = {key[:-4]: value / tokens for key, value in total.items() if key.endswith("_sum")}
    is_mean = mean.get("is_ratio", float("nan"))
    out = {
        "loss": mean.get("loss", float("nan")),
        "entropy": mean.get("entropy", float("nan")),
        "clip_frac": mean.get("clip_frac_low", 0.0) + mean.get("clip_frac_high", 0.0),
        "clip_frac_low": mean.get("clip_frac_low", 0.0),
        "clip_frac_high": mean.get("clip_frac_high", 0.0),
        "approx_kl": mean.get("approx_kl", 0.0),
        "is_ratio/mean": is_mean,
        "is_ratio/std": math.sqrt(max(mean.get("is_ratio_sq", 0.0) - is_mean**2, 0.0)),
        "is_ratio/outside_frac": mean.get("is_outside", 0.0),
        "is_ratio/capped_frac": mean.get("is_capped_frac", 0.0),
        "engine_kl": mean.get("engine_kl", 0.0),
        "grad_norm": results[-1].get("grad_norm", float("nan")),
        "lr": results[-1].get("lr", float("nan")),
        "train_tokens": total["tokens"],
    }
    if "kl_ref" in mean:
        out["kl_ref"] = mean["kl_ref"]
    return out


def speed_metrics(times: dict[str, float], *, step_seconds: float, engine_seconds: float, num_engines: int,
                  generated_tokens: int, trained_tokens: int, sync_seconds: Sequence[float]) -> dict[str, float]:
    """Throughput, weight-sync seconds and idle fractions of one step."""
    learner_busy = times.get("time/logprobs", 0.0) + times.get("time/update", 0.0)
    step_seconds = max(step_seconds, 1e-9)
    per_engine = engine_seconds / max(num_engines, 1)
    return {
        "tokens_per_s/generate": generated_tokens / per_engine if per_engine > 0 else 0.0,
        "tokens_per_s/train": trained_tokens / times["time/update"] if times.get("time/update") else 0.0,
        "weight_sync/load_s": max(sync_seconds, default=float("nan")),
        "idle/learner": max(0.0, 1.0 - learner_busy / step_seconds),
        "idle/engine": max(0.0, 1.0 - per_engine / step_seconds),
        "time/step": step_seconds,
    }


def scoring_metrics(score_seconds: float, waits: Sequence[float], *, num_scorers: int,
                    step_seconds: float) -> dict[str, float]:
    """How busy the reward workers were and how long completions queued for them, over one step.

    >>> scoring_metrics(3.0, [0.5, 1.5], num_scorers=2, step_seconds=3.0)
    {'scorer/seconds': 3.0, 'scorer/utilization': 0.5, 'scorer/queue_wait_s': 1.0, 'scorer/queue_wait_max_s': 1.5}
    """
    return {
        "scorer/seconds": score_seconds,
        "scorer/utilization": score_seconds / (max(num_scorers, 1) * max(step_seconds, 1e-9)),
        "scorer/queue_wait_s": sum(waits) / len(waits) if waits else 0.0,
        "scorer/queue_wait_max_s": max(waits, default=0.0),
    }


def step_metrics(step: int, rollouts, kept: Sequence[bool], results: Sequence[dict], times: dict[str, float], plan,
                 sync_seconds: Sequence[float], *, step_seconds: float, num_engines: int, num_scorers: int = 1,
                 style: str | None = None) -> dict[str, float]:
    """Everything a step logs: rollouts (`StepRollouts`), learner stats, phase times, speed."""
    return {
        **rollout_metrics(rollouts.groups, kept, step, rollouts.drawn, rollouts.refills, sum(rollouts.unscored.values()),
                          style),
        **update_metrics(results),
        **times,
        **speed_metrics(times, step_seconds=step_seconds, engine_seconds=rollouts.engine_seconds,
                        num_engines=num_engines, generated_tokens=rollouts.generated_tokens,
                        trained_tokens=plan.real_tokens if plan is not None else 0, sync_seconds=sync_seconds),
        **scoring_metrics(rollouts.score_seconds, rollouts.score_waits, num_scorers=num_scorers,
                          step_seconds=step_seconds),
    }


PLOT_GROUPS = {
    "reward": ("reward/mean", "pass_rate", "response/format_rate"),
    "eval": ("eval/pass@1",),
    "response_length": ("response/length",),
    "filtered": ("groups/filtered_frac", "response/truncated_frac"),
    "entropy": ("entropy",),
    "kl": ("approx_kl", "engine_kl", "kl_ref"),
    "clip": ("clip_frac_low", "clip_frac_high"),
    "is_ratio": ("is_ratio/mean", "is_ratio/std", "is_ratio/outside_frac"),
    "staleness": ("staleness/mean", "staleness/max", "staleness/token_mean"),
    "throughput": ("tokens_per_s/generate", "tokens_per_s/train"),
    "idle": ("idle/learner", "idle/engine"),
    "time": ("time/generate", "time/score", "time/advantages", "time/logprobs", "time/update", "time/sync",
             "time/colocate", "time/step"),
    "colocate": ("colocate/engine_sleep_gib", "colocate/learner_offload_gib"),
    "weight_sync": ("weight_sync/load_s",),
    "scoring": ("scorer/utilization", "scorer/queue_wait_s", "scorer/queue_wait_max_s"),
}
