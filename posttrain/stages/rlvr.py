"""RLVR: reinforcement learning with verifiable rewards, OlmoRL (a GRPO variant) on Ray.

Algorithm. Each step draws `grpo.prompts_per_step` prompts and samples
n = `grpo.samples_per_prompt` responses to each from the rollout engines at
temperature `rollout.temperature`; the prompt's verifier scores each
response r in [0, 1]. Within a group, A_i = r_i - mean(r), and the policy
minimises, over the step's response tokens,

    L = (1 / #tokens) sum_t  w_t * -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A)

with rho_t = pi(y_t) / pi_old(y_t) and w_t = min(pi_old(y_t) / pi_engine(y_t),
cap), the truncated importance weight between the learner and the engine
that sampled the token. Departures from GRPO as published (Shao et al.
2024), all Olmo 3's, and the keys that switch them:

- no KL term: `grpo.kl_coef` 0 (> 0 adds kl_coef * k3(pi, pi_ref) per token,
  against the starting checkpoint held by a reference actor);
- advantages not divided by the group std: `grpo.advantage` group_mean
  (group_mean_std: GRPO's);
- token-level averaging over the whole step (DAPO): `grpo.loss_aggregation`
  token (sequence: GRPO's per-response mean);
- clip-higher, eps_high > eps_low (DAPO): `grpo.eps_low` 0.2, `grpo.eps_high` 0.272;
- groups whose rewards are all equal (no gradient) are dropped:
  `grpo.filter_equal_groups`; with `grpo.active_sampling`, more prompts are
  drawn until the step has `prompts_per_step` informative groups, at most
  `grpo.max_active_sampling_rounds` refills;
- truncated importance sampling against the engine's log-probs:
  `grpo.truncated_is_cap` (None: w = 1);
- truncated responses: `grpo.overlong` filter (zero loss weight) or
  soft_penalty (DAPO's length penalty over the last `grpo.overlong_buffer`
  tokens, added to the reward);
- `grpo.format_reward`: a bonus added to the reward of a response in the
  variant's shape (the Think block, or none for Instruct), as open-instruct's
  format reward; off in Olmo 3's recipes;
- `grpo.minibatches` optimizer updates per step; with one, pi_old is the
  current policy detached (rho = 1, no extra forward pass); with more, a
  log-prob phase computes pi_old first;
- asynchronous rollouts: the engines generate up to `grpo.max_async_steps`
  steps ahead of the learner (0: on-policy), see posttrain/orchestration/rollout_queue.py. Weights
  reach the engines after every step (`rollout.weight_sync`: a broadcast
  from learner rank 0, shared memory from each rank to the engine beside it,
  or Ray's object store; posttrain/orchestration/weight_sync.py).
  An engine takes them after the requests it holds, or, with
  `rollout.inflight_updates`, between two of their decoding steps;
- colocation (`distributed.colocate`): engine i shares learner rank i's
  bundle (its GPU), and on-policy steps take turns: the engines sleep while
  the learners update, the learners' state is offloaded while the engines
  generate (posttrain/orchestration/colocation.py; phase `time/colocate`).

A step is six named, timed phases (`time/<phase>`): generate, score (waits
for the engines and the reward workers), advantages, logprobs, update, sync.
Reward workers: `verifiers.num_workers` (auto: one per
`verifiers.engines_per_worker` engines), each request scored by the least
loaded (posttrain/orchestration/scoring.py). A `judge` section serves an LLM
judge with vLLM on the cluster and hands its endpoint to `llm_judge`
(posttrain/orchestration/judge_server.py).
Held-out pass@1 per verifier is measured on the engines before training,
every `eval.every` steps and at the end. `output.save_every` steps, and on
Ctrl-C or SIGTERM (after the current step), a resumable checkpoint keeps
learner weights, optimizer, step and data position; `--resume` continues
(posttrain/stages/scaffold.py).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from posttrain.algorithms.advantages import select_groups
from posttrain.config import RLVRConfig
from posttrain.data.rlvr import PromptStream, informative_groups, load_prompts, plan_update, score_step, step_samples
from posttrain.eval.heldout import summarize
from posttrain.metrics import PhaseTimers, TrainingClock
from posttrain.orchestration.cluster import actor_path
from posttrain.orchestration.colocation import Colocation
from posttrain.orchestration.judge_server import start_judge
from posttrain.orchestration.policy_update import fill_logprobs, update_policy
from posttrain.orchestration.rollout_queue import RolloutQueue
from posttrain.orchestration.topology import EnginePool, RewardPool, placement, spawn_reference
from posttrain.orchestration.weight_sync import WEIGHT_SYNCS
from posttrain.stages import rlvr_metrics as M
from posttrain.stages.scaffold import StageRun


def run(config: RLVRConfig, resume: bool = False) -> Path:
    """Train with RLVR, export `output.dir/checkpoint`, return `output.dir`."""
    import rewards

    grpo, rollout = config.grpo, config.rollout
    with StageRun("rlvr", config, resume) as run:
        # ---- data: rows -> prompts (chat template, left-truncated); verifier names checked per row
        rewards.load_plugins(config.verifiers.modules)
        data = load_prompts(config, run.tokenizer, rewards.names())
        print(f"[rlvr] {len(data.prompts)} prompts ({data.truncated} left-truncated), {len(data.heldout)} held out; "
              f"{grpo.steps} steps of {grpo.prompts_per_step} x {grpo.samples_per_prompt}, "
              f"{grpo.minibatches} update(s) each, up to {grpo.max_async_steps} step(s) ahead")

        # ---- Ray: learner ranks, rollout engines, reward workers (and a reference policy with a KL term);
        # StageRun checked on entry that the cluster holds them all
        world = config.distributed.num_workers
        learners = run.start_learners(total_steps=grpo.steps * grpo.minibatches, accumulation=math.ceil(
            config.batch.sequences / (config.batch.micro_batch_size * world)))
        start_from = actor_path(config.model.path)  # engines and the reference may run on other nodes
        judge = start_judge(config.judge)  # None without a judge section; it starts while the engines load
        if judge is not None:
            run.own(judge)
        colocate = config.distributed.colocate  # engine i in learner rank i's bundle; they take turns
        engines = run.own(EnginePool(config, start_from, colocate_with=learners.placement_group if colocate else None))
        options = judge.hand_off(config.verifiers.options) if judge is not None else None  # waits until it serves
        scorers = run.own(RewardPool(config, options))
        reference = spawn_reference(config, start_from)
        if reference is not None:
            run.own(reference)
        engines.wait_ready()
        scorers.wait_ready()
        weights = run.own(WEIGHT_SYNCS.get(rollout.weight_sync)(learners, engines, config))
        weights.connect()
        start = run.restore(lambda state: check_same_prompts(state, data.fingerprint))
        if start:
            weights.settle(weights.push(start))
        turns = Colocation(learners, engines) if colocate else None
        startup_s = time.time() - run.started  # this process's start-up (elapsed() would add earlier runs')

        queue = RolloutQueue(
            engines, scorers, PromptStream(data.prompts, config.data.seed, run.state.get("data_position", 0)),
            prompts_per_step=grpo.prompts_per_step, n=grpo.samples_per_prompt, max_async_steps=grpo.max_async_steps,
            total_steps=grpo.steps, seed=config.seed, active_sampling=grpo.active_sampling,
            max_rounds=grpo.max_active_sampling_rounds, informative=informative_groups(config),
            sampling=dict(temperature=rollout.temperature, top_p=rollout.top_p, max_tokens=rollout.max_response_length))
        clock = TrainingClock(run.state.get("train_s", 0.0))
        evals: dict[int, dict] = {}

        def evaluate(at: int) -> None:
            """Held-out pass@1 on the engines; its time is kept off the training clock."""
            with clock.excluding() as span:
                if turns is not None:
                    turns.generating()
                evals[at] = summarize(queue.evaluate(data.heldout, dict(
                    temperature=config.eval.temperature, top_p=1.0, max_tokens=rollout.max_response_length)))
            run.log(at, {**evals[at], "time/eval": span["seconds"]})
            print(f"[rlvr] step {at}: held-out pass@1 {evals[at]['eval/pass@1']:.3f}")

        def trainer_state(at: int) -> dict:
            return {"data_position": queue.position(), "data_fingerprint": data.fingerprint, "train_s": clock.seconds()}

        if data.heldout and not start:
            evaluate(0)
        clock.start()
        pending_sync, last, timers = None, {}, PhaseTimers()
        for step in run.steps(start, grpo.steps, trainer_state):
            step_start = time.perf_counter()
            colocated = {}
            if turns is not None:
                with timers("colocate"):
                    colocated.update(turns.generating())
            rollouts = queue.collect(step, timers)  # phases generate and score
            with timers("advantages"):
                scored = score_step(rollouts.groups, config)
                kept = select_groups(scored.equal, grpo.prompts_per_step, grpo.filter_equal_groups)
                samples = step_samples(rollouts.groups, scored, keep=kept, overlong=grpo.overlong)
                plan = plan_update(samples, minibatches=grpo.minibatches,
                                   micro_batch_size=config.batch.micro_batch_size, world_size=world,
                                   aggregation=grpo.loss_aggregation, pad_id=run.pad_id,
                                   pack_length=config.batch.pack_length,
                                   seed=config.seed * 100_003 + step) if samples else None
            if turns is not None and plan is not None:
                with timers("colocate"):
                    colocated.update(turns.training())
            with timers("logprobs"):
                if plan is not None:
                    fill_logprobs(plan, learners, reference, old=grpo.minibatches > 1, temperature=rollout.temperature,
                                  chunk=config.model.loss_chunk_tokens)
            with timers("update"):
                results = update_policy(learners, plan, config) if plan is not None else []
            with timers("sync"):
                # the previous step's round (async: done while this step generated)
                sync_seconds = weights.settle(pending_sync, current=step + 1) if pending_sync is not None else []
                if turns is not None and results:
                    colocated.update(turns.receiving())
                pending_sync = weights.push(step + 1) if results else None
                if grpo.max_async_steps == 0 and pending_sync is not None:
                    sync_seconds, pending_sync = weights.settle(pending_sync, current=step + 1), None
            last = {**M.step_metrics(step, rollouts, kept.tolist(), results, timers.pop(), plan, sync_seconds,
                                     step_seconds=time.perf_counter() - step_start, num_engines=len(engines),
                                     num_scorers=len(scorers), style=config.variant),
                    **colocated, "engine_restarts": engines.restarts, "epoch": queue.stream.epoch,
                    "train_wall_s": clock.seconds()}
            if (step + 1) % config.logging.every == 0 or step + 1 == grpo.steps:
                run.log(step + 1, last)
            run.show(reward=f"{last['reward/mean']:.3f}", kept=f"{1 - last['groups/filtered_frac']:.2f}")
            if data.heldout and config.eval.every and (step + 1) % config.eval.every == 0 and step + 1 < grpo.steps:
                evaluate(step + 1)
        if pending_sync is not None:
            weights.settle(pending_sync, current=grpo.steps)
        queue.drain()
        if data.heldout:
            evaluate(grpo.steps)

        # ---- export, manifest, plots
        final = {**last, "steps": grpo.steps, **{f"before/{k}": v for k, v in evals.get(0, {}).items()},
                 **evals.get(grpo.steps, {})}
        extra = {"startup_s": startup_s, "engine_restarts": engines.restarts, "weight_sync_repairs": weights.repairs,
                 "evals": {str(k): v for k, v in evals.items()},
                 "placement": placement(learner=learners.placement_group, engine=engines.group, reward=scorers.group,
                                        reference=reference.group if reference is not None else None,
                                        judge=judge.group if judge is not None else None)}
        wall = run.finish(final, data={**data.report(), "unscored": dict(queue.unscored_total)}, extra=extra,
                          plots=M.PLOT_GROUPS)
    before, after = evals.get(0, {}).get("eval/pass@1"), evals.get(grpo.steps, {}).get("eval/pass@1")
    print(f"[rlvr] done in {wall:.1f}s (start-up {startup_s:.1f}s): held-out pass@1 {before} -> {after}; "
          f"checkpoint {run.run_dir / 'checkpoint'}")
    return run.run_dir


def check_same_prompts(state: dict, fingerprint: str) -> None:
    if state.get("data_fingerprint") != fingerprint:
        raise RuntimeError("--resume: the training prompts differ from the checkpoint's")
