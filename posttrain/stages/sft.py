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
  truncate) are counted in the manifest (posttrain/data/sft.py).
- `output.save_every` N steps, and on Ctrl-C or SIGTERM after the current
  step: a resumable checkpoint (optimizer, scheduler, RNG, step = data
  position), `output.keep_last` kept; `--resume` continues
  (posttrain/stages/scaffold.py).

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
bolted on through callbacks. The loop below is short, over that shared
learner (posttrain/learner/); the maths (losses, packing, masks) is the
shared, tested code the rest of the project uses.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.config import SFTConfig
from posttrain.data import sft as D
from posttrain.data.step_plan import StepPlan, check_resumable
from posttrain.metrics import PhaseTimers
from posttrain.objectives.sft import sft_loss
from posttrain.orchestration.learner_group import LearnerGroup
from posttrain.stages.scaffold import StageRun


def run(config: SFTConfig, resume: bool = False) -> Path:
    """Train, export `output.dir/checkpoint`, return `output.dir`."""
    with StageRun("sft", config, resume) as run:
        rows, heldout, plan, report = prepare_data(config, run.tokenizer)
        learners = run.start_learners(accumulation=plan.accumulation, total_steps=plan.total_steps)
        start = run.restore(lambda state: check_resumable(state, plan, report.fingerprint))

        def trainer_state(at: int) -> dict:
            """What a resumable checkpoint records besides the learners' own state."""
            return {"data_position": {"step": at, "epoch": at // plan.steps_per_epoch,
                                      "row_in_epoch": (at % plan.steps_per_epoch) * plan.rows_per_step},
                    "plan": plan.summary(), "data_fingerprint": report.fingerprint}

        # ---- the loop: one optimizer step per iteration over every rank's micro-batches
        timers, window, world = PhaseTimers(), Window(), config.distributed.num_workers
        for step in run.steps(start, plan.total_steps, trainer_state):
            with timers("data"):
                batches = D.step_batches(plan, rows, step, run.pad_id)  # [rank][micro-batch]
                counts = D.batch_token_counts([b for rank in batches for b in rank])
            with timers("train"):
                results = learners.call_per_rank("train_step", [(b,) for b in batches], loss_fn=sft_loss,
                                                 normalizer=counts["loss"], world_size=world,
                                                 chunk=config.model.loss_chunk_tokens)
            window.add(results, counts, timers.pop())
            if (step + 1) % config.logging.every == 0 or step + 1 == plan.total_steps:
                metrics = window.flush(epoch=(step + 1) / plan.steps_per_epoch)
                run.log(step + 1, metrics)
                run.show(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")

        # ---- held-out loss, export (weights, tokenizer, manifest), plots
        final = {**window.last, "steps": plan.total_steps}
        if heldout:
            final["heldout_loss"] = heldout_loss(learners, heldout, config, run.pad_id)
        wall = run.finish(final, data=report.as_dict(), extra={"plan": plan.summary()})
    heldout_text = f", held-out loss {final['heldout_loss']:.4f}" if "heldout_loss" in final else ""
    print(f"[sft] done in {wall:.1f}s: loss {final.get('loss', float('nan')):.4f}{heldout_text}; "
          f"checkpoint {run.run_dir / 'checkpoint'}")
    return run.run_dir


def prepare_data(config: SFTConfig, tokenizer) -> tuple[list, list, StepPlan, D.DataReport]:
    """Rows -> examples -> packed rows -> a plan of steps (see posttrain/data/sft.py)."""
    examples, report = D.load_split(config, tokenizer, "train")
    rows = D.to_rows(examples, config.data.max_length, config.sft.packing)
    report.rows_packed = len(rows)
    world = config.distributed.num_workers
    plan = StepPlan(num_rows=len(rows), rows_per_step=D.rows_per_step(config),
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


def heldout_loss(learners: LearnerGroup, rows: list, config: SFTConfig, pad_id: int) -> float:
    """Mean assistant-token loss on the held-out rows, split over ranks like one big step."""
    plan = StepPlan(num_rows=len(rows), rows_per_step=len(rows), micro_batch_size=config.batch.micro_batch_size,
                      world_size=config.distributed.num_workers, epochs=1, seed=0)
    batches = D.step_batches(plan, rows, 0, pad_id)
    stats = learners.call_per_rank("evaluate", [(b,) for b in batches], loss_fn=sft_loss, normalizer=1.0,
                                world_size=1, chunk=config.model.loss_chunk_tokens)
    return sum(s["loss_sum"] for s in stats) / max(sum(s["loss_tokens"] for s in stats), 1.0)
