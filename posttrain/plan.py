"""What a recipe asks of a cluster, worked out before anything runs.

`make_plan(config)` returns the GPUs and nodes (learners, and for RLVR the
inference engines), how a step's batch splits over the ranks, tokens per step,
steps and total tokens, and a rough GPU-hour estimate. It raises `PlanError`,
listing every problem, when the resources do not add up: learner or engine
GPUs that do not fill whole nodes, an engine wider than a node, a batch that
is not a whole number of micro-batches on the data-parallel ranks, an RL step
whose samples do not split into its minibatches.

Counting rules:

- GPUs: learners are `distributed.num_workers` (one rank per GPU, when
  `distributed.use_gpu`); inference is `rollout.num_engines x
  rollout.tensor_parallel_size`; an RLVR `judge` server adds `judge.num_gpus`.
  Learners, engines and the judge sit on separate nodes of
  `Facts.gpus_per_node` GPUs, unless all fit on one node together.
- Every learner rank is data-parallel: each processes
  `batch.micro_batch_size` sequences of `data.max_length` tokens per forward
  pass, and gradient accumulation makes up the rest.
- Steps: `optim.max_steps` when set; SFT from `Facts.tokens` (tokens a pass)
  x epochs / tokens per step; DPO from rows (`Facts.rows`, or the lines of
  local .jsonl sources) x epochs / pairs per step; RLVR from `grpo.steps`.

The plan reads only recipe keys that a stage reads too. What a recipe does
not say (node size, the model's parameter count and the mixture's size when
neither is on this machine) comes in `Facts`, from command-line options.

Estimates (see `Assumptions`): training costs 6N FLOPs per token (Kaplan et
al. 2020, "Scaling Laws for Neural Language Models": forward 2N, backward
4N), plus 2N per token for a forward-only pass (DPO's reference log-probs,
RLVR's log-probs of the sampling policy); attention FLOPs are left out, which
underestimates long sequences (at 32K tokens attention costs about as much
again for a 7B model). GPUs deliver `mfu` of their peak. Generation runs at
`gen_tokens_per_s` per inference GPU for a 7.3B model, inversely
proportional to the parameter count. Where a length is only bounded (DPO
pairs, RL prompts and responses) every sequence is taken to be `fill` of the
bound: the default 1.0 makes those figures upper bounds.

Memory per GPU (learners, and RLVR's engines) comes from `posttrain.memory`, for the model's shape: a
local checkpoint's config.json, else the published Olmo 3 shape named by `Facts.shape` or within 10% of
`Facts.parameters`. A recipe that does not fit `Facts.gpu` is refused like one whose GPUs do not add up.

Imports only the standard library, posttrain.config and posttrain.memory.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from posttrain import memory
from posttrain.config import StageConfig
from posttrain.memory import GB, MARGIN, OLMO3_SHAPES, EngineSetup, LearnerSetup, Shape
from posttrain.registry import Registry


@dataclass(frozen=True)
class Assumptions:
    """Throughput figures behind the estimates; each is a command-line option of `posttrain plan`."""

    peak_tflops: float = 989.0  # NVIDIA H100 SXM, dense bfloat16 (datasheet); the report's GPU-hours assume H100
    mfu: float = 0.40  # fraction of peak a tuned FSDP/ZeRO-3 training job reaches
    gen_tokens_per_s: float = 1000.0  # vLLM decode per inference GPU for a 7.3B model at long responses; rough
    gen_reference_params: float = 7.3e9  # the model size gen_tokens_per_s is quoted for
    fill: float = 1.0  # mean length of bounded sequences as a fraction of the bound (1.0: upper bounds)

    def describe(self) -> list[str]:
        return [
            f"training: 6N FLOPs per trained token (+2N per forward-only token), attention not counted,"
            f" at {self.mfu:.0%} of {self.peak_tflops:g} TFLOP/s per GPU",
            f"generation: {self.gen_tokens_per_s:g} tokens/s per inference GPU at {self.gen_reference_params / 1e9:g}B"
            f" parameters, scaled by 1/N",
            f"bounded lengths (DPO pairs, RL prompts and responses) at {self.fill:.0%} of their maximum"
            + (" (upper bounds)" if self.fill >= 1 else ""),
        ]


@dataclass(frozen=True)
class Facts:
    """What the plan needs that no stage setting says; each is a command-line option of `posttrain plan`."""

    gpus_per_node: int = 8  # GPUs per machine (the Olmo 3 report's runs use 8xH100 nodes)
    parameters: Optional[int] = None  # model size; None: counted from a local checkpoint's config.json
    rows: Optional[int] = None  # rows (examples, pairs or prompts) of the training mixture; None: local .jsonl lines
    tokens: Optional[int] = None  # tokens in one pass over an SFT mixture; SFT steps need it (or optim.max_steps)
    shape: Optional[str] = None  # published Olmo 3 shape (memory.OLMO3_SHAPES) when the checkpoint is not local
    gpu: str = "h100"  # GPU model whose memory the recipe must fit (memory.GPUS)


class PlanError(ValueError):
    """A recipe whose resources do not add up; `problems` has one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: the resources do not add up:\n  " + "\n  ".join(problems))


@dataclass
class Resources:
    on_gpu: bool
    gpus_per_node: int
    learners: int  # learner ranks (GPUs when on_gpu), all data-parallel
    engine_gpus: int  # rollout.num_engines x tensor_parallel_size (RLVR on GPU), else 0
    nodes: int
    judge_gpus: int = 0  # judge.num_gpus (RLVR with a served judge, on GPU), else 0
    colocated: bool = False  # distributed.colocate: the engines run on the learners' GPUs

    @property
    def gpus(self) -> int:
        engines = 0 if self.colocated else self.engine_gpus
        return (self.learners + engines + self.judge_gpus) if self.on_gpu else 0


@dataclass
class Plan:
    source: str
    stage: str
    rows: list[tuple[str, str]] = field(default_factory=list)  # (label, value); label "" continues
    problems: list[str] = field(default_factory=list)
    steps: Optional[int] = None
    tokens_per_step: Optional[int] = None
    total_tokens: Optional[float] = None
    gpu_hours: Optional[float] = None
    resources: Optional[Resources] = None

    def add(self, label: str, value: str) -> None:
        self.rows.append((label, value))


# stage name -> function(plan, config, resources, assumptions, params, facts) that fills in the stage's rows
STAGE_PLANS: Registry[Callable] = Registry("stage plan")


def make_plan(config: StageConfig, source: str = "recipe", assumptions: Assumptions = Assumptions(),
              facts: Facts = Facts()) -> Plan:
    """Work out what `config` asks for; raise PlanError naming every problem."""
    plan = Plan(source=source, stage=config.stage)
    params = parameter_count(config, facts)
    about = f"{_si(params)} parameters" if params else "parameter count unknown: give --parameters"
    plan.add("recipe", f"{config.stage}, {config.variant}, from {config.model.path} ({about})")
    plan.resources = resources(plan, config, facts.gpus_per_node)
    STAGE_PLANS.get(config.stage)(plan, config, plan.resources, assumptions, params, facts)
    if plan.resources.on_gpu:
        _plan_memory(plan, config, plan.resources, params, facts)
    if plan.problems:
        raise PlanError(source, plan.problems)
    return plan


def resources(plan: Plan, config: StageConfig, per_node: int) -> Resources:
    """GPUs and nodes of `per_node` GPUs; appends problems for GPU groups that do not fit whole nodes."""
    dist = config.distributed
    rollout = getattr(config, "rollout", None)
    engines = rollout.num_engines * rollout.tensor_parallel_size if rollout is not None and dist.use_gpu else 0
    judge = getattr(config, "judge", None)
    judge_gpus = judge.num_gpus if judge is not None and dist.use_gpu else 0
    res = Resources(dist.use_gpu, per_node, dist.num_workers, engines, 0, judge_gpus, colocated=dist.colocate)
    if not dist.use_gpu:
        res.nodes = 1
        plan.add("learners", f"{dist.num_workers} CPU rank(s), no GPUs (distributed.use_gpu is false)")
        if rollout is not None:
            plan.add("inference", f"{rollout.num_engines} {rollout.engine} engine(s) on the CPU")
        return res
    if rollout is not None:
        _check_engines(plan, rollout.tensor_parallel_size, per_node)
    _check_fills_nodes(plan, "learner GPUs (distributed.num_workers)", dist.num_workers, per_node)
    own_engines = 0 if res.colocated else engines  # colocated engines hold no GPUs of their own
    _check_fills_nodes(plan, "inference GPUs (rollout.num_engines x tensor_parallel_size)", own_engines, per_node)
    if dist.num_workers + own_engines + judge_gpus <= per_node:
        res.nodes = 1
    else:
        res.nodes = sum(math.ceil(gpus / per_node) for gpus in (dist.num_workers, own_engines, judge_gpus))
    plan.add("learners", f"{dist.num_workers} GPUs ({_nodes(dist.num_workers, per_node)})")
    if rollout is not None and res.colocated:
        plan.add("inference", f"{rollout.num_engines} engines on the learners' GPUs, one each (distributed.colocate):"
                              " they sleep while the learners update")
    elif rollout is not None:
        engines_are = f"{rollout.num_engines} engines x tensor parallel {rollout.tensor_parallel_size}"
        plan.add("inference", f"{engines} GPUs ({_nodes(engines, per_node)}): {engines_are}")
    if judge_gpus:
        plan.add("judge", f"{judge_gpus} GPUs ({_nodes(judge_gpus, per_node)}): {judge.model} served by vLLM")
    plan.add("total", f"{res.gpus} GPUs on {res.nodes} node(s) of {per_node}")
    return res


def _check_engines(plan: Plan, tp: int, per_node: int) -> None:
    if tp > per_node:
        plan.problems.append(f"rollout.tensor_parallel_size ({tp}) is larger than a node ({per_node} GPUs, --gpus-per-node)")
    elif per_node % tp:
        plan.problems.append(
            f"rollout.tensor_parallel_size ({tp}) does not divide a node of {per_node} GPUs: an engine would straddle two nodes"
        )


def _check_fills_nodes(plan: Plan, what: str, gpus: int, per_node: int) -> None:
    if gpus > per_node and gpus % per_node:
        plan.problems.append(f"{what}: {gpus} GPUs do not fill whole nodes of {per_node} (--gpus-per-node)")


def _nodes(gpus: int, per_node: int) -> str:
    if gpus <= per_node:
        return "part of a node" if gpus < per_node else "1 node"
    return f"{gpus // per_node} nodes"


# --------------------------------------------------------------------------
# Stages


def _micro_batches(plan: Plan, config: StageConfig, res: Resources, unit: str) -> Optional[int]:
    """Sequences (or pairs) per step split over data-parallel ranks x micro-batch: the accumulation steps, or None."""
    batch = config.batch
    per_pass = res.learners * batch.micro_batch_size
    if batch.tokens is not None:
        per_pass_tokens = per_pass * config.data.max_length
        if batch.tokens % per_pass_tokens:
            plan.problems.append(
                f"batch.tokens ({batch.tokens:,}) is not a multiple of data-parallel ranks x batch.micro_batch_size x"
                f" data.max_length ({res.learners} x {batch.micro_batch_size} x {config.data.max_length:,} = {per_pass_tokens:,})"
            )
            return None
        accumulation = batch.tokens // per_pass_tokens
        split = f"{res.learners} ranks x {batch.micro_batch_size} x {config.data.max_length:,} tokens x {accumulation} accumulation"
        plan.add("batch", f"{batch.tokens:,} tokens = {split}")
        return accumulation
    if batch.sequences % per_pass:
        plan.problems.append(
            f"batch.sequences ({batch.sequences}) is not a multiple of data-parallel ranks x batch.micro_batch_size"
            f" ({res.learners} x {batch.micro_batch_size} = {per_pass})"
        )
        return None
    accumulation = batch.sequences // per_pass
    plan.add("batch", f"{batch.sequences} {unit} = {res.learners} ranks x {batch.micro_batch_size} x {accumulation} accumulation")
    return accumulation


def _plan_sft(plan: Plan, config, res: Resources, assume: Assumptions, params: Optional[int], facts: Facts) -> None:
    _micro_batches(plan, config, res, "sequences")
    data, optim = config.data, config.optim
    tokens_per_step = config.batch.tokens or config.batch.sequences * data.max_length
    bound = "" if config.batch.tokens else "at most "
    plan.tokens_per_step = tokens_per_step
    plan.add("tokens per step", f"{bound}{tokens_per_step:,}")
    rows = training_rows(config, facts)
    if rows is not None:
        plan.add("data", f"{rows:,} rows" + (f", {_si(facts.tokens)} tokens a pass" if facts.tokens else ""))
    if optim.max_steps:
        plan.steps = optim.max_steps
        how = "optim.max_steps"
    elif facts.tokens:
        plan.steps = math.ceil(facts.tokens * optim.epochs / tokens_per_step)
        how = f"{optim.epochs:g} epochs x {_si(facts.tokens)} tokens / {tokens_per_step:,}"
    else:
        plan.add("steps", "unknown: give --tokens (tokens a pass over the mixture) or set optim.max_steps")
        return
    plan.total_tokens = plan.steps * tokens_per_step
    plan.add("steps", f"{plan.steps:,} ({how})")
    plan.add("total tokens", f"{bound}{_si(plan.total_tokens)}")
    _estimate_training(plan, res, assume, params, 6.0, plan.total_tokens)


def _plan_dpo(plan: Plan, config, res: Resources, assume: Assumptions, params: Optional[int], facts: Facts) -> None:
    _micro_batches(plan, config, res, "pairs")
    data, optim = config.data, config.optim
    if config.batch.tokens is not None:
        plan.problems.append("DPO counts its batch in pairs: set batch.sequences, not batch.tokens")
        return
    pairs = config.batch.sequences
    tokens_per_step = round(pairs * 2 * data.max_length * assume.fill)  # chosen and rejected, each up to max_length
    plan.tokens_per_step = tokens_per_step
    plan.add("tokens per step", f"{_bound(assume)}{tokens_per_step:,} ({pairs} pairs x 2 x {data.max_length:,})")
    rows = training_rows(config, facts)
    if optim.max_steps:
        plan.steps, how = optim.max_steps, "optim.max_steps"
    elif rows is not None:
        plan.steps = math.ceil(rows * optim.epochs / pairs)
        how = f"{optim.epochs:g} epoch(s) x {rows:,} pairs / {pairs}"
    else:
        plan.add("steps", "unknown: give --rows (pairs in the mixture) or set optim.max_steps")
        return
    plan.total_tokens = plan.steps * tokens_per_step
    plan.add("steps", f"{plan.steps:,} ({how})")
    plan.add("total tokens", f"{_bound(assume)}{_si(plan.total_tokens)}")
    # policy forward + backward (6N) every step, reference forward (2N) once
    _estimate_training(plan, res, assume, params, 8.0, plan.total_tokens)


def _plan_rlvr(plan: Plan, config, res: Resources, assume: Assumptions, params: Optional[int], facts: Facts) -> None:
    grpo, rollout = config.grpo, config.rollout
    samples = grpo.prompts_per_step * grpo.samples_per_prompt
    per_update = samples // grpo.minibatches  # (the recipe's validation already checked that they divide)
    updates = f"{grpo.minibatches} update(s) of {per_update}"
    plan.add("samples per step", f"{grpo.prompts_per_step} prompts x {grpo.samples_per_prompt} samples = {samples}, {updates}")
    _micro_batches(plan, config, res, "samples per update")
    generated = samples * rollout.max_response_length * assume.fill
    trained = samples * (rollout.max_prompt_length + rollout.max_response_length) * assume.fill
    plan.tokens_per_step = round(trained)
    plan.steps = grpo.steps
    plan.total_tokens = trained * grpo.steps
    lengths = f"prompt {rollout.max_prompt_length:,} + response {rollout.max_response_length:,}"
    plan.add("tokens per step", f"{_bound(assume)}{round(generated):,} generated, {round(trained):,} trained ({lengths})")
    rows = training_rows(config, facts)
    passes = f", {grpo.steps * grpo.prompts_per_step / rows:.2f} passes over {rows:,} prompts" if rows else ""
    plan.add("steps", f"{grpo.steps:,} (grpo.steps): {grpo.steps * grpo.prompts_per_step:,} prompts drawn{passes}")
    if grpo.active_sampling:
        plan.add("", "active sampling draws more prompts when groups are all equal: more generation than counted here")
    plan.add("total tokens", f"{_bound(assume)}{_si(generated * grpo.steps)} generated, {_si(plan.total_tokens)} trained")
    if not res.on_gpu or not params:
        plan.add("estimate", _no_estimate(res, params))
        return
    peak = assume.peak_tflops * 1e12 * assume.mfu
    train_s = 8.0 * params * trained / (res.learners * peak)  # update (6N) + log-probs of the sampling policy (2N)
    gen_rate = assume.gen_tokens_per_s * assume.gen_reference_params / params * res.engine_gpus
    gen_s = generated / gen_rate if gen_rate else math.inf
    # asynchronous rollouts overlap generation with training; on-policy runs take turns
    step_s = max(gen_s, train_s) if grpo.max_async_steps > 0 else gen_s + train_s
    wall_h = step_s * grpo.steps / 3600
    plan.gpu_hours = wall_h * res.gpus
    plan.add("estimate", f"{_approx(assume)}{step_s:,.0f} s a step (generation {gen_s:,.0f} s, training {train_s:,.0f} s,"
             f" {'overlapped' if grpo.max_async_steps > 0 else 'in turn'})")
    plan.add("", f"{_approx(assume)}{wall_h:,.1f} h wall, {plan.gpu_hours:,.0f} GPU-hours ({res.gpus} GPUs held throughout)")


STAGE_PLANS.register("sft", _plan_sft)
STAGE_PLANS.register("dpo", _plan_dpo)
STAGE_PLANS.register("rlvr", _plan_rlvr)


def _estimate_training(
    plan: Plan, res: Resources, assume: Assumptions, params: Optional[int], flops_per_param: float, tokens: float
) -> None:
    if not res.on_gpu or not params:
        plan.add("estimate", _no_estimate(res, params))
        return
    flops = flops_per_param * params * tokens
    gpu_s = flops / (assume.peak_tflops * 1e12 * assume.mfu)
    plan.gpu_hours = gpu_s / 3600
    wall_h = plan.gpu_hours / res.learners
    plan.add("estimate", f"{flops_per_param:g} x {params / 1e9:.1f}B x {_si(tokens)} tokens = {flops:.2e} FLOPs")
    plan.add("", f"~{wall_h:,.1f} h wall, ~{plan.gpu_hours:,.0f} GPU-hours")


def _no_estimate(res: Resources, params: Optional[int]) -> str:
    return "not estimated: " + ("a CPU run" if not res.on_gpu else "give --parameters")


def _bound(assume: Assumptions) -> str:
    return "at most " if assume.fill >= 1 else "about "


def _approx(assume: Assumptions) -> str:
    return "at most ~" if assume.fill >= 1 else "~"


def _si(x: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


# --------------------------------------------------------------------------
# Memory per GPU (the arithmetic is posttrain.memory's)

# stage -> (items per forward pass, tokens per item) on a learner rank
FORWARD_PASS: dict[str, Callable[[StageConfig], tuple[int, int]]] = {
    "sft": lambda c: (c.batch.micro_batch_size, c.data.max_length),
    "dpo": lambda c: (c.batch.micro_batch_size, 2 * c.data.max_length),  # a pair: chosen and rejected
    # one packed row of pack_length tokens, else micro_batch_size samples padded to the longest
    "rlvr": lambda c: ((1, c.batch.pack_length) if c.batch.pack_length else
                       (c.batch.micro_batch_size, c.rollout.max_prompt_length + c.rollout.max_response_length)),
}


def learner_setup(config: StageConfig, res: Resources, params: int) -> LearnerSetup:
    """What a learner rank's memory depends on, from the recipe (plain DDP counts as ZeRO stage 0)."""
    ds, model = config.deepspeed, config.model
    micro_batch, item_tokens = FORWARD_PASS[config.stage](config)
    return LearnerSetup(
        params=params, ranks=res.learners, dtype_bytes=memory.DTYPE_BYTES[model.dtype],
        zero_stage=ds.zero_stage if ds.enabled else 0, offload_optimizer=ds.enabled and ds.offload_optimizer,
        offload_params=ds.enabled and ds.offload_params, overlap_comm=ds.overlap_comm,
        reduce_bucket=ds.reduce_bucket_size, allgather_bucket=ds.allgather_bucket_size,
        prefetch_bucket=ds.stage3_prefetch_bucket_size, checkpointing=model.gradient_checkpointing,
        micro_batch=micro_batch, item_tokens=item_tokens, loss_chunk=model.loss_chunk_tokens)


def engine_setup(config: StageConfig, params: int) -> EngineSetup:
    """What an inference GPU's memory depends on, from the recipe's rollout section."""
    rollout = config.rollout
    return EngineSetup(params=params, tensor_parallel=rollout.tensor_parallel_size,
                       dtype_bytes=memory.DTYPE_BYTES[rollout.dtype], utilization=rollout.gpu_memory_utilization,
                       max_tokens=rollout.max_prompt_length + rollout.max_response_length)


def _plan_memory(plan: Plan, config: StageConfig, res: Resources, params: Optional[int], facts: Facts) -> None:
    """Rows for a learner's and an engine's memory; a problem, naming the fixes, where one does not fit."""
    shape = model_shape(config, facts)
    if shape is None or not params:
        plan.add("memory", f"not estimated: give --shape ({', '.join(OLMO3_SHAPES)}) or --parameters near one")
        return
    capacity = memory.GPUS[facts.gpu]
    gpu = f"the {facts.gpu.upper()}'s {capacity / GB:g} GB"
    setup = learner_setup(config, res, params)
    parts = memory.learner_memory(shape, setup)
    total, allowed = sum(parts.values()), MARGIN * capacity
    plan.add("learner memory", f"{total / GB:.1f} GB per GPU, of {allowed / GB:.0f} GB allowed ({MARGIN:.0%} of {gpu})")
    zero = f"ZeRO-{setup.zero_stage} over {setup.ranks} ranks"
    plan.add("", f"{memory.gb(parts)} GB ({zero}, {setup.micro_batch} x {setup.item_tokens:,} tokens a forward pass)")
    if total > allowed:
        fixes = memory.learner_fixes(shape, setup) or ["a GPU with more memory (--gpu)"]
        plan.problems.append(f"learner memory: {total / GB:.1f} GB per GPU is over {MARGIN:.0%} of {gpu}: "
                             + "; ".join(fixes))
    if getattr(config, "rollout", None) is not None:
        engine = engine_setup(config, params)
        _plan_engine_memory(plan, shape, engine, capacity, gpu)
        if res.colocated:
            _plan_colocated_memory(plan, parts, engine, capacity, gpu)


def _plan_colocated_memory(plan: Plan, learner_parts: dict, engine: EngineSetup, capacity: float, gpu: str) -> None:
    """Colocated, the tightest moment is the engines' start: the learner holds its states (not yet offloaded; no
    activations), the engine takes its share. Later the two take turns, each beside the other's remainder."""
    held = sum(v for k, v in learner_parts.items() if k not in ("activations", "loss"))
    total, allowed = held + engine.utilization * capacity, MARGIN * capacity
    plan.add("colocated", f"{total / GB:.1f} GB per GPU at the engines' start: the learner's states {held / GB:.1f} GB"
                          f" beside the engine's {engine.utilization * capacity / GB:.1f} GB, of {allowed / GB:.0f} GB")
    if total > allowed:
        plan.problems.append(f"colocated memory: the learner's states ({held / GB:.1f} GB) and the engine's share "
                             f"({engine.utilization:g} of {gpu}) exceed {MARGIN:.0%} of it: lower "
                             "rollout.gpu_memory_utilization, or shard the learner over more ranks")


def _plan_engine_memory(plan: Plan, shape: Shape, engine: EngineSetup, capacity: float, gpu: str) -> None:
    mem = memory.engine_memory(shape, engine, capacity)
    plan.add("engine memory", f"{mem['budget'] / GB:.1f} GB per GPU ({engine.utilization:g} of {gpu}):"
             f" weights {mem['weights'] / GB:.1f}, KV cache {mem['KV cache'] / GB:.1f} GB")
    window = (f"; {shape.sliding_layers} of {shape.layers} layers hold at most {shape.sliding_window:,} tokens"
              if shape.sliding_window else "")
    plan.add("", f"{mem['sequences']:,.0f} sequences of {engine.max_tokens:,} tokens at once"
             f" ({mem['per sequence'] / GB:.2f} GB each{window})")
    if mem["sequences"] < 1:
        fixes = memory.engine_fixes(shape, engine, capacity) or ["a GPU with more memory (--gpu)"]
        plan.problems.append(f"engine memory: the weights ({mem['weights'] / GB:.1f} GB per GPU) leave no room for one"
                             f" sequence of {engine.max_tokens:,} tokens in {engine.utilization:g} of {gpu}: "
                             + "; ".join(fixes))


# --------------------------------------------------------------------------
# What the plan reads besides the recipe


def training_rows(config: StageConfig, facts: Facts = Facts()) -> Optional[int]:
    """Rows of the training mixture: `facts.rows`, else the lines of local .jsonl sources, else None."""
    if facts.rows:
        return facts.rows
    total = 0
    for spec in config.data.train:
        path = Path(spec.path)
        if path.suffix != ".jsonl" or not path.is_file():
            return None
        with path.open("rb") as lines:
            rows = sum(1 for line in lines if line.strip())
        total += spec.count if spec.count is not None else round(rows * (spec.fraction or 1.0))
    return total


def parameter_count(config: StageConfig, facts: Facts = Facts()) -> Optional[int]:
    """`facts.parameters`, else counted from a local checkpoint's config.json (decoder-only Olmo-style), else
    from the published shape `facts.shape`, else None."""
    if facts.parameters:
        return facts.parameters
    hf = local_hf_config(config) or OLMO3_SHAPES.get(facts.shape or "")
    try:
        return count_parameters(hf) if hf else None
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def local_hf_config(config: StageConfig) -> Optional[dict]:
    """The Hugging Face config.json of a local checkpoint, or None (a hub name, a checkpoint not written yet)."""
    path = Path(config.model.path) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def model_shape(config: StageConfig, facts: Facts = Facts()) -> Optional[Shape]:
    """A local checkpoint's shape, else the published one named by `facts.shape`, else the one within 10% of
    `facts.parameters`, else None."""
    hf = local_hf_config(config) or OLMO3_SHAPES.get(facts.shape or "") or _published_shape_near(facts.parameters)
    try:
        return Shape.from_hf(hf) if hf else None
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def _published_shape_near(parameters: Optional[int]) -> Optional[dict]:
    if not parameters:
        return None
    nearest = min(OLMO3_SHAPES.values(), key=lambda hf: abs(count_parameters(hf) - parameters))
    return nearest if abs(count_parameters(nearest) - parameters) <= 0.1 * parameters else None


def count_parameters(hf_config: dict) -> int:
    """Weights of a decoder-only transformer from its Hugging Face config (norms included, biases not).

    Per layer: attention q and o (hidden x heads*head_dim each), k and v (hidden x kv_heads*head_dim
    each), a gated MLP (3 x hidden x intermediate) and the norms; plus the input embedding and, unless
    tied, the output projection (vocab x hidden each).
    """
    hidden, layers = hf_config["hidden_size"], hf_config["num_hidden_layers"]
    heads = hf_config["num_attention_heads"]
    kv_heads = hf_config.get("num_key_value_heads") or heads
    head_dim = hf_config.get("head_dim") or hidden // heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * hf_config["intermediate_size"]
    norms = 2 * hidden + heads * head_dim + kv_heads * head_dim  # Olmo 3 also normalises q and k
    embeddings = hf_config["vocab_size"] * hidden * (1 if hf_config.get("tie_word_embeddings") else 2)
    return layers * (attention + mlp + norms) + embeddings + hidden


def render(plan: Plan, assumptions: Assumptions) -> str:
    """The plan as aligned text, ending with the assumptions behind the estimates when there are any."""
    width = max(len(label) for label, _ in plan.rows)
    lines = [plan.source]
    lines += [f"  {label:<{width}}  {value}" for label, value in plan.rows]
    if plan.gpu_hours is not None:
        lines.append("  assumptions:")
        lines += [f"    {line}" for line in assumptions.describe()]
    return "\n".join(lines) + "\n"
