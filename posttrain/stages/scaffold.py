"""What every stage driver shares, from run start to shutdown: one `StageRun`.

    with StageRun("sft", config, resume) as run:
        learners = run.start_learners(accumulation=..., total_steps=...)
        start = run.restore(check)                        # 0, or the step a --resume continues from
        for step in run.steps(start, total, trainer_state):
            ...                                           # one optimizer step
            run.log(step + 1, metrics)
        run.finish(metrics, data=..., extra=..., plots=...)

On entry: the run directory (a fresh start removes old resumable
checkpoints; `--resume` picks the latest one), the resolved recipe in
RUN/config.yaml, the tokenizer and its pad id, Ray (started here unless it
is already up: a chain starts it once; with `distributed.ship_code` its
workers import the driver's code), the check that the cluster can hold
every actor the recipe places (before the driver reads any data), on a
multi-node cluster the check that every node that may host a role runs the
same code and sees the run directory and the model (posttrain/orchestration/
preflight.py), and the stop signals. On every exit,
normal or not: the progress bar and the metrics logger close, every part
handed to `own` (learners, engines, reward workers) shuts down, newest
first, Ray too if this run started it, and the signal handlers are restored.

Graceful stop. The first Ctrl-C or SIGTERM lets the current step finish;
`steps` then saves a resumable checkpoint and raises `Interrupted` (exit
status 130, the shell's for an interrupted command), unless that step was the
last: then the run finishes as usual. A second signal aborts at once, without
saving. `--resume` continues from the checkpoint.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol

import ray
import yaml

from posttrain.checkpoints import (
    EXPORT_DIR, MANIFEST, atomic_dir, build_manifest, finalize_export, read_json, restore_learners, start_run,
    write_json_atomic, writing_resumable,
)
from posttrain.config import StageConfig, config_hash, to_dict
from posttrain.learner import LearnerSpec
from posttrain.metrics import MetricsLogger, plot_curves, progress
from posttrain.orchestration.cluster import actor_path, check_resources, colocated_share, init_ray, placement
from posttrain.orchestration.shipping import plugin_modules
from posttrain.orchestration.learner_group import LearnerGroup
from posttrain.orchestration.preflight import check_nodes

INTERRUPTED_STATUS = 130


class Interrupted(SystemExit):
    """A graceful stop: the run saved a resumable checkpoint and exits with status 130."""

    def __init__(self):
        super().__init__(INTERRUPTED_STATUS)


class Shuts(Protocol):
    def shutdown(self) -> None: ...


class StopSignals:
    """SIGINT/SIGTERM: note the first (the loop stops after its current step); a second aborts at once."""

    def __init__(self, stage: str):
        self.stage, self.requested = stage, None
        self._previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n[{self.stage}] {self.requested}: finishing this step, then saving a resumable checkpoint "
              "(send it again to abort without saving)", flush=True)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class StageRun:
    """One stage's run: see the module docstring."""

    def __init__(self, stage: str, config: StageConfig, resume: bool = False):
        self.stage, self.config, self.resume = stage, config, resume
        self.run_dir = Path(config.output.dir).resolve()  # learners write into it, wherever their working directory is
        self.learners: LearnerGroup | None = None
        self.start_step, self.elapsed_before = 0, 0.0
        self.resume_from: Path | None = None
        self.state: dict = {}  # the trainer state a --resume restored ({} on a fresh start)
        self.signals = StopSignals(stage)
        self._parts: list[Shuts] = []
        self._logger: MetricsLogger | None = None
        self._bar = None

    # ---- start and stop

    def __enter__(self) -> "StageRun":
        from transformers import AutoTokenizer

        self.started = time.time()
        self.owns_ray = False
        try:
            self.resume_from = start_run(self.run_dir, self.resume, self.stage)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
            self.tokenizer = AutoTokenizer.from_pretrained(self.config.model.path)
            pad = self.tokenizer.pad_token_id
            self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
            self.owns_ray = not ray.is_initialized()
            init_ray(self.config.distributed.ray_address, ship_code=self.config.distributed.ship_code,
                     modules=plugin_modules([self.config]))
            check_resources(self.config)  # fail in seconds, before data are loaded or tokenised
            check_nodes(self.config, self.run_dir)  # other nodes: the same code, the run's files visible
            self.signals.install()  # after Ray's own SIGTERM handler (ray.init installs one), which it replaces
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._bar is not None:
                self._bar.close()
            if self._logger is not None:
                self._logger.close()
            errors = []
            for part in reversed(self._parts):
                try:
                    part.shutdown()
                except Exception as err:  # shut down the rest; after a failure, the first error is the one to see
                    errors.append(err)
            if self.owns_ray:
                ray.shutdown()
            if errors and exc is None:
                raise errors[0]
        finally:
            self.signals.restore()

    def own(self, part: Shuts) -> Shuts:
        """Shut `part` down when the run ends, however it ends."""
        self._parts.append(part)
        return part

    def start_learners(self, *, accumulation: int, total_steps: int) -> LearnerGroup:
        """The learner ranks (Ray actors forming one process group) with the recipe's model and optimizer."""
        config = self.config
        spec = LearnerSpec.from_config(config, accumulation=accumulation, total_steps=total_steps)
        spec = replace(spec, model=config.model.model_copy(update={"path": actor_path(config.model.path)}))
        self.learners = self.own(LearnerGroup(
            spec, config.distributed.num_workers, cpus_per_worker=config.distributed.cpus_per_worker,
            use_gpu=config.distributed.use_gpu, resources=config.distributed.resources_per_worker,
            name=f"{self.stage} learner", colocated=colocated_share(config)))
        return self.learners

    def restore(self, check: Callable[[dict], None]) -> int:
        """With --resume: `check` the saved trainer state, load it into the learners; the step to continue from."""
        if self.resume_from is not None:
            self.state = restore_learners(self.learners, self.resume_from, check, self.stage)
            self.start_step, self.elapsed_before = self.state["step"], self.state["elapsed_s"]
        return self.start_step

    def elapsed(self) -> float:
        """Seconds of this run so far, the runs it resumed included."""
        return self.elapsed_before + time.time() - self.started

    # ---- the loop

    def steps(self, start: int, total: int, trainer_state: Callable[[int], dict]) -> Iterator[int]:
        """Steps start .. total-1 with a progress bar. After each: a resumable checkpoint every `output.save_every`
        steps, and on a stop signal a checkpoint, then `Interrupted`."""
        self._bar = progress(total, initial=start, desc=self.stage, enabled=self.config.logging.progress)
        every = self.config.output.save_every
        for step in range(start, total):
            yield step
            self._bar.update(1)
            done = step + 1
            if done == total:  # the last step: the run finishes and exports, whatever was asked
                break
            if self.signals.requested or (every and done % every == 0):
                self.save_resumable(done, trainer_state(done))
            if self.signals.requested:
                print(f"[{self.stage}] stopped by {self.signals.requested}: resumable checkpoint at step {done} in "
                      f"{self.run_dir} (continue with --resume)", flush=True)
                raise Interrupted()

    def save_resumable(self, step: int, state: Mapping) -> None:
        """RUN/resumable/step_N: every rank's learner state plus `state` (data position, plan, elapsed time)."""
        state = {**state, "elapsed_s": self.elapsed()}
        with writing_resumable(self.run_dir, step, state, self.config.output.keep_last) as tmp:
            self.learners.call("save_state", str(tmp))

    def log(self, step: int, metrics: Mapping) -> None:
        """Append to RUN/metrics.jsonl (and TensorBoard / W&B when the recipe asks)."""
        if self._logger is None:
            config = self.config
            self._logger = MetricsLogger(self.run_dir, tensorboard=config.logging.tensorboard,
                                         wandb_project=config.logging.wandb_project, wandb_config=to_dict(config),
                                         resume_step=self.start_step if self.resume_from else None)
        self._logger.log(step, dict(metrics))

    def show(self, **values) -> None:
        """Values shown beside the progress bar."""
        if self._bar is not None:
            self._bar.set_postfix(**values)

    # ---- the end

    def finish(self, metrics: Mapping, *, data: Mapping, extra: Mapping | None = None,
               plots: Mapping | None = None) -> float:
        """Export RUN/checkpoint (weights, tokenizer, manifest) atomically, plot the curves; returns the wall time."""
        wall = self.elapsed()
        config = self.config
        manifest = build_manifest(stage=self.stage, config=to_dict(config), config_hash=config_hash(config),
                                  parent=config.model.path, data=dict(data), metrics=dict(metrics), wall_time_s=wall,
                                  extra={"placement": placement(learner=self.learners.placement_group),
                                         **(extra or {}), "model": self.learners.info})
        export(self.learners, self.tokenizer, self.run_dir, manifest)
        if self._logger is not None:
            self._logger.close()
            self._logger = None
        plot_curves(self.run_dir, plots)
        return wall


def export(learners: LearnerGroup, tokenizer, run_dir: Path, manifest: dict) -> Path:
    """Write checkpoint/ atomically: weights (LoRA merged), config, generation config, tokenizer with chat template."""
    from posttrain.data.chat import CHAT_TEMPLATE

    with atomic_dir(run_dir / EXPORT_DIR) as tmp:
        learners.call("export", str(tmp))
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(str(tmp))
        finalize_export(tmp, manifest)
        full = read_json(tmp / MANIFEST)
    write_json_atomic(run_dir / MANIFEST, full)
    return run_dir / EXPORT_DIR
