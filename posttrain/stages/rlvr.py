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
  steps ahead of the learner (0: on-policy), see rlvr_rollouts.py. Weights
  reach the engines after every step (`load_weights`; in-flight updates in
  the middle of a generation are not done: an engine finishes its queued
  requests with the weights it had).

A step is six named, timed phases (`time/<phase>`): generate, score (waits
for the engines and the reward workers), advantages, logprobs, update, sync.
Held-out pass@1 per verifier is measured on the engines before training,
every `eval.every` steps and at the end. `output.save_every` steps, and on
Ctrl-C or SIGTERM (after the current step), a resumable checkpoint keeps
learner weights, optimizer, step and data position; `--resume` continues.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import time
from pathlib import Path

import ray
import torch
import yaml

from posttrain.checkpoints import build_manifest, restore_learners, start_run
from posttrain.config import RLVRConfig, config_hash, to_dict
from posttrain.data.mixing import mix_section
from posttrain.data.schemas import rlvr_row_validator
from posttrain.learner import LearnerSpec
from posttrain.metrics import MetricsLogger, PhaseTimers, plot_curves, progress
from posttrain.orchestration.cluster import init_ray
from posttrain.orchestration.learner_group import LearnerGroup
from posttrain.stages import rlvr_metrics as M
from posttrain.stages.rlvr_data import PromptStream, encode_prompts, plan_update, score_groups, step_samples
from posttrain.stages.rlvr_eval import heldout_prompts, summarize
from posttrain.stages.rlvr_forward import policy_loss_fn, response_logprobs
from posttrain.stages.rlvr_rollouts import RolloutQueue
from posttrain.stages.rlvr_topology import EnginePool, RewardPool, check_resources, placement, spawn_reference
from posttrain.stages.sft import export, save_resumable


def run(config: RLVRConfig, resume: bool = False) -> Path:
    """Train with RLVR, export `output.dir/checkpoint`, return `output.dir`."""
    import rewards
    from transformers import AutoTokenizer

    started = time.time()
    grpo, rollout = config.grpo, config.rollout
    run_dir = Path(config.output.dir)
    resume_from = start_run(run_dir, resume, "rlvr")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    # ---- data: rows -> prompts (chat template, left-truncated); verifier names checked per row
    rewards.load_plugins(config.verifiers.modules)
    tokenizer = AutoTokenizer.from_pretrained(config.model.path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    validate = rlvr_row_validator(rewards.names())
    mixture = mix_section(config.data, validate, "train")
    prompts, truncated = encode_prompts(mixture.rows, tokenizer, rollout.max_prompt_length)
    fingerprint = hashlib.sha256(json.dumps(mixture.rows, sort_keys=True, default=str).encode()).hexdigest()[:16]
    heldout = heldout_prompts(mix_section(config.data, validate, "heldout").rows, tokenizer, rollout.max_prompt_length,
                              config.eval.max_prompts) if config.data.heldout else []
    print(f"[rlvr] {len(prompts)} prompts ({truncated} left-truncated), {len(heldout)} held out; "
          f"{grpo.steps} steps of {grpo.prompts_per_step} x {grpo.samples_per_prompt}, "
          f"{grpo.minibatches} update(s) each, up to {grpo.max_async_steps} step(s) ahead")

    # ---- Ray: learner ranks, rollout engines, reward workers (and a reference policy with a KL term)
    owns_ray = not ray.is_initialized()
    init_ray(config.distributed.ray_address)
    check_resources(config)
    world = config.distributed.num_workers
    accumulation = math.ceil(config.batch.sequences / (config.batch.micro_batch_size * world))
    spec = LearnerSpec.from_config(config, accumulation=accumulation, total_steps=grpo.steps * grpo.minibatches)
    learners = LearnerGroup(spec, world, cpus_per_worker=config.distributed.cpus_per_worker,
                            use_gpu=config.distributed.use_gpu, name="rlvr learner")
    engines, scorers = EnginePool(config, config.model.path), RewardPool(config)
    reference, reference_group = spawn_reference(config, config.model.path)
    engines.wait_ready()
    scorers.wait_ready()
    start_step, cursor, elapsed_before, train_before = 0, 0, 0.0, 0.0
    if resume_from is not None:
        def same_prompts(state: dict) -> None:
            if state.get("data_fingerprint") != fingerprint:
                raise RuntimeError(f"--resume: the training prompts differ from the checkpoint's ({resume_from})")

        state = restore_learners(learners, resume_from, same_prompts, "rlvr")
        start_step, cursor = state["step"], state["data_position"]
        elapsed_before, train_before = state["elapsed_s"], state["train_s"]
        ray.get(sync_weights(learners, engines, start_step))
    startup_s = time.time() - started

    queue = RolloutQueue(
        engines, scorers, PromptStream(prompts, config.data.seed, cursor), prompts_per_step=grpo.prompts_per_step,
        n=grpo.samples_per_prompt, max_async_steps=grpo.max_async_steps, total_steps=grpo.steps,
        seed=config.seed, active_sampling=grpo.active_sampling, max_rounds=grpo.max_active_sampling_rounds,
        sampling=dict(temperature=rollout.temperature, top_p=rollout.top_p, max_tokens=rollout.max_response_length),
        informative=informative_groups(config),
    )
    eval_sampling = dict(temperature=config.eval.temperature, top_p=1.0, max_tokens=rollout.max_response_length)
    logger = MetricsLogger(run_dir, tensorboard=config.logging.tensorboard, wandb_project=config.logging.wandb_project,
                           wandb_config=to_dict(config), resume_step=start_step if resume_from else None)
    timers, stop = PhaseTimers(), GracefulStop()
    bar = progress(grpo.steps, initial=start_step, desc="rlvr", enabled=config.logging.progress)
    evals: dict[int, dict] = {}
    eval_seconds = 0.0  # evaluation time of this process, kept off the training clock

    def evaluate(at: int) -> None:
        nonlocal eval_seconds
        begin = time.perf_counter()
        evals[at] = summarize(queue.evaluate(heldout, eval_sampling))
        eval_seconds += time.perf_counter() - begin
        logger.log(at, {**evals[at], "time/eval": time.perf_counter() - begin})
        print(f"[rlvr] step {at}: held-out pass@1 {evals[at]['eval/pass@1']:.3f}")

    def train_seconds() -> float:  # the training clock: this run's loop time without evaluations, plus earlier runs'
        return train_before + time.time() - loop_started - eval_seconds

    def trainer_state() -> dict:
        return {"data_position": queue.position(), "data_fingerprint": fingerprint, "train_s": train_seconds(),
                "elapsed_s": elapsed_before + time.time() - started}

    step, last = start_step, {}
    try:
        if heldout and resume_from is None:
            evaluate(0)
        pending_sync: list = []
        loop_started, eval_seconds = time.time(), 0.0
        for step in range(start_step, grpo.steps):
            step_start = time.perf_counter()
            rollouts = queue.collect(step, timers)  # phases generate and score
            with timers("advantages"):
                scored = score_step(rollouts.groups, config)
                kept = select_groups(scored.equal, grpo.prompts_per_step, grpo.filter_equal_groups)
                samples = step_samples(rollouts.groups, scored, keep=kept, overlong=grpo.overlong)
                plan = plan_update(samples, minibatches=grpo.minibatches, micro_batch_size=config.batch.micro_batch_size,
                                   world_size=world, aggregation=grpo.loss_aggregation, pad_id=pad_id,
                                   seed=config.seed * 100_003 + step) if samples else None
            with timers("logprobs"):
                if plan is not None:
                    fill_logprobs(plan, learners, reference, old=grpo.minibatches > 1, temperature=rollout.temperature)
            with timers("update"):
                results = update_policy(learners, plan, config) if plan is not None else []
            with timers("sync"):
                sync_seconds = ray.get(pending_sync)  # the previous step's loads (async: already done)
                pending_sync = sync_weights(learners, engines, step + 1) if results else engines.relabel(step + 1)
                if grpo.max_async_steps == 0:
                    sync_seconds, pending_sync = ray.get(pending_sync), []
            last = {**M.step_metrics(step, rollouts, kept.tolist(), results, timers.pop(), plan, sync_seconds,
                                     step_seconds=time.perf_counter() - step_start, num_engines=len(engines),
                                     style=config.variant),
                    "engine_restarts": engines.restarts, "epoch": queue.stream.epoch, "train_wall_s": train_seconds()}
            if (step + 1) % config.logging.every == 0 or step + 1 == grpo.steps:
                logger.log(step + 1, last)
            bar.set_postfix(reward=f"{last['reward/mean']:.3f}", kept=f"{1 - last['groups/filtered_frac']:.2f}")
            bar.update(1)
            if heldout and config.eval.every and (step + 1) % config.eval.every == 0 and step + 1 < grpo.steps:
                evaluate(step + 1)
            every = config.output.save_every
            if stop.requested or (every and (step + 1) % every == 0 and step + 1 < grpo.steps):
                save_resumable(learners, run_dir, step + 1, trainer_state(), config.output.keep_last)
            if stop.requested:
                print(f"[rlvr] stopped by {stop.requested}: resumable checkpoint at step {step + 1} in {run_dir} "
                      "(continue with --resume)", flush=True)
                raise SystemExit(130)  # the shell's status for an interrupted command
        ray.get(pending_sync)
        queue.drain()
        if heldout:
            evaluate(grpo.steps)
    except BaseException:
        shutdown(learners, engines, scorers, reference, reference_group, owns_ray)
        raise
    finally:
        stop.restore()
        bar.close()
        logger.close()

    # ---- export, manifest, plots
    wall = elapsed_before + time.time() - started
    final = {**last, "steps": grpo.steps, **{f"before/{k}": v for k, v in evals.get(0, {}).items()},
             **evals.get(grpo.steps, {})}
    manifest = build_manifest(
        stage="rlvr", config=to_dict(config), config_hash=config_hash(config), parent=config.model.path,
        data={"prompts": len(prompts), "prompts_truncated": truncated, "heldout": len(heldout),
              "sources": mixture.counts(), "skipped_bad_rows": mixture.skipped, "fingerprint": fingerprint,
              "unscored": dict(queue.unscored_total)},
        metrics=final, wall_time_s=wall,
        extra={"model": learners.info, "startup_s": startup_s, "engine_restarts": engines.restarts,
               "placement": placement(learner=learners.placement_group, engine=engines.group, reward=scorers.group,
                                      reference=reference_group),
               "evals": {str(k): v for k, v in evals.items()}},
    )
    export(learners, tokenizer, run_dir, manifest)
    plot_curves(run_dir, M.PLOT_GROUPS)
    shutdown(learners, engines, scorers, reference, reference_group, owns_ray)
    before, after = evals.get(0, {}).get("eval/pass@1"), evals.get(grpo.steps, {}).get("eval/pass@1")
    print(f"[rlvr] done in {wall:.1f}s (start-up {startup_s:.1f}s): held-out pass@1 {before} -> {after}; "
          f"checkpoint {run_dir / 'checkpoint'}")
    return run_dir


def informative_groups(config: RLVRConfig):
    """groups -> [bool]: which groups carry a gradient (not all rewards equal, as the advantages phase sees
    them); every group when `grpo.filter_equal_groups` is off. Active sampling counts these."""
    grpo = config.grpo

    def informative(groups) -> list[bool]:
        if not grpo.filter_equal_groups:
            return [True] * len(groups)
        return (~score_step(groups, config).equal).tolist()

    return informative


def score_step(groups, config: RLVRConfig):
    """The recipe's reward shaping and advantages over a step's groups (`rlvr_data.score_groups`)."""
    grpo = config.grpo
    return score_groups(groups, advantage=grpo.advantage, overlong=grpo.overlong, overlong_buffer=grpo.overlong_buffer,
                        max_response_length=config.rollout.max_response_length, format_reward=grpo.format_reward,
                        style=config.variant)


def update_policy(learners: LearnerGroup, plan, config: RLVRConfig) -> list[dict]:
    """The update phase: one optimizer step per minibatch, every rank its micro-batches; stats per rank and step."""
    grpo = config.grpo
    results = []
    for batches, normalizer in zip(plan.batches, plan.normalizers):
        results += learners.call_per_rank(
            "train_step", [(rank_batches,) for rank_batches in batches], loss_fn=policy_loss_fn, normalizer=normalizer,
            world_size=learners.num_workers, loss="grpo_clip", aggregation=grpo.loss_aggregation, eps_low=grpo.eps_low,
            eps_high=grpo.eps_high, tis_cap=grpo.truncated_is_cap, kl_coef=grpo.kl_coef,
            temperature=config.rollout.temperature)
    return results


def select_groups(equal, prompts_per_step: int, filter_equal: bool):
    """(P,) bool: the groups the update uses. Filtering drops equal-reward groups and keeps at most
    `prompts_per_step` informative ones (active sampling may have drawn more)."""
    if not filter_equal:
        return torch.ones_like(equal)
    keep = ~equal
    surplus = keep.cumsum(0) > prompts_per_step
    return keep & ~surplus


def fill_logprobs(plan, learners: LearnerGroup, reference, *, old: bool, temperature: float) -> None:
    """The log-prob phase: old log-probs from the learner (several minibatches), reference log-probs (KL)."""
    per_rank = [[b for minibatch in plan.batches for b in minibatch[r]] for r in range(learners.num_workers)]
    if old:
        outputs = learners.call_per_rank("infer", [(batches,) for batches in per_rank], fn=response_logprobs,
                                         temperature=temperature)
        for batches, logps in zip(per_rank, outputs):
            for batch, values in zip(batches, logps):
                batch.old_logprobs = values
    if reference is not None:
        flat = [b for batches in per_rank for b in batches]
        for batch, values in zip(flat, ray.get(reference.logprobs.remote(flat, temperature))):
            batch.ref_logprobs = values


def sync_weights(learners: LearnerGroup, engines: EnginePool, version: int) -> list:
    """Queue the learner's weights (rank 0 gathers them; every rank takes part) for every engine."""
    refs = [worker.call.remote("weight_list") for worker in learners.workers]
    return engines.sync(refs[0], version)


class GracefulStop:
    """SIGINT/SIGTERM: finish the current step, save a resumable checkpoint, stop. A second signal aborts."""

    def __init__(self):
        self.requested: str | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n[rlvr] {self.requested}: finishing this step, then saving a resumable checkpoint "
              "(send it again to abort without saving)", flush=True)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def shutdown(learners, engines, scorers, reference, reference_group, owns_ray: bool) -> None:
    for part in (learners, engines, scorers):
        try:
            part.shutdown()
        except Exception:  # shutting down after a failure: the first error is the one to see
            pass
    if reference is not None:
        from ray.util.placement_group import remove_placement_group

        ray.kill(reference)
        remove_placement_group(reference_group)
    if owns_ray:
        ray.shutdown()
