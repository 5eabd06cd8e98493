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
posttrain/data/reference_cache.py). Training then reads them from the cache:
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
`output.save_every` steps and on Ctrl-C or SIGTERM, `--resume`, metrics.jsonl
with a progress bar and PNG curves (posttrain/stages/scaffold.py). Held-out pairs are scored before and after training:
`heldout_pref_acc` is the share of pairs whose chosen response has the higher
per-token log-prob under the policy (the model's own preference), and after
training `heldout_reward_acc` the share whose implicit reward is higher.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.config import DPOConfig
from posttrain.data import preference as P
from posttrain.data.step_plan import StepPlan, check_resumable
from posttrain.metrics import PhaseTimers
from posttrain.objectives.dpo import dpo_loss_fn, means, needs_reference
from posttrain.orchestration.preference_passes import preference_before, preference_stats, reference_logps
from posttrain.stages.scaffold import StageRun

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
    with StageRun("dpo", config, resume) as run:
        # ---- data: rows -> tokenized pairs -> a plan of steps
        pad_id, world = run.pad_id, config.distributed.num_workers
        pairs, report = P.load_pairs(run.tokenizer, config.data, config.dpo, "train")
        heldout, held_report = [], None
        if config.data.heldout:
            heldout, held_report = P.load_pairs(run.tokenizer, config.data, config.dpo, "heldout")
        if not pairs:
            raise RuntimeError(f"[dpo] no usable training pairs: {report.to_dict()}")
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
        learners = run.start_learners(accumulation=plan.accumulation, total_steps=plan.total_steps)
        cache_root = Path(config.dpo.reference_cache or run.run_dir / "reference_cache")
        ref, ref_hit = None, None
        if needs_reference(config.dpo.loss):
            ref, ref_hit = reference_logps(learners, config, pairs, "train", cache_root, pad_id)
        held_ref = reference_logps(learners, config, heldout, "heldout", cache_root, pad_id)[0] if heldout else None
        before = preference_before(held_ref) if held_ref is not None else {}
        print(f"[dpo] reference log-probs: {'cache hit' if ref_hit else 'computed'} ({cache_root}); "
              f"held-out preference accuracy before: {before.get('heldout_pref_acc_before', float('nan')):.3f}")
        start = run.restore(lambda state: check_resumable(state, plan, fingerprint))

        def trainer_state(at: int) -> dict:
            return {"data_position": {"step": at, "epoch": at // plan.steps_per_epoch}, "plan": plan.summary(),
                    "data_fingerprint": fingerprint}

        # ---- the loop: one optimizer step per iteration
        loss_kwargs = dict(loss=config.dpo.loss, beta=config.dpo.beta, gamma=config.dpo.gamma,
                           label_smoothing=config.dpo.label_smoothing, nll_weight=config.dpo.nll_weight, pad_id=pad_id,
                           chunk=config.model.loss_chunk_tokens)
        ref_pair = ref.pair() if ref is not None else None
        timers, window = PhaseTimers(), Window()
        for step in run.steps(start, plan.total_steps, trainer_state):
            with timers("data"):
                batches = step_batches(plan, pairs, step, pad_id, ref_pair)  # [rank][micro-batch]
            with timers("train"):
                results = learners.call_per_rank("train_step", [(b,) for b in batches], loss_fn=dpo_loss_fn,
                                                 pairs_in_step=len(plan.step_rows(step)), world_size=world,
                                                 **loss_kwargs)
            window.add(results, timers.pop())
            if (step + 1) % config.logging.every == 0 or step + 1 == plan.total_steps:
                metrics = window.flush(epoch=(step + 1) / plan.steps_per_epoch)
                run.log(step + 1, metrics)
                run.show(loss=f"{metrics['loss']:.4f}", acc=f"{accuracy(metrics):.2f}")

        # ---- held-out accuracy after, export, manifest, plots
        final = {**window.last, "steps": plan.total_steps, **before}
        if heldout:
            after = preference_stats(learners, config, heldout, held_ref, pad_id, loss_kwargs)
            final.update({f"heldout_{k}": v for k, v in after.items() if k != "pairs"})
            run.log(plan.total_steps, {k: v for k, v in final.items() if k.startswith("heldout_")})
        data = {"train": report.to_dict(), "heldout": held_report.to_dict() if held_report else None,
                "fingerprint": fingerprint, "reference_cache": {"root": str(cache_root), "hit": ref_hit}}
        wall = run.finish(final, data=data, extra={"plan": plan.summary()}, plots=PLOTS)
    print(f"[dpo] done in {wall:.1f}s: loss {final.get('loss', float('nan')):.4f}; held-out preference accuracy "
          f"{final.get('heldout_pref_acc_before', float('nan')):.3f} -> "
          f"{final.get('heldout_pref_acc', float('nan')):.3f}; checkpoint {run.run_dir / 'checkpoint'}")
    return run.run_dir


def step_batches(plan: StepPlan, pairs: list, step: int, pad_id: int, ref) -> list[list]:
    """The collated micro-batches of `step` for every rank (a filler pair where a rank ran out of pairs)."""
    return [[P.collate(pairs, part, pad_id, ref) if part else P.filler(pairs, pad_id, ref) for part in parts]
            for parts in plan.rank_micro_batches(step)]


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
