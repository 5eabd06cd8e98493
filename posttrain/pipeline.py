"""The chain: SFT -> DPO -> RLVR for one variant, each stage reading the last one's checkpoint.

For each stage in `CHAIN` the runner loads `RECIPES/<stage>.yaml` (with the
command-line overrides), points `model.path` at its input and `output.dir` at
`RUN_DIR/<stage>`, and hands the config to the stage driver registered under
the stage's name in `DRIVERS` (the real drivers are `posttrain.stages.<stage>.run`;
tests register cheap ones in a registry of their own). Inputs:

- SFT: `base` when given, else the SFT recipe's `model.path`. Olmo 3 starts
  the Instruct SFT from the Think SFT checkpoint: give `base=THINK_RUN/sft/checkpoint`
  (`think_sft_checkpoint` checks it; the CLI's `--think-run DIR`).
- DPO: `RUN_DIR/sft/checkpoint`; RLVR: `RUN_DIR/dpo/checkpoint`.

Skip rule. A stage is skipped when its previous run is still valid: its
exported checkpoint is complete (`checkpoints.is_complete_export`) and its
`manifest.json` records the same input checkpoint hash, the same resolved
recipe (compared by `recipe_hash`: every key except where the input is read
from, where the output goes and how progress is logged, which cannot change
the result) and the same data source fingerprints as this run would use.
Otherwise it runs, and every later stage then sees a new input hash and runs
too. So a stage's run directory copied elsewhere (or one made by `posttrain
STAGE` with the same recipe and input) counts as done. `start=STAGE` (`--from`) reruns STAGE and everything after it
unconditionally; the stages before it must have complete checkpoints and are
kept as they are (a stale one is reported, not rerun).

Relocation. The tiny recipes name their files under `runs/tiny`; a
`Relocation(old, new)` rewrites the recipe paths (model.path and every data
source) that lie under `old` to lie under `new`, so the tiny default can live
anywhere (`--tiny DIR`). Paths elsewhere, and hub names, are left alone.

Per-stage overrides. `key=value` applies to every stage; `STAGE:key=value`
(e.g. `rlvr:grpo.steps=20`) to one stage only.

Benchmark suites. With `suite_eval` (the CLI's `--eval-suite NAME`), each
stage's checkpoint is evaluated right after the stage (run, skipped or kept)
on that suite by `posttrain.eval.runner.evaluate`, into
`RUN_DIR/<stage>/eval/<suite>/` (results.json, <suite>.md, per-task JSONL, the
response cache, so an unchanged checkpoint only scores again). The suite is
resolved before the first stage starts, so an unknown name fails at once.

After each stage the runner writes a model card (README.md) into its
checkpoint (with the suite's table when evaluated), and at the end `RUN_DIR/pipeline.json`: what ran, what was
skipped and why, wall times and checkpoint paths (read by `posttrain report`).
"""

from __future__ import annotations

import contextvars
import copy
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from posttrain.checkpoints import (
    EXPORT_DIR, MANIFEST, checkpoint_hash, data_source_fingerprints, is_complete_export, read_json, write_json_atomic,
)
from posttrain.config import RecipeError, StageConfig, load_recipe, to_dict
from posttrain.eval.results import EVAL_DIR
from posttrain.registry import Registry
from posttrain.stages import CHAIN, driver

PIPELINE_FILE = "pipeline.json"
TINY_ROOT = Path("runs/tiny")  # where the tiny recipes expect the tiny default
# Recipe keys that cannot change what a stage computes: left out of the skip rule's recipe hash.
# (The input is compared by its content hash instead of its path.)
NOT_RESULT_KEYS = ("model.path", "output.dir", "logging")

Driver = Callable[[StageConfig], Path]  # runs one stage from its resolved config; returns its output dir


@dataclass(frozen=True)
class SuiteEval:
    """What `--eval-suite` asks for after each stage (see `posttrain.eval.runner.evaluate`)."""

    suite: str
    limit: int | None = None  # the first N items of each task
    engine: str = "vllm"
    engines: int = 1  # engine actors on Ray; 0: one engine in the driver's process
    overrides: tuple[str, ...] = ()  # task spec overrides (`sampling.n=2`, `TASK:key=value`, `rollout.key=value`)
    tasks: tuple[str, ...] = ()  # only these tasks of the suite

    def run(self, checkpoint: Path, out_dir: Path) -> dict:
        from posttrain.eval.runner import evaluate

        return evaluate(checkpoint, suite=self.suite, tasks=self.tasks, limit=self.limit, output=out_dir,
                        overrides=self.overrides, engine=self.engine, engines=self.engines)

    def check(self) -> None:
        """Raise `PipelineError` now when the suite, its tasks or the overrides are not valid."""
        from posttrain.eval.runner import EvalError, apply_overrides, resolve_tasks, split_overrides

        try:
            _, specs = resolve_tasks(self.suite, self.tasks)
            per_task, _ = split_overrides(self.overrides, [s.name for s in specs])
            for spec in specs:
                apply_overrides(spec, per_task[spec.name])
        except EvalError as err:
            raise PipelineError(f"--eval-suite: {err}") from None


class PipelineError(RuntimeError):
    """The chain cannot run as asked; the message says which stage and file, and what to do."""


class ModuleDriver:
    """The real driver of a stage: `posttrain.stages.<stage>.run(config, resume=False)`, imported when first run."""

    def __init__(self, stage: str):
        self.stage = stage

    def __call__(self, config: StageConfig) -> Path:
        from posttrain.orchestration.cluster import init_ray
        from posttrain.orchestration.shipping import plugin_modules

        # Started here, Ray outlives the stage (a stage shuts down only a Ray it started): one start per chain,
        # whose job ships every stage's verifier plugins (a job's code is fixed when it starts).
        init_ray(config.distributed.ray_address, ship_code=config.distributed.ship_code,
                 modules=plugin_modules([*CHAIN_CONFIGS.get(), config]))
        return Path(driver(self.stage)(config, resume=False))

    def __repr__(self) -> str:
        return f"ModuleDriver({self.stage!r})"


DRIVERS: Registry[Driver] = Registry("stage driver")
CHAIN_CONFIGS: contextvars.ContextVar[tuple[StageConfig, ...]] = contextvars.ContextVar("chain_configs", default=())
for _stage in CHAIN:
    DRIVERS.register(_stage, ModuleDriver(_stage))


# --------------------------------------------------------------------------
# Recipe paths and overrides


@dataclass(frozen=True)
class Relocation:
    """Recipe paths under `old` are read under `new` instead (`runs/tiny/data/x` -> `NEW/data/x`)."""

    old: Path
    new: Path

    def apply(self, path: str) -> str:
        candidate = Path(path)
        if candidate.is_absolute() != self.old.is_absolute() or not candidate.is_relative_to(self.old):
            return path
        return str(self.new / candidate.relative_to(self.old))


def relocate(config: StageConfig, relocations: Iterable[Relocation]) -> None:
    """Apply every relocation to the config's input paths: model.path and each data source."""
    for relocation in relocations:
        config.model.path = relocation.apply(config.model.path)
        for spec in (*config.data.train, *config.data.heldout):
            spec.path = relocation.apply(spec.path)


def split_overrides(items: Sequence[str]) -> dict[str, list[str]]:
    """`key=value` for every stage, `STAGE:key=value` for one: {stage: its overrides, in order}."""
    per_stage: dict[str, list[str]] = {stage: [] for stage in CHAIN}
    for item in items:
        key = item.split("=", 1)[0]
        if ":" not in key:
            for stage in CHAIN:
                per_stage[stage].append(item)
            continue
        stage, rest = item.split(":", 1)
        if stage not in per_stage:
            raise PipelineError(f"override {item!r}: {stage!r} is not a stage of the chain ({', '.join(CHAIN)})")
        per_stage[stage].append(rest)
    return per_stage


def stage_config(
    stage: str, recipes: Path, variant: str, overrides: Sequence[str], relocations: Sequence[Relocation],
    model_path: str | Path | None, out_dir: Path,
) -> StageConfig:
    """Load RECIPES/<stage>.yaml for this chain: overrides, relocations, the chain's input and output dir."""
    path = Path(recipes) / f"{stage}.yaml"
    if not path.is_file():
        raise PipelineError(f"{path}: no {stage} recipe (a chain's recipe directory holds sft.yaml, dpo.yaml, rlvr.yaml)")
    try:
        config = load_recipe(path, overrides)
    except RecipeError as err:
        raise PipelineError(str(err)) from None
    if config.stage != stage:
        raise PipelineError(f"{path}: this is a {config.stage} recipe, the chain needs a {stage} recipe here")
    if config.variant != variant:
        raise PipelineError(f"{path}: a {config.variant} recipe in a {variant} chain")
    relocate(config, relocations)
    if model_path is not None:
        config.model.path = str(model_path)
    config.output.dir = str(out_dir)
    return config


def think_sft_checkpoint(think_run: str | Path) -> Path:
    """THINK_RUN/sft/checkpoint, checked: complete and trained as a Think SFT (the Instruct SFT's input)."""
    checkpoint = Path(think_run) / "sft" / EXPORT_DIR
    if not is_complete_export(checkpoint):
        raise PipelineError(f"{checkpoint}: no complete Think SFT checkpoint; run the think chain first "
                            f"(posttrain pipeline --variant think --run-dir {think_run})")
    manifest = read_json(checkpoint / MANIFEST)
    if manifest.get("stage") != "sft" or (manifest.get("config") or {}).get("variant") != "think":
        raise PipelineError(f"{checkpoint}: its manifest says stage {manifest.get('stage')!r}, variant "
                            f"{(manifest.get('config') or {}).get('variant')!r}; the Instruct SFT starts from a think SFT")
    return checkpoint


# --------------------------------------------------------------------------
# The skip rule


@dataclass(frozen=True)
class StageInputs:
    """What decides whether a stage's previous run is still valid."""

    checkpoint: str  # model.path
    checkpoint_hash: str
    recipe_hash: str
    data: dict = field(default_factory=dict)  # {source path: fingerprint}

    @classmethod
    def of(cls, config: StageConfig) -> "StageInputs":
        return cls(checkpoint=config.model.path, checkpoint_hash=checkpoint_hash(config.model.path),
                   recipe_hash=recipe_hash(to_dict(config)), data=data_source_fingerprints(to_dict(config)))


def recipe_hash(config: dict) -> str:
    """sha256 of a resolved recipe without `NOT_RESULT_KEYS` (16 hex digits)."""
    kept = copy.deepcopy(config)
    for dotted in NOT_RESULT_KEYS:
        *parents, last = dotted.split(".")
        node = kept
        for part in parents:
            node = node.get(part) or {}
        node.pop(last, None)
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def why_rerun(out_dir: Path, inputs: StageInputs) -> str | None:
    """None when OUT_DIR holds a complete run made from exactly these inputs; else the reason to run."""
    checkpoint = out_dir / EXPORT_DIR
    if not checkpoint.exists():
        return "no previous run"
    if not is_complete_export(checkpoint):
        return "previous checkpoint incomplete"
    manifest = read_json(checkpoint / MANIFEST)
    if (manifest.get("parent") or {}).get("hash") != inputs.checkpoint_hash:
        return "input checkpoint changed"
    if recipe_hash(manifest.get("config") or {}) != inputs.recipe_hash:
        return "recipe changed"
    if manifest.get("data_sources") != inputs.data:
        return "data changed"
    return None


# --------------------------------------------------------------------------
# The runner


@dataclass
class StageResult:
    """One row of the chain's summary."""

    stage: str
    action: str  # "ran", "skipped" (inputs unchanged) or "kept" (before --from)
    reason: str
    out_dir: str
    checkpoint: str
    input: str
    wall_s: float  # this invocation's time on the stage
    train_wall_s: float | None  # the stage's own wall time, from its manifest
    metrics: dict = field(default_factory=dict)  # the stage's final metrics, from its manifest


def run(
    variant: str,
    recipes: str | Path,
    base: str | Path | None,
    run_dir: str | Path,
    start: str | None = None,
    overrides: Sequence[str] = (),
    *,
    relocations: Sequence[Relocation] = (),
    drivers: Registry[Driver] | None = None,
    eval_size: int | None = 0,
    suite_eval: SuiteEval | None = None,
) -> Path:
    """Run the chain for `variant` (see the module docstring); returns the last stage's output directory.

    start: None runs every stage whose inputs changed; a stage name reruns it and every later stage.
    drivers: the stage drivers by name (default: `DRIVERS`, the real stages).
    eval_size: runs the held-out suite of `posttrain.eval.heldout` on the input and on every stage's
        checkpoint, into RUN_DIR/eval.json: None on the whole held-out split, N > 0 on its first N RLVR
        prompts and DPO pairs, 0 not at all.
    suite_eval: a benchmark suite run on each stage's checkpoint right after the stage, into
        RUN_DIR/<stage>/eval/<suite>/ (None: none).
    """
    drivers = DRIVERS if drivers is None else drivers
    if start is not None and start not in CHAIN:
        raise PipelineError(f"--from {start!r}: not a stage of the chain ({', '.join(CHAIN)})")
    run_dir, recipes = Path(run_dir), Path(recipes)
    per_stage = split_overrides(overrides)
    started = time.time()
    # every recipe is loaded and validated before the first stage starts
    configs: dict[str, StageConfig] = {}
    for index, stage in enumerate(CHAIN):
        model_path = base if index == 0 else run_dir / CHAIN[index - 1] / EXPORT_DIR
        configs[stage] = stage_config(stage, recipes, variant, per_stage[stage], relocations, model_path, run_dir / stage)
    if suite_eval is not None:
        suite_eval.check()
    ray_was_up = _ray_is_up()
    results = []
    chain_configs = CHAIN_CONFIGS.set(tuple(configs.values()))
    try:
        for stage in CHAIN:
            results.append(run_stage(configs[stage], run_dir / stage, decide(stage, start), drivers))
            if suite_eval is not None:
                evaluate_suite(run_dir / stage, suite_eval)
    finally:
        CHAIN_CONFIGS.reset(chain_configs)
        if not ray_was_up and _ray_is_up():
            sys.modules["ray"].shutdown()
    if eval_size is None or eval_size > 0:
        from posttrain.model_card import write_model_card

        evaluate_stages(run_dir, variant, configs, eval_size)
        for stage in CHAIN:  # the cards now show the held-out suite too
            write_model_card(run_dir / stage / EXPORT_DIR)
    summary = {"variant": variant, "recipes": str(recipes), "base": str(base) if base is not None else None,
               "start": start, "overrides": list(overrides), "relocations": [[str(r.old), str(r.new)] for r in relocations],
               "wall_s": round(time.time() - started, 3), "stages": [asdict(r) for r in results],
               "eval_suite": asdict(suite_eval) if suite_eval is not None else None}
    write_json_atomic(run_dir / PIPELINE_FILE, summary)
    print(format_table(variant, run_dir, results, summary["wall_s"]))
    return run_dir / CHAIN[-1]


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")  # never imported when no real stage ran: nothing to shut down
    return ray is not None and ray.is_initialized()


def evaluate_stages(run_dir: Path, variant: str, configs: dict[str, StageConfig], size: int | None) -> dict:
    """The held-out suite on the chain's input (when local) and on each stage's checkpoint: RUN_DIR/eval.json."""
    from posttrain.eval import heldout

    suite = heldout.build_suite(variant, configs.get("rlvr"), configs.get("dpo"), size)
    first = configs[CHAIN[0]].model.path
    checkpoints = {"input": first} if Path(first).is_dir() else {}
    checkpoints.update({stage: Path(config.output.dir) / EXPORT_DIR for stage, config in configs.items()})
    return heldout.evaluate_chain(run_dir, checkpoints, suite)


def evaluate_suite(out_dir: Path, suite_eval: SuiteEval) -> dict:
    """The benchmark suite on OUT_DIR/checkpoint, into OUT_DIR/eval/<suite>/; the model card then shows its table."""
    from posttrain.model_card import write_model_card

    print(f"[pipeline eval {suite_eval.suite}] {out_dir / EXPORT_DIR}", flush=True)
    content = suite_eval.run(out_dir / EXPORT_DIR, out_dir / EVAL_DIR / suite_eval.suite)
    write_model_card(out_dir / EXPORT_DIR)
    return content


def decide(stage: str, start: str | None) -> str:
    """What `start` asks of this stage: "check" (skip if unchanged), "keep" (before --from) or "force"."""
    if start is None:
        return "check"
    return "keep" if CHAIN.index(stage) < CHAIN.index(start) else "force"


def run_stage(config: StageConfig, out_dir: Path, mode: str, drivers: Registry[Driver]) -> StageResult:
    """Check, skip, keep or run one stage (mode from `decide`); write its model card; summarise it."""
    from posttrain.model_card import write_model_card

    stage, tag = config.stage, f"[pipeline {config.variant} {config.stage}]"
    check_input_exists(config)
    stale = why_rerun(out_dir, StageInputs.of(config))
    began = time.time()
    if mode == "keep":
        if not is_complete_export(out_dir / EXPORT_DIR):
            raise PipelineError(f"--from: {out_dir / EXPORT_DIR}, which a later stage reads, is missing or "
                                f"incomplete; run the chain from {stage} (or earlier)")
        action, reason = "kept", "before --from" + (f" (stale: {stale})" if stale else "")
    elif mode == "check" and stale is None:
        action, reason = "skipped", "inputs unchanged"
    else:
        action, reason = "ran", ("--from" if mode == "force" else stale)
        print(f"{tag} running ({reason}): {config.model.path} -> {out_dir}", flush=True)
        returned = Path(drivers.get(stage)(copy.deepcopy(config)))
        if returned != out_dir or not is_complete_export(out_dir / EXPORT_DIR):
            raise PipelineError(f"{stage}: the driver returned {returned}, and {out_dir / EXPORT_DIR} "
                                "is not a complete checkpoint")
    if action != "ran":
        print(f"{tag} {action}: {reason} ({out_dir / EXPORT_DIR})", flush=True)
    manifest = read_json(out_dir / EXPORT_DIR / MANIFEST)
    write_model_card(out_dir / EXPORT_DIR)
    return StageResult(stage=stage, action=action, reason=reason, out_dir=str(out_dir),
                       checkpoint=str(out_dir / EXPORT_DIR), input=str(config.model.path),
                       wall_s=round(time.time() - began, 3), train_wall_s=manifest.get("wall_time_s"),
                       metrics=manifest.get("metrics") or {})


def check_input_exists(config: StageConfig) -> None:
    """Fail early on a local input checkpoint that is not there (a hub name, `org/name`, is not checked)."""
    path = Path(config.model.path)
    local = path.is_absolute() or config.model.path.startswith(".") or len(path.parts) > 2
    if local and not path.is_dir():
        hint = " (build the tiny default: posttrain tiny --out DIR)" if path.name == "base" else ""
        raise PipelineError(f"{config.stage}: input checkpoint {path} does not exist{hint}")


# --------------------------------------------------------------------------
# What the user sees


def format_table(variant: str, run_dir: Path, results: Sequence[StageResult], wall_s: float) -> str:
    """The chain's summary as an aligned text table."""
    rows = [("stage", "action", "why", "time", "checkpoint")]
    for r in results:
        shown = r.wall_s if r.action == "ran" else r.train_wall_s
        took = "-" if shown is None else f"{shown:.0f}s" + ("" if r.action == "ran" else " (earlier)")
        rows.append((r.stage, r.action, r.reason, took, r.checkpoint))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{variant} chain in {run_dir} ({wall_s:.0f}s):"]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
