"""DPO: preference tuning on chosen/rejected pairs, Olmo 3 style.

Algorithm. For each pair (x, y_c, y_r), with pi the policy and ref the frozen
starting checkpoint, and log-probs summed over response tokens,

    dpo       z = beta * ((pi(y_c) - ref(y_c)) - (pi(y_r) - ref(y_r)))          loss = -log sigma(z)
    dpo_norm  z = beta * ((pi(y_c) - ref(y_c)) / |y_c| - (pi(y_r) - ref(y_r)) / |y_r|)   (Olmo 3, beta 5)
    ipo       h = the dpo_norm difference without beta                          loss = (h - 1 / (2 beta))^2
    simpo     z = beta * pi(y_c) / |y_c| - beta * pi(y_r) / |y_r| - gamma     (reference-free)

(`dpo.loss`, `dpo.beta`, `dpo.gamma`, `dpo.label_smoothing` for conservative
DPO; formulas and sources in posttrain/algorithms/losses.py). The step's loss
is the mean over its pairs (`batch.sequences` pairs per step, all
micro-batches and ranks); accumulation is derived from
`batch.micro_batch_size` and `distributed.num_workers`.

Reference log-probs are computed once, before the first update, by the
learner ranks themselves (their weights are the reference until then) and
cached on disk keyed by the checkpoint's hash, the data fingerprint and
`data.max_length` (`dpo.reference_cache`, default RUN/reference_cache;
posttrain/stages/dpo_reference.py). Training then reads them from the cache:
no second model is ever held in memory, and a rerun or `--resume` skips the
pass. Reference-free losses (simpo) skip it for the training pairs.

Olmo 3 settings and their keys: `optim.lr` (7B Think 8e-8, Instruct 1e-6),
`optim.epochs` 1, `optim.schedule` linear with `optim.warmup_ratio` 0.1,
`optim.weight_decay` 0, `batch.sequences` 128 pairs, `data.max_length`
16384, and `dpo.max_length_diff` 100 for Instruct chat pairs. Bad pairs
(`dpo.on_bad_pair`), malformed rows (`data.on_bad_row`) and overlong pairs
(`data.overlong`) are counted in the manifest (posttrain/data/preference.py).

Also as SFT (posttrain/stages/sft.py): DeepSpeed ZeRO ranks as Ray actors,
LoRA (`lora.*`, merged on export), resumable checkpoints every
`output.save_every` steps and `--resume`, metrics.jsonl with a progress bar
and PNG curves. Held-out pairs are scored before and after training:
`heldout_pref_acc` is the share of pairs whose chosen response has the higher
per-token log-prob under the policy (the model's own preference), and after
training `heldout_reward_acc` the share whose implicit reward is higher.
"""

from __future__ import annotations

import time
from pathlib import Path

import ray
import yaml

from posttrain.checkpoints import build_manifest, restore_learners, start_run
from posttrain.config import DPOConfig, config_hash, to_dict
from posttrain.data import preference as P
from posttrain.learner import LearnerSpec
from posttrain.metrics import MetricsLogger, PhaseTimers, plot_curves, progress
from posttrain.orchestration.cluster import init_ray
from posttrain.orchestration.learner_group import LearnerGroup
from posttrain.stages import dpo_reference as R
from posttrain.stages.dpo_forward import dpo_loss_fn, eval_loss_fn, means, needs_reference, reference_fn
from posttrain.stages.sft import export, save_resumable
from posttrain.stages.sft_data import StepPlan

REFERENCE_BATCH_FACTOR = 2  # forward-only passes hold no activations for backward: larger batches fit
FORWARD_CALL_BATCHES = 64  # batches per rank in one Ray call of a forward-only pass
PLOTS = {  # RUN/plots/<name>.png
    "loss": ("loss",),
    "rewards": ("reward_chosen", "reward_rejected", "reward_margin"),
    "accuracy": ("reward_acc", "pref_acc"),
    "logps_per_token": ("logps_chosen_tok", "logps_rejected_tok"),
    "lr": ("lr",),
    "grad_norm": ("grad_norm",),
    "time": ("time/data", "time/train"),
}


def run(config: DPOConfig, resume: bool = False) -> Path:
    """Train, export `output.dir/checkpoint`, return `output.dir`."""
    from transformers import AutoTokenizer

    started = time.time()
    run_dir = Path(config.output.dir)
    resume_from = start_run(run_dir, resume, "dpo")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    # ---- data: rows -> tokenized pairs -> a plan of steps
    tokenizer = AutoTokenizer.from_pretrained(config.model.path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pairs, report = P.load_pairs(tokenizer, config.data, config.dpo, "train")
    heldout, held_report = [], None
    if config.data.heldout:
        heldout, held_report = P.load_pairs(tokenizer, config.data, config.dpo, "heldout")
    if not pairs:
        raise RuntimeError(f"[dpo] no usable training pairs: {report.to_dict()}")
    world = config.distributed.num_workers
    plan = StepPlan(num_rows=len(pairs), rows_per_step=config.batch.sequences,
                    micro_batch_size=config.batch.micro_batch_size, world_size=world, epochs=config.optim.epochs,
                    seed=config.data.seed, max_steps=config.optim.max_steps)
    fingerprint = P.fingerprint(pairs)
    print(f"[dpo] {len(pairs)} pairs ({len(heldout)} held out); "
          f"{plan.total_steps} steps of {plan.rows_per_step} pairs, "
          f"accumulation {plan.accumulation} x {world} ranks; skipped {report.bad_pairs_skipped} bad pairs, "
          f"{report.malformed_skipped} malformed rows; dropped {report.length_diff_dropped} by length difference, "
          f"{report.overlong_dropped} overlong")

    # ---- learners, then reference log-probs (from the cache, or the learners before any update)
    owns_ray = not ray.is_initialized()
    init_ray(config.distributed.ray_address)
    spec = LearnerSpec.from_config(config, accumulation=plan.accumulation, total_steps=plan.total_steps)
    group = LearnerGroup(spec, world, cpus_per_worker=config.distributed.cpus_per_worker,
                         use_gpu=config.distributed.use_gpu, name="dpo learner")
    cache_root = Path(config.dpo.reference_cache or run_dir / "reference_cache")
    ref, ref_hit = None, None
    if needs_reference(config.dpo.loss):
        ref, ref_hit = reference(group, config, pairs, "train", cache_root, pad_id)
    held_ref = reference(group, config, heldout, "heldout", cache_root, pad_id)[0] if heldout else None
    before = heldout_before(held_ref) if held_ref is not None else {}
    print(f"[dpo] reference log-probs: {'cache hit' if ref_hit else 'computed'} ({cache_root}); "
          f"held-out preference accuracy before: {before.get('heldout_pref_acc_before', float('nan')):.3f}")

    start_step, elapsed_before = 0, 0.0
    if resume_from is not None:
        state = restore_learners(group, resume_from, lambda s: check_resumable(s, plan, fingerprint), "dpo")
        start_step, elapsed_before = state["step"], state["elapsed_s"]

    logger = MetricsLogger(run_dir, tensorboard=config.logging.tensorboard, wandb_project=config.logging.wandb_project,
                           wandb_config=to_dict(config), resume_step=start_step if resume_from else None)
    timers, window = PhaseTimers(), Window()
    bar = progress(plan.total_steps, initial=start_step, desc="dpo", enabled=config.logging.progress)
    loss_kwargs = dict(loss=config.dpo.loss, beta=config.dpo.beta, gamma=config.dpo.gamma,
                       label_smoothing=config.dpo.label_smoothing, nll_weight=config.dpo.nll_weight, pad_id=pad_id)
    ref_pair = ref.pair() if ref is not None else None
    step = start_step

    def trainer_state(at: int) -> dict:
        return {"data_position": {"step": at, "epoch": at // plan.steps_per_epoch}, "plan": plan_summary(plan),
                "data_fingerprint": fingerprint, "elapsed_s": elapsed_before + time.time() - started}

    try:
        # ---- the loop: one optimizer step per iteration
        for step in range(start_step, plan.total_steps):
            with timers("data"):
                batches = step_batches(plan, pairs, step, pad_id, ref_pair)  # [rank][micro-batch]
            with timers("train"):
                results = group.call_per_rank("train_step", [(b,) for b in batches], loss_fn=dpo_loss_fn,
                                              pairs_in_step=len(plan.step_rows(step)), world_size=world, **loss_kwargs)
            window.add(results, timers.pop())
            if (step + 1) % config.logging.every == 0 or step + 1 == plan.total_steps:
                metrics = window.flush(epoch=(step + 1) / plan.steps_per_epoch)
                logger.log(step + 1, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{accuracy(metrics):.2f}")
            bar.update(1)
            every = config.output.save_every
            if every and (step + 1) % every == 0 and step + 1 < plan.total_steps:
                save_resumable(group, run_dir, step + 1, trainer_state(step + 1), config.output.keep_last)
    except KeyboardInterrupt:
        done = step if step > start_step else start_step  # the last finished step
        if done > start_step:
            save_resumable(group, run_dir, done, trainer_state(done), config.output.keep_last)
            print(f"[dpo] interrupted: resumable checkpoint at step {done} in {run_dir}")
        group.shutdown()
        raise
    finally:
        bar.close()

    # ---- held-out accuracy after, export, manifest, plots
    final = {**window.last, "steps": plan.total_steps, **before}
    if heldout:
        after = evaluate(group, config, heldout, held_ref, pad_id, loss_kwargs)
        final.update({f"heldout_{k}": v for k, v in after.items() if k != "pairs"})
        logger.log(plan.total_steps, {k: v for k, v in final.items() if k.startswith("heldout_")})
    logger.close()
    wall = elapsed_before + time.time() - started
    data = {"train": report.to_dict(), "heldout": held_report.to_dict() if held_report else None,
            "fingerprint": fingerprint, "reference_cache": {"root": str(cache_root), "hit": ref_hit}}
    manifest = build_manifest(stage="dpo", config=to_dict(config), config_hash=config_hash(config),
                              parent=config.model.path, data=data, metrics=final, wall_time_s=wall,
                              extra={"plan": plan_summary(plan), "model": group.info})
    export(group, tokenizer, run_dir, manifest)
    plot_curves(run_dir, PLOTS)
    group.shutdown()
    if owns_ray:
        ray.shutdown()
    print(f"[dpo] done in {wall:.1f}s: loss {final.get('loss', float('nan')):.4f}; held-out preference accuracy "
          f"{final.get('heldout_pref_acc_before', float('nan')):.3f} -> "
          f"{final.get('heldout_pref_acc', float('nan')):.3f}; "
          f"checkpoint {run_dir / 'checkpoint'}")
    return run_dir


def step_batches(plan: StepPlan, pairs: list, step: int, pad_id: int, ref) -> list[list]:
    """The collated micro-batches of `step` for every rank (a filler pair where a rank ran out of pairs)."""
    return [[P.collate(pairs, part, pad_id, ref) if part else P.filler(pairs, pad_id, ref) for part in parts]
            for parts in plan.rank_micro_batches(step)]


def forward_passes(group: LearnerGroup, config: DPOConfig, pairs: list, pad_id: int, method: str, desc: str,
                   ref=None, /, **kwargs) -> list:
    """`learner.<method>(batches, ...)` over all pairs in order, spread over the ranks; one result per rank and call.

    Pairs go out in calls of `FORWARD_CALL_BATCHES` batches per rank, so no call ships the whole dataset; every
    rank gets as many batches per call (fillers pad the last), which ZeRO-3's collective forwards need.
    """
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
        results += group.call_per_rank(method, [(b,) for b in batches], **kwargs)
        bar.update(min(per_call, len(chunks) - start))
    bar.close()
    return results


def reference(group: LearnerGroup, config: DPOConfig, pairs: list, split: str, root: Path, pad_id: int):
    """(ReferenceLogps of `pairs`, cache hit?): from the cache, else computed by the learners' current weights."""
    key = R.cache_key(config.model.path, P.fingerprint(pairs), config.data.max_length, split=split)

    def compute() -> R.ReferenceLogps:
        results = forward_passes(group, config, pairs, pad_id, "infer", f"reference log-probs ({split})",
                                 fn=reference_fn, pad_id=pad_id)
        return R.from_results([r for rank_call in results for r in rank_call], pairs)

    return R.cached_or_compute(root, key, compute)


def heldout_before(ref: R.ReferenceLogps) -> dict:
    """Held-out preference accuracy of the starting policy (its log-probs are the reference's)."""
    per_tok_c = ref.chosen / ref.chosen_lengths.clamp(min=1)
    per_tok_r = ref.rejected / ref.rejected_lengths.clamp(min=1)
    return {"heldout_pref_acc_before": float((per_tok_c > per_tok_r).float().mean()),
            "heldout_logps_chosen_tok_before": float(per_tok_c.mean()),
            "heldout_logps_rejected_tok_before": float(per_tok_r.mean())}


def evaluate(group: LearnerGroup, config: DPOConfig, pairs: list, ref, pad_id: int, loss_kwargs: dict) -> dict:
    """Per-pair means of the preference stats of `pairs` under the current weights (all ranks share the work)."""
    stats = forward_passes(group, config, pairs, pad_id, "evaluate", "held-out evaluation",
                           ref.pair() if ref is not None else None, loss_fn=eval_loss_fn, **loss_kwargs)
    totals: dict[str, float] = {}
    for rank_stats in stats:
        for key, value in rank_stats.items():
            totals[key] = totals.get(key, 0.0) + value
    return means(totals)


class Window:
    """Sums step results between two log lines; `flush` turns them into the logged metrics."""

    def __init__(self):
        self.last: dict = {}
        self.totals: dict[str, float] = {}
        self.times: dict[str, float] = {}
        self.steps = 0

    def add(self, results: list[dict], times: dict) -> None:
        for rank_result in results:
            for key, value in rank_result.items():
                if key not in ("lr", "grad_norm"):
                    self.totals[key] = self.totals.get(key, 0.0) + value
        self.lr, self.grad_norm = results[0]["lr"], results[0]["grad_norm"]
        for key, value in times.items():
            self.times[key] = self.times.get(key, 0.0) + value
        self.steps += 1

    def flush(self, epoch: float) -> dict:
        seconds = sum(self.times.values())
        self.last = {**means(self.totals), "lr": self.lr, "grad_norm": self.grad_norm, "epoch": epoch,
                     "pairs_per_s": self.totals.get("pairs", 0.0) / max(seconds, 1e-9),
                     **{k: v / max(self.steps, 1) for k, v in self.times.items()}}
        self.last.pop("pairs", None)
        self.totals, self.times, self.steps = {}, {}, 0
        return self.last


def accuracy(metrics: dict) -> float:
    """The accuracy the progress bar shows: implicit-reward accuracy, else (reference-free) the policy's preference."""
    return metrics.get("reward_acc", metrics["pref_acc"])


def plan_summary(plan: StepPlan) -> dict:
    return {"pairs": plan.num_rows, "pairs_per_step": plan.rows_per_step, "steps_per_epoch": plan.steps_per_epoch,
            "total_steps": plan.total_steps, "accumulation": plan.accumulation, "world_size": plan.world_size}


def check_resumable(state: dict, plan: StepPlan, fingerprint: str) -> None:
    """A resumed run must see the same pairs and plan, or its data position means nothing."""
    if state.get("data_fingerprint") != fingerprint:
        raise RuntimeError(f"--resume: the training pairs differ from the checkpoint's (fingerprint {fingerprint} vs "
                           f"{state.get('data_fingerprint')})")
    if state.get("plan") != plan_summary(plan):
        raise RuntimeError(f"--resume: the step plan differs from the checkpoint's ({plan_summary(plan)} vs "
                           f"{state.get('plan')}); resume with the same batch, epochs and workers")

