"""SFT: supervised fine-tuning on chat data, Olmo 3 style.

Algorithm. Minimise the mean cross-entropy of assistant tokens,

    L = sum_{t in A} -log p(x_t | x_<t) / |A|,

where A is every assistant token of every conversation in the optimizer
step (all micro-batches, all ranks): the content and the closing
`<|im_end|>` of every assistant turn, multi-turn included, and the
`<think>` block of Think data (`sft.train_on_think`, default true). System,
user and tool turns and the role headers carry no loss. Each micro-batch
backpropagates its summed loss divided by |A| of the whole step, so k
micro-batches of b rows equal one batch of k*b rows, on any number of ranks.

Olmo 3 settings and the recipe keys that set them:
- packing (`sft.packing`): several conversations per row of up to
  `data.max_length` tokens, positions restarting per conversation, no
  attention across conversations (posttrain/data/packing.py).
- batch (`batch.tokens`, Olmo 3: 1M; or `batch.sequences`): rows per step =
  tokens / max_length; accumulation = rows / (`batch.micro_batch_size` x
  `distributed.num_workers`), derived, never set by hand.
- AdamW (`optim.betas` (0.9, 0.95), `optim.weight_decay` 0), peak `optim.lr`,
  linear warmup over `optim.warmup_ratio` of the steps, then `optim.schedule`
  (linear to 0), clipping at `optim.max_grad_norm` 1.0, `optim.epochs` 2.
- DeepSpeed ZeRO (`deepspeed.zero_stage`, offload), LoRA (`lora.*`, merged
  on export), ranks as Ray actors (`distributed.*`; gloo on CPU, nccl on GPU).
- bad rows (`data.on_bad_row`) and overlong ones (`data.overlong`: drop or
  truncate) are counted in the manifest (posttrain/stages/sft_data.py).
- `output.save_every` N steps: a resumable checkpoint (optimizer, scheduler,
  RNG, step = data position), `output.keep_last` kept; `--resume` continues.

Why a short own loop and not TRL's SFTTrainer. SFTTrainer does chat
templating, assistant-only loss and padding-free packing, but four things the
recipe needs sit inside transformers.Trainer's private machinery: (1) its
`_save_checkpoint` writes straight into `checkpoint-N` (a killed write leaves
a directory that `get_last_checkpoint` picks up), and making it atomic means
overriding that private hook, which we never do; (2) its batch is sequences
per device with a fixed `gradient_accumulation_steps`, not a token budget
with derived accumulation and a loss normalised over the whole step; (3) DPO
and RLVR need the same model/optimizer/DeepSpeed learner driven step by step
from a Ray controller (RLVR cannot use a Trainer loop at all), and one
learner for all stages means one set of checkpoint, LoRA-merge and
weight-export code; (4) our manifest and data-position resume would be
bolted on through callbacks. The loop below is ~100 lines over that shared
learner (posttrain/learner/); the maths (losses, packing, masks) is the
shared, tested code the rest of the project uses.
"""

from __future__ import annotations

import time
from pathlib import Path

import ray
import yaml

from posttrain.algorithms.losses import sft_loss_sum
from posttrain.checkpoints import (
    EXPORT_DIR, MANIFEST, atomic_dir, build_manifest, finalize_export, read_json, restore_learners, start_run,
    write_json_atomic, writing_resumable,
)
from posttrain.config import SFTConfig, config_hash, to_dict
from posttrain.learner import LearnerSpec
from posttrain.metrics import MetricsLogger, PhaseTimers, plot_curves, progress
from posttrain.orchestration.cluster import init_ray
from posttrain.orchestration.learner_group import LearnerGroup
from posttrain.stages import sft_data as D


def sft_loss(model, batch, *, normalizer: float, world_size: int):
    """Summed assistant-token cross-entropy of one micro-batch, scaled for step-wide token averaging.

    Ranks' gradients are averaged by the backend (divided by world_size), so
    the loss is multiplied back by world_size: the step's gradient is that of
    sum(all losses) / normalizer.
    """
    logits = model(**batch.model_inputs(), use_cache=False).logits
    loss_sum, count = sft_loss_sum(logits, batch.labels)
    scaled = loss_sum * (world_size / max(float(normalizer), 1.0))
    return scaled, {"loss_sum": float(loss_sum.detach()), "loss_tokens": float(count)}


def run(config: SFTConfig, resume: bool = False) -> Path:
    """Train, export `output.dir/checkpoint`, return `output.dir`."""
    from transformers import AutoTokenizer

    started = time.time()
    run_dir = Path(config.output.dir)
    resume_from = start_run(run_dir, resume, "sft")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    tokenizer = AutoTokenizer.from_pretrained(config.model.path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, heldout, plan, report = prepare_data(config, tokenizer)

    # ---- learners: Ray actors forming one process group
    owns_ray = not ray.is_initialized()
    init_ray(config.distributed.ray_address)
    spec = LearnerSpec.from_config(config, accumulation=plan.accumulation, total_steps=plan.total_steps)
    group = LearnerGroup(spec, config.distributed.num_workers, cpus_per_worker=config.distributed.cpus_per_worker,
                         use_gpu=config.distributed.use_gpu, name="sft learner")
    try:
        start_step, elapsed_before = 0, 0.0
        if resume_from is not None:
            state = restore_learners(group, resume_from, lambda s: check_resumable(s, plan, report), "sft")
            start_step, elapsed_before = state["step"], state["elapsed_s"]

        def trainer_state(at: int) -> dict:
            """What a resumable checkpoint records besides the learners' own state."""
            return {"data_position": {"step": at, "epoch": at // plan.steps_per_epoch,
                                      "row_in_epoch": (at % plan.steps_per_epoch) * plan.rows_per_step},
                    "plan": plan_summary(plan), "data_fingerprint": report.fingerprint,
                    "elapsed_s": elapsed_before + time.time() - started}

        final = train(config, group, plan, rows, pad_id, run_dir, start_step, trainer_state)

        # ---- held-out loss, export (weights, tokenizer, manifest), plots
        final["steps"] = plan.total_steps
        if heldout:
            final["heldout_loss"] = heldout_loss(group, heldout, config, pad_id)
        wall = elapsed_before + time.time() - started
        manifest = build_manifest(stage="sft", config=to_dict(config), config_hash=config_hash(config),
                                  parent=config.model.path, data=report.as_dict(), metrics=final, wall_time_s=wall,
                                  extra={"plan": plan_summary(plan), "model": group.info})
        export(group, tokenizer, run_dir, manifest)
        plot_curves(run_dir)
    finally:
        group.shutdown()
        if owns_ray:
            ray.shutdown()
    heldout_text = f", held-out loss {final['heldout_loss']:.4f}" if "heldout_loss" in final else ""
    print(f"[sft] done in {wall:.1f}s: loss {final.get('loss', float('nan')):.4f}{heldout_text}; "
          f"checkpoint {run_dir / EXPORT_DIR}")
    return run_dir


def prepare_data(config: SFTConfig, tokenizer) -> tuple[list, list, D.StepPlan, D.DataReport]:
    """Rows -> examples -> packed rows -> a plan of steps (see posttrain/stages/sft_data.py)."""
    examples, report = D.load_split(config, tokenizer, "train")
    rows = D.to_rows(examples, config.data.max_length, config.sft.packing)
    report.rows_packed = len(rows)
    world = config.distributed.num_workers
    plan = D.StepPlan(num_rows=len(rows), rows_per_step=D.rows_per_step(config),
                      micro_batch_size=config.batch.micro_batch_size, world_size=world,
                      epochs=config.optim.epochs, seed=config.data.seed, max_steps=config.optim.max_steps)
    heldout = []
    if config.data.heldout:
        heldout = D.to_rows(D.load_split(config, tokenizer, "heldout")[0], config.data.max_length, config.sft.packing)
    print(f"[sft] {report.examples} examples ({report.target_tokens} target tokens) in {len(rows)} rows; "
          f"{plan.total_steps} steps of {plan.rows_per_step} rows, accumulation {plan.accumulation} x {world} ranks; "
          f"dropped: {report.overlong_dropped} overlong, {report.no_target_dropped} without target, "
          f"{report.skipped_bad_rows} bad rows")
    return rows, heldout, plan, report


def train(config: SFTConfig, group: LearnerGroup, plan: D.StepPlan, rows: list, pad_id: int, run_dir: Path,
          start_step: int, trainer_state) -> dict:
    """The loop: one optimizer step per iteration, metrics every `logging.every`, checkpoints every `save_every`.

    Returns the metrics of the last logged window.
    """
    resumed = start_step > 0
    logger = MetricsLogger(run_dir, tensorboard=config.logging.tensorboard, wandb_project=config.logging.wandb_project,
                           wandb_config=to_dict(config), resume_step=start_step if resumed else None)
    timers, window = PhaseTimers(), Window()
    bar = progress(plan.total_steps, initial=start_step, desc="sft", enabled=config.logging.progress)
    world, every = config.distributed.num_workers, config.output.save_every
    try:
        for step in range(start_step, plan.total_steps):
            with timers("data"):
                batches = D.step_batches(plan, rows, step, pad_id)  # [rank][micro-batch]
                counts = D.batch_token_counts([b for rank in batches for b in rank])
            with timers("train"):
                results = group.call_per_rank("train_step", [(b,) for b in batches], loss_fn=sft_loss,
                                              normalizer=counts["loss"], world_size=world)
            window.add(results, counts, timers.pop())
            if (step + 1) % config.logging.every == 0 or step + 1 == plan.total_steps:
                metrics = window.flush(epoch=(step + 1) / plan.steps_per_epoch)
                logger.log(step + 1, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
            bar.update(1)
            if every and (step + 1) % every == 0 and step + 1 < plan.total_steps:
                with timers("checkpoint"):
                    save_resumable(group, run_dir, step + 1, trainer_state(step + 1), config.output.keep_last)
    finally:
        bar.close()
        logger.close()
    return dict(window.last)


class Window:
    """Sums step results between two log lines; `flush` turns them into the logged metrics."""

    def __init__(self):
        self.last: dict = {}
        self._reset()

    def _reset(self) -> None:
        self.loss_sum = self.loss_tokens = self.real = self.total = self.seconds = 0.0
        self.steps, self.times = 0, {}

    def add(self, results: list[dict], counts: dict, times: dict) -> None:
        self.loss_sum += sum(r["loss_sum"] for r in results)
        self.loss_tokens += counts["loss"]
        self.real += counts["real"]
        self.total += counts["total"]
        self.seconds += sum(times.values())
        self.steps += 1
        self.lr, self.grad_norm = results[0]["lr"], results[0]["grad_norm"]
        for key, value in times.items():
            self.times[key] = self.times.get(key, 0.0) + value

    def flush(self, epoch: float) -> dict:
        self.last = {
            "loss": self.loss_sum / max(self.loss_tokens, 1.0),
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "tokens_per_s": self.real / max(self.seconds, 1e-9),  # real (non-padding) tokens
            "padding_fraction": 1.0 - self.real / max(self.total, 1.0),
            "loss_tokens_per_step": self.loss_tokens / max(self.steps, 1),
            "epoch": epoch,
            **{k: v / max(self.steps, 1) for k, v in self.times.items()},
        }
        self._reset()
        return self.last


def plan_summary(plan: D.StepPlan) -> dict:
    return {"rows": plan.num_rows, "rows_per_step": plan.rows_per_step, "steps_per_epoch": plan.steps_per_epoch,
            "total_steps": plan.total_steps, "accumulation": plan.accumulation, "world_size": plan.world_size}


def check_resumable(state: dict, plan: D.StepPlan, report: D.DataReport) -> None:
    """A resumed run must see the same data and plan, or its data position means nothing."""
    if state.get("data_fingerprint") != report.fingerprint:
        raise RuntimeError("--resume: the training data differ from the checkpoint's "
                           f"(fingerprint {report.fingerprint} vs {state.get('data_fingerprint')})")
    if state.get("plan") != plan_summary(plan):
        raise RuntimeError(f"--resume: the step plan differs from the checkpoint's ({plan_summary(plan)} vs "
                           f"{state.get('plan')}); resume with the same batch, epochs and workers")


def save_resumable(group: LearnerGroup, run_dir: Path, step: int, state: dict, keep_last: int) -> None:
    with writing_resumable(run_dir, step, state, keep_last) as tmp:
        group.call("save_state", str(tmp))


def heldout_loss(group: LearnerGroup, rows: list, config: SFTConfig, pad_id: int) -> float:
    """Mean assistant-token loss on the held-out rows, split over ranks like one big step."""
    plan = D.StepPlan(num_rows=len(rows), rows_per_step=len(rows), micro_batch_size=config.batch.micro_batch_size,
                      world_size=config.distributed.num_workers, epochs=1, seed=0)
    batches = D.step_batches(plan, rows, 0, pad_id)
    stats = group.call_per_rank("evaluate", [(b,) for b in batches], loss_fn=sft_loss, normalizer=1.0,
                                world_size=1)
    return sum(s["loss_sum"] for s in stats) / max(sum(s["loss_tokens"] for s in stats), 1.0)


def export(group: LearnerGroup, tokenizer, run_dir: Path, manifest: dict) -> Path:
    """Write checkpoint/ atomically: weights (LoRA merged), config, generation config, tokenizer with chat template."""
    from posttrain.data.chat import CHAT_TEMPLATE

    with atomic_dir(run_dir / EXPORT_DIR) as tmp:
        group.call("export", str(tmp))
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(str(tmp))
        finalize_export(tmp, manifest)
        full = read_json(tmp / MANIFEST)
    write_json_atomic(run_dir / MANIFEST, full)
    return run_dir / EXPORT_DIR
