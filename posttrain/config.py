"""Typed, validated recipes: YAML -> one config object per stage.

A recipe is a YAML mapping with a `stage:` key (sft, dpo or rlvr) that picks
its schema from `STAGE_SCHEMAS`. `base: other.yaml` (relative to the file, or
a list of files) inherits values; the recipe's own keys override them, deeply.
Command-line overrides `key.sub=value` are applied last; values are parsed as
YAML scalars (`optim.lr=1e-5`, `lora.enabled=true`, `data.train=[...]`).

Everything is checked before any work starts: an unknown key fails naming the
file it came from, the key path and the closest valid key; a wrong type or an
out-of-range value fails naming the key and what was expected.

This module imports only pydantic and yaml, so `posttrain recipe show` answers
in well under a second.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from posttrain.registry import Registry

# --------------------------------------------------------------------------
# Sections shared by every stage


# Ray's own resource names: reserved through cpus_per_* and use_gpu, never as custom resources.
BUILTIN_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


def _custom_resources(value: dict[str, float]) -> dict[str, float]:
    for name in value:
        if name in BUILTIN_RESOURCES or name.startswith("node:"):
            raise ValueError(f"{name!r} is not a custom resource (CPUs and GPUs have their own keys: "
                             "cpus_per_* and distributed.use_gpu; node:IP names a node, not a role)")
    return value


# {name: amount} of custom Ray resources (`ray start --resources '{"trainer": 8}'`) an actor's bundle also reserves.
CustomResources = Annotated[dict[str, Annotated[float, Field(gt=0)]], AfterValidator(_custom_resources)]


class Section(BaseModel):
    """Base for every config block: unknown keys are errors, values are checked on assignment.

    Numbers are accepted where text is expected (`model.path=123`, a project named 2025).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), coerce_numbers_to_str=True)


class ModelSection(Section):
    path: str = Field(description="input checkpoint: a local Hugging Face directory or a hub name")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="training dtype; bfloat16 on GPU")
    attn_implementation: str = Field(
        "sdpa", description="transformers attention backend: sdpa, eager, flex_attention (document masks and sliding "
                            "windows as block masks, no T x T mask), flash_attention_2 (varlen over packed documents)")
    loss_chunk_tokens: int = Field(
        4096, ge=0, description="positions whose vocabulary logits the loss holds at once; the output layer runs on "
                                "loss positions only, chunk by chunk, recomputed in backward (0: one chunk)")
    gradient_checkpointing: bool = Field(False, description="recompute activations to save memory")
    trust_remote_code: bool = Field(False, description="allow custom model code from the checkpoint")


class DatasetSpec(Section):
    path: str = Field(description="local .jsonl/.json/.parquet/.arrow file or directory, or a hub dataset name")
    name: Optional[str] = Field(None, description="hub dataset configuration name")
    split: str = Field("train", description="split to read (hub datasets and directories of splits)")
    count: Optional[int] = Field(None, ge=1, description="take this many rows from the source (sampled with the data seed)")
    fraction: Optional[float] = Field(None, gt=0, description="take this fraction of the source; above 1 repeats it")
    columns: dict[str, str] = Field(default_factory=dict, description="rename source columns: {source_name: expected_name}")
    revision: Optional[str] = Field(None, description="hub datasets: the commit, tag or branch to read (pin it: a dataset "
                                    "updated on the hub otherwise changes the run); the manifest records the resolved commit")
    streaming: bool = Field(False, description="hub datasets too big to materialise: read rows as a stream "
                                               "(count, not fraction, bounds what is taken)")

    @model_validator(mode="after")
    def _count_or_fraction(self):
        if self.count is not None and self.fraction is not None:
            raise ValueError("give either count or fraction, not both")
        if self.streaming and self.count is None:
            raise ValueError("streaming: a streamed source needs count, the rows to read from it (its size is "
                             "unknown until read; fraction cannot be used)")
        return self


class MixtureSection(Section):
    """The data keys of every stage, and all of RLVR's (its lengths are rollout.max_prompt_length and max_response_length)."""

    train: list[DatasetSpec] = Field(description="training sources, mixed by count or fraction")
    heldout: list[DatasetSpec] = Field(default_factory=list, description="held-out sources for evaluation")
    seed: int = Field(0, description="seed for sampling and shuffling the mixture")
    on_bad_row: Literal["error", "skip"] = Field("error", description="malformed row: fail naming file/row/field, or skip and count")
    shuffle: bool = Field(True, description="shuffle the mixed rows with the data seed")


class DataSection(MixtureSection):
    """The data of SFT and DPO, which train on whole sequences from the mixture."""

    max_length: int = Field(2048, ge=8, description="maximum tokens per training sequence")
    overlong: Literal["truncate", "drop"] = Field("drop", description="what to do with examples longer than max_length")
    num_proc: Optional[int] = Field(None, ge=1, description="processes that tokenise (datasets.map); default: the CPUs, at most 16")
    cache_dir: Optional[str] = Field(None, description="token cache; default $POSTTRAIN_CACHE or ~/.cache/posttrain/tokens")


class OutputSection(Section):
    dir: str = Field(description="run directory of this stage: checkpoint/, metrics.jsonl, manifest.json, plots")
    save_every: int = Field(0, ge=0, description="write a resumable checkpoint every N optimizer steps (0: only at the end)")
    keep_last: int = Field(2, ge=1, description="resumable checkpoints kept on disk")


class DistributedSection(Section):
    num_workers: int = Field(1, ge=1, description="training ranks (Ray workers)")
    use_gpu: bool = Field(False, description="one GPU per rank")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="torch.distributed backend; auto: nccl on GPU, gloo on CPU")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per rank")
    ray_address: Optional[str] = Field(None, description="Ray cluster to join; default: RAY_ADDRESS or a local Ray")
    resources_per_worker: CustomResources = Field(
        default_factory=dict, description="custom Ray resources each rank (and RLVR's reference policy) also reserves, "
                                          "e.g. {trainer: 1}: the ranks go only to nodes started with "
                                          "ray start --resources '{\"trainer\": N}'")
    colocate: bool = Field(False, description="RLVR: learner rank i and rollout engine i share one bundle (one GPU "
                                              "with use_gpu) and take turns: the engines sleep (their memory "
                                              "released) while the learners update, the learners' states are "
                                              "offloaded while the engines generate (posttrain/orchestration/"
                                              "colocation.py); needs num_engines = num_workers, on-policy steps")
    ship_code: bool = Field(True, description="send this checkout's posttrain and rewards packages (and local "
                                              "verifiers.modules) to every Ray worker through Ray's runtime "
                                              "environment; false: each node imports its own install, checked to "
                                              "be the same code on entry")


class DeepSpeedSection(Section):
    """ZeRO and the communication knobs a lab tunes; defaults are DeepSpeed's own (0.19), overlap on.

    A key a stage does not use is ignored there rather than refused (the bucket sizes at stage 0,
    allgather_bucket_size at stage 3, the stage3_* keys below 3), so one override
    `deepspeed.zero_stage=2` switches a ZeRO-3 recipe without unsetting what its bases tuned;
    the learner passes DeepSpeed only the keys of its stage.
    """

    enabled: bool = Field(True, description="train through DeepSpeed (ZeRO); false: plain torch DDP")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage")
    offload_optimizer: bool = Field(False, description="keep optimizer state on the CPU (ZeRO-Offload)")
    offload_params: bool = Field(False, description="keep parameters on the CPU (ZeRO-3 only)")
    overlap_comm: bool = Field(True, description="ZeRO 1-3: reduce gradients (ZeRO-3: also gather parameters) while "
                                                 "the backward pass runs; its buffers take about 4.5 x the bucket sizes")
    reduce_bucket_size: int = Field(500_000_000, ge=1, description="ZeRO 1-3: gradient elements reduced at a time; "
                                    "larger: fewer, bigger messages and more buffer memory (transformers' 'auto': hidden^2)")
    allgather_bucket_size: int = Field(500_000_000, ge=1, description="ZeRO-1/2 only: updated parameter elements "
                                       "all-gathered at a time after the optimizer step")
    stage3_prefetch_bucket_size: int = Field(50_000_000, ge=0, description="ZeRO-3 only: parameter elements gathered "
                                             "ahead of their use (transformers' 'auto': 0.9 x hidden^2)")
    stage3_param_persistence_threshold: int = Field(100_000, ge=0, description="ZeRO-3 only: parameters smaller than "
                                                    "this stay whole on every rank (norms, biases): less latency-bound "
                                                    "traffic (transformers' 'auto': 10 x hidden)")
    stage3_max_live_parameters: int = Field(1_000_000_000, ge=0, description="ZeRO-3 only: gathered parameter elements "
                                            "a rank holds before it releases some")

    @model_validator(mode="after")
    def _offload_needs_zero3(self):
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        return self


class LoggingSection(Section):
    every: int = Field(1, ge=1, description="log metrics every N optimizer steps")
    tensorboard: bool = Field(True, description="also write TensorBoard events under the run directory")
    wandb_project: Optional[str] = Field(None, description="Weights & Biases project; unset: no W&B")
    progress: bool = Field(True, description="show a progress bar")


class OptimSection(Section):
    """The optimizer of every stage; RLVR's run length is grpo.steps."""

    lr: float = Field(gt=0, description="peak learning rate")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    schedule: Literal["linear", "constant", "cosine"] = Field("linear", description="decay after warmup (linear: to 0)")
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="fraction of steps spent warming up linearly")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")


class EpochsOptimSection(OptimSection):
    """The optimizer of SFT and DPO, which run for passes over the mixture."""

    epochs: float = Field(1.0, gt=0, description="passes over the training mixture")
    max_steps: Optional[int] = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")


class BatchSection(Section):
    tokens: Optional[int] = Field(None, ge=1, description="tokens per optimizer step (Olmo 3 SFT: 1M); accumulation is derived")
    sequences: Optional[int] = Field(None, ge=1, description="sequences per optimizer step, if not given in tokens")
    micro_batch_size: int = Field(1, ge=1, description="sequences per forward pass per rank")

    @model_validator(mode="after")
    def _tokens_or_sequences(self):
        if (self.tokens is None) == (self.sequences is None):
            raise ValueError("give exactly one of batch.tokens or batch.sequences")
        return self


class RLVRBatchSection(BatchSection):
    pack_length: Optional[int] = Field(
        None, ge=1, description="pack whole samples (prompt + response) into micro-batches of up to this many tokens, "
                                "one row per micro-batch with per-sample document masks; unset: micro_batch_size "
                                "padded samples per forward pass")


class LoraSection(Section):
    enabled: bool = Field(False, description="train LoRA adapters (merged into the weights on export)")
    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="adapter scaling numerator")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: Union[str, list[str]] = Field("all-linear", description="modules to adapt")


class StageConfig(Section):
    """Fields every stage has; each stage schema extends it with its own section."""

    stage: str = Field(description="which stage schema this recipe uses (sft, dpo, rlvr)")
    variant: Literal["think", "instruct"] = Field("think", description="chat style: Think (<think> block) or Instruct")
    seed: int = Field(0, description="global seed: init, dropout, sampling")
    model: ModelSection
    data: MixtureSection
    output: OutputSection
    optim: OptimSection
    batch: BatchSection
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    lora: LoraSection = Field(default_factory=LoraSection)


# --------------------------------------------------------------------------
# Stage schemas


class SequenceStageConfig(StageConfig):
    """SFT and DPO: sequences of at most data.max_length tokens, for optim.epochs passes (or optim.max_steps)."""

    data: DataSection
    optim: EpochsOptimSection

    @model_validator(mode="after")
    def _no_colocation(self):
        if self.distributed.colocate:
            raise ValueError(f"distributed.colocate is for RLVR (learners and rollout engines sharing devices); "
                             f"{self.stage.upper()} has no engines: remove it")
        return self


class SFTSection(Section):
    packing: bool = Field(True, description="pack several conversations per sequence, no attention across them")
    train_on_think: bool = Field(True, description="include the <think> block in the loss for Think data")


class SFTConfig(SequenceStageConfig):
    stage: Literal["sft"]
    sft: SFTSection = Field(default_factory=SFTSection)


class DPOSection(Section):
    loss: str = Field("dpo_norm", description="registered preference loss: dpo, dpo_norm, ipo, simpo")
    beta: float = Field(5.0, gt=0, description="inverse temperature of the implicit reward")
    gamma: float = Field(0.0, ge=0, description="SimPO target margin")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO label noise")
    nll_weight: float = Field(0.0, ge=0, description="weight of the chosen side's per-token NLL added to the loss (RPO; 0: off, as Olmo 3)")
    reference_cache: Optional[str] = Field(None, description="directory of cached reference log-probs; default: under the run directory")
    max_length_diff: Optional[int] = Field(None, ge=0, description="drop pairs whose chosen/rejected token lengths differ by more")
    on_bad_pair: Literal["error", "skip"] = Field("error", description="identical sides, missing side, differing prompts")


class DPOConfig(SequenceStageConfig):
    stage: Literal["dpo"]
    dpo: DPOSection = Field(default_factory=DPOSection)

    @model_validator(mode="after")
    def _pairs_per_step(self):
        if self.batch.sequences is None:
            raise ValueError("DPO counts its batch in pairs: give batch.sequences (pairs per step), not batch.tokens")
        return self


class RolloutSection(Section):
    engine: str = Field("vllm", description="registered rollout engine: vllm or hf")
    num_engines: int = Field(1, ge=1, description="rollout engine actors")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM memory fraction (CPU memory on vLLM-CPU)")
    kv_cache_gib: Optional[float] = Field(None, gt=0, description="VLLM_CPU_KVCACHE_SPACE on CPU builds")
    temperature: float = Field(1.0, ge=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    max_prompt_length: int = Field(2048, ge=1, description="prompt tokens kept (left-truncated beyond)")
    max_response_length: int = Field(8192, ge=1, description="generated tokens per sample")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="engine weights dtype; auto: float32 on CPU, bfloat16 on GPU")
    enforce_eager: Optional[bool] = Field(None, description="vLLM: no CUDA graphs or compilation; None: on for CPU, off for GPU")
    max_num_seqs: Optional[int] = Field(None, ge=1, description="vLLM: sequences decoded concurrently (None: vLLM's default)")
    hf_batch_size: int = Field(64, ge=1, description="hf engine: sequences per transformers generate call")
    weight_sync: Literal["broadcast", "reload", "ipc"] = Field("reload", description="how learner weights reach the engines after each step: broadcast (learner rank 0 broadcasts flat buckets to every engine worker over one collective group: NCCL on GPUs, gloo on CPUs), reload (through Ray's object store into load_weights; where no group can be formed), or ipc (each learner rank hands its colocated engine the weights through shared memory (CUDA IPC on GPUs, /dev/shm on CPUs); rank i and engine i must share a node, as distributed.colocate places them)")
    inflight_updates: bool = Field(False, description="broadcast on vllm: an engine takes new weights between two decoding steps of the requests it holds (which carry on with the new weights; each completion records the version behind each token) instead of after them")
    weight_bucket_mb: float = Field(256.0, gt=0, description="broadcast and ipc: size of one flat bucket (MiB); memory on both sides is bounded by it (ipc: two buckets on the learner's side)")
    weight_sync_timeout_s: float = Field(300.0, gt=0, description="broadcast: seconds a member waits on the weight group (joining, a round) before the sync fails and the group is formed again")
    cpus_per_engine: float = Field(1.0, gt=0, description="CPUs reserved per engine actor (its torch threads: the whole part)")
    resources_per_engine: CustomResources = Field(
        default_factory=dict, description="custom Ray resources each engine also reserves, e.g. {rollout: 1}: "
                                          "engines go only to nodes that offer them (see distributed.resources_per_worker)")
    max_restarts: int = Field(3, ge=0, description="RLVR: engine actors restarted after dying, in all, before the run fails")
    sleep_mode: bool = Field(False, description="build the engine able to sleep (release its KV cache and weights "
                                                "while learners share its devices, take them back before generating): "
                                                "vLLM's sleep mode on GPU (enable_sleep_mode), its CPU twin here; set by "
                                                "distributed.colocate")


class GRPOSection(Section):
    prompts_per_step: int = Field(64, ge=1, description="prompts per optimizer step")
    samples_per_prompt: int = Field(8, ge=1, description="group size n")
    minibatches: int = Field(1, ge=1, description="optimizer updates per step (the step's samples split evenly)")
    steps: int = Field(1, ge=1, description="training steps")
    advantage: str = Field("group_mean", description="registered advantage estimator: group_mean, group_mean_std")
    loss_aggregation: Literal["token", "sequence"] = Field("token", description="token: DAPO token-level mean; sequence: per-sample mean")
    eps_low: float = Field(0.2, ge=0, description="lower PPO clip (ratio >= 1 - eps_low)")
    eps_high: float = Field(0.272, ge=0, description="upper PPO clip, clip-higher (ratio <= 1 + eps_high)")
    kl_coef: float = Field(0.0, ge=0, description="KL penalty to the reference policy (Olmo 3: 0)")
    filter_equal_groups: bool = Field(True, description="drop groups whose rewards are all equal")
    active_sampling: bool = Field(False, description="draw more prompts until the batch has enough non-equal groups")
    max_active_sampling_rounds: int = Field(4, ge=1, description="bound on refill rounds per step")
    truncated_is_cap: Optional[float] = Field(None, gt=0, description="cap on engine/learner importance weights (None: off)")
    overlong: Literal["none", "filter", "soft_penalty"] = Field("none", description="treatment of truncated responses")
    overlong_buffer: int = Field(0, ge=0, description="soft penalty ramps over the last N tokens")
    format_reward: float = Field(0.0, ge=0, description="added to the reward of a response in its variant's shape "
                                 "(Think: one <think> block, then a non-blank answer; Instruct: no think tags); "
                                 "0: off (Olmo 3)")
    max_async_steps: int = Field(1, ge=0, description="generation may run k policy versions ahead (0: on-policy)")


class VerifiersSection(Section):
    modules: list[str] = Field(default_factory=list, description="modules importing @rewards.register verifiers")
    timeout: float = Field(10.0, gt=0, description="seconds per scored item before it scores 0")
    max_workers: Optional[int] = Field(None, ge=1, description="reward worker processes")
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-verifier context, e.g. {code: {pass_threshold: 0.99}}")
    aliases: dict[str, str] = Field(default_factory=dict, description="verifier names in the data -> registered names; "
                                    "extends the built-in table of open-instruct's names (rewards.aliases.ALIASES)")
    num_workers: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(
        "auto", description="reward-worker actors, each scoring in its own process pool; auto: one per "
                            "verifiers.engines_per_worker rollout engines (posttrain/orchestration/scoring.py)")
    engines_per_worker: int = Field(8, ge=1, description="num_workers auto: rollout engines per reward worker "
                                                         "(8: one per 8-GPU node of engines)")
    cpus_per_worker: float = Field(1.0, ge=0, description="CPUs reserved per reward-worker actor (0: no reservation, for machines where verifiers are light)")
    resources_per_worker: CustomResources = Field(
        default_factory=dict, description="custom Ray resources each reward worker also reserves (pins them to nodes "
                                          "that offer them; see distributed.resources_per_worker)")


class JudgeSection(Section):
    """An LLM judge served by vLLM on the cluster for the `llm_judge` verifier (posttrain/orchestration/judge_server.py)."""

    model: str = Field(description="judge checkpoint: a local Hugging Face directory or a hub name")
    served_name: str = Field("judge", min_length=1, description="model name the server answers to (sent by llm_judge)")
    num_gpus: int = Field(0, ge=0, description="GPUs of the server, tensor-parallel over them (0: vLLM-CPU)")
    cpus: float = Field(1.0, gt=0, description="CPUs reserved for the server (its torch threads on CPU: the whole part)")
    port: Optional[int] = Field(None, ge=1, le=65535, description="server port on its node (None: a free one)")
    max_model_len: Optional[int] = Field(None, ge=1, description="context length of the server (None: the model's)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM memory fraction (CPU memory on vLLM-CPU)")
    kv_cache_gib: Optional[float] = Field(None, gt=0, description="KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE on CPU builds)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="server weights dtype (auto: the checkpoint's)")
    extra_args: list[str] = Field(default_factory=list, description="more `vllm.entrypoints.openai.api_server` flags, "
                                  "e.g. [--enable-prefix-caching]")
    startup_timeout: float = Field(900.0, gt=0, description="seconds to wait for the server to answer /v1/models")

    @model_validator(mode="after")
    def _own_flags(self):
        # these flags are set from the fields above; a second value would silently win or lose
        owned = {"--model", "--served-model-name", "--host", "--port", "--tensor-parallel-size", "--max-model-len",
                 "--gpu-memory-utilization", "--kv-cache-memory-bytes", "--dtype", "--api-key"}
        clash = sorted({a.split("=", 1)[0] for a in self.extra_args} & owned)
        if clash:
            raise ValueError(f"judge.extra_args sets {', '.join(clash)}, which the judge section's own keys set")
        return self


class EvalSection(Section):
    every: int = Field(0, ge=0, description="evaluate held-out pass@1 every N steps (0: only before and after)")
    max_prompts: Optional[int] = Field(None, ge=1, description="held-out prompts used per evaluation")
    temperature: float = Field(0.0, ge=0, description="evaluation sampling temperature (0: greedy)")


class RLVRConfig(StageConfig):
    stage: Literal["rlvr"]
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    grpo: GRPOSection = Field(default_factory=GRPOSection)
    verifiers: VerifiersSection = Field(default_factory=VerifiersSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    judge: Optional[JudgeSection] = Field(None, description="serve an LLM judge for llm_judge on the cluster (None: "
                                          "verifiers.options.llm_judge names an endpoint, or no row uses it)")
    batch: RLVRBatchSection = Field(
        default_factory=lambda: RLVRBatchSection(sequences=1),
        description="RLVR: batch.sequences = samples per optimizer update = grpo.prompts_per_step x "
                    "samples_per_prompt / grpo.minibatches (derived when omitted); batch.micro_batch_size = "
                    "samples per forward pass per rank",
    )

    @model_validator(mode="before")
    @classmethod
    def _derive_batch(cls, raw: Any) -> Any:
        """An omitted `batch` (or one giving only micro_batch_size) gets the sequences grpo implies."""
        if not isinstance(raw, dict):
            return raw
        batch = raw.get("batch")
        if batch is not None and (not isinstance(batch, dict) or "sequences" in batch or "tokens" in batch):
            return raw
        grpo = raw.get("grpo") if isinstance(raw.get("grpo"), dict) else {}
        fields = GRPOSection.model_fields
        try:
            samples = int(grpo.get("prompts_per_step", fields["prompts_per_step"].default)) * int(
                grpo.get("samples_per_prompt", fields["samples_per_prompt"].default))
            per_update = max(1, samples // max(1, int(grpo.get("minibatches", fields["minibatches"].default))))
        except (TypeError, ValueError):
            return raw  # the grpo section's own errors are reported by validation
        return {**raw, "batch": {**(batch or {}), "sequences": per_update}}

    @model_validator(mode="after")
    def _rlvr_rules(self):
        grpo = self.grpo
        samples = grpo.prompts_per_step * grpo.samples_per_prompt
        if samples % grpo.minibatches:
            raise ValueError(f"grpo.prompts_per_step x samples_per_prompt ({samples}) is not divisible by "
                             f"grpo.minibatches ({grpo.minibatches})")
        if self.batch.tokens is not None:
            raise ValueError("RLVR counts its batch in samples: give batch.sequences (or omit it), not batch.tokens")
        if self.batch.sequences * grpo.minibatches != samples:
            raise ValueError(f"batch.sequences ({self.batch.sequences}) must be grpo.prompts_per_step x samples_per_prompt"
                             f" / grpo.minibatches = {samples // grpo.minibatches} (or be omitted)")
        if grpo.overlong == "soft_penalty" and not 0 < grpo.overlong_buffer <= self.rollout.max_response_length:
            raise ValueError(f"grpo.overlong soft_penalty needs 0 < grpo.overlong_buffer <= rollout.max_response_length "
                             f"({self.rollout.max_response_length}), got {grpo.overlong_buffer}")
        longest = self.rollout.max_prompt_length + self.rollout.max_response_length
        if self.batch.pack_length is not None and self.batch.pack_length < longest:
            raise ValueError(f"batch.pack_length ({self.batch.pack_length}) must hold the longest sample: "
                             f"rollout.max_prompt_length + max_response_length = {longest}")
        if grpo.advantage == "group_mean_std" and grpo.samples_per_prompt < 2:
            raise ValueError("grpo.advantage group_mean_std needs grpo.samples_per_prompt >= 2")
        if self.rollout.inflight_updates and (self.rollout.weight_sync, self.rollout.engine) != ("broadcast", "vllm"):
            raise ValueError("rollout.inflight_updates needs rollout.weight_sync=broadcast and rollout.engine=vllm "
                             f"(got {self.rollout.weight_sync} on {self.rollout.engine}): the weights must reach "
                             "a vLLM worker between decoding steps")
        if self.rollout.weight_sync == "ipc" and self.rollout.tensor_parallel_size != 1:
            raise ValueError("rollout.weight_sync=ipc hands each learner rank's weights to one engine on its own GPU: "
                             f"rollout.tensor_parallel_size must be 1 (got {self.rollout.tensor_parallel_size})")
        return self


    @model_validator(mode="after")
    def _colocation_rules(self):
        if not self.distributed.colocate:
            return self
        dist, rollout = self.distributed, self.rollout
        problems = []
        if self.grpo.max_async_steps:
            problems.append(f"grpo.max_async_steps must be 0, got {self.grpo.max_async_steps} (the engines cannot "
                            "generate ahead while the learners hold the devices)")
        if rollout.inflight_updates:
            problems.append("rollout.inflight_updates must be false (the engines sleep while the learners update)")
        if rollout.tensor_parallel_size != 1:
            problems.append(f"rollout.tensor_parallel_size must be 1, got {rollout.tensor_parallel_size} (an engine "
                            "shares its learner rank's one GPU)")
        if rollout.num_engines != dist.num_workers:
            problems.append(f"rollout.num_engines ({rollout.num_engines}) must equal distributed.num_workers "
                            f"({dist.num_workers}): one engine beside each learner rank")
        if dist.use_gpu and rollout.weight_sync == "broadcast":
            problems.append("rollout.weight_sync must be ipc or reload on GPUs: NCCL cannot hold a learner rank and "
                            "its engine on one GPU in one group")
        if problems:
            raise ValueError("distributed.colocate: " + "; ".join(problems))
        rollout.sleep_mode = True  # the engines must be built able to release their memory
        return self

    @model_validator(mode="after")
    def _judge_rules(self):
        given = sorted({"endpoint", "model"} & set(self.verifiers.options.get("llm_judge", {})))
        if self.judge is not None and given:
            raise ValueError(f"the judge section serves llm_judge and sets its endpoint and model; drop "
                             f"verifiers.options.llm_judge.{' and '.join(given)} (or the judge section)")
        return self


STAGE_SCHEMAS: Registry[type[StageConfig]] = Registry("stage schema")
STAGE_SCHEMAS.register("sft", SFTConfig)
STAGE_SCHEMAS.register("dpo", DPOConfig)
STAGE_SCHEMAS.register("rlvr", RLVRConfig)


# --------------------------------------------------------------------------
# Loading


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names file, key and fix."""


COMMAND_LINE = "command line"


class _RecipeLoader(yaml.SafeLoader):
    """YAML with the scalars a recipe author expects.

    PyYAML follows YAML 1.1, where `1e-5` is a *string* (a float needs a dot)
    and `yes`/`no`/`on`/`off` are booleans (`model.path=on` would become True).
    Here exponent floats are floats and only true/false are booleans, as in
    YAML 1.2.
    """


_BOOL, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_RecipeLoader.add_implicit_resolver(
    _FLOAT, re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)


def load_yaml(text: str) -> Any:
    """Parse recipe YAML (see `_RecipeLoader` for the scalar rules)."""
    return yaml.load(text, Loader=_RecipeLoader)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StageConfig:
    """Read a recipe file (following `base:`), apply `key=value` overrides, validate."""
    raw, origins = resolve_raw(path)
    apply_overrides(raw, origins, overrides)
    return validate(raw, origins, default_source=str(path))


def apply_overrides(raw: dict, origins: dict[str, str], overrides: list[str] | tuple[str, ...]) -> None:
    """Apply `key.sub=value` items in order; errors they cause are reported as from the command line."""
    for item in overrides:
        key, value = parse_override(item)
        set_path(raw, key, value)
        _set_origin(origins, key, COMMAND_LINE)


def resolve_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """The merged mapping of a recipe and its bases, and the file each leaf key came from.

    Bases are merged in order (a later base wins), then the file's own keys.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise RecipeError(f"recipe inheritance cycle: {chain}")
    try:
        own = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(own, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got {type(own).__name__}")
    merged: dict = {}
    origins: dict[str, str] = {}
    for base in _base_paths(path, own.pop("base", None)):
        base_raw, base_origins = resolve_raw(base, (*_seen, resolved))
        deep_merge(merged, base_raw)
        for key, source in base_origins.items():
            _set_origin(origins, key, source)
    deep_merge(merged, own)
    for key in leaf_paths(own):
        _set_origin(origins, key, str(path))
    return merged, origins


def _base_paths(path: Path, bases: Any) -> list[Path]:
    """The files named by a recipe's `base:` (a path or a list of paths, relative to the recipe)."""
    if bases is None:
        return []
    names = [bases] if isinstance(bases, str) else bases
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise RecipeError(f"{path}: key 'base': expected a file name or a list of file names, got {bases!r}")
    found = []
    for name in names:
        base = Path(os.path.normpath(path.parent / name))  # recipes/x/../_base.yaml -> recipes/_base.yaml
        if not base.is_file():
            raise RecipeError(f"{path}: key 'base': base recipe {name!r} not found (looked for {base})")
        found.append(base)
    return found


def _set_origin(origins: dict[str, str], key: str, source: str) -> None:
    """Record that `source` set `key`; whatever it replaced below that key came from it too."""
    prefix = key + "."
    for stale in [k for k in origins if k.startswith(prefix)]:
        del origins[stale]
    origins[key] = source


def deep_merge(into: dict, other: dict) -> dict:
    """Merge `other` into `into` in place; mappings merge, everything else (lists too) replaces."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def leaf_paths(tree: dict, prefix: str = "") -> list[str]:
    """Dotted paths of the non-mapping values (and empty mappings) of a nested mapping."""
    out = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        out.extend(leaf_paths(value, dotted + ".") if isinstance(value, dict) and value else [dotted])
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """`optim.lr=1e-5` -> ("optim.lr", 1e-05). The value is YAML: numbers, true/false, null, [lists], {maps}.

    A value that is not valid YAML is kept as the plain string.
    """
    if "=" not in item:
        raise RecipeError(f"{COMMAND_LINE}: override {item!r} must look like key.sub=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"{COMMAND_LINE}: override {item!r}: empty key part")
    try:
        value = load_yaml(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def set_path(tree: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested mapping, creating mappings on the way; `data.train.0.count` indexes a list."""
    parts = dotted.split(".")
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, parts[: depth + 1])]
            continue
        child = node.get(part)
        if not isinstance(child, (dict, list)):
            child = node[part] = {}
        node = child
    if isinstance(node, list):
        node[_list_index(node, parts[-1], parts)] = value
    else:
        node[parts[-1]] = value


def _list_index(items: list, part: str, parts: list[str]) -> int:
    where = ".".join(parts)
    if not part.lstrip("-").isdigit() or not -len(items) <= int(part) < len(items):
        raise RecipeError(f"{COMMAND_LINE}: override key {where!r}: {part!r} is not an index of a list of {len(items)}")
    return int(part)


def validate(raw: dict, origins: dict[str, str] | None = None, default_source: str = "recipe") -> StageConfig:
    """Pick the schema from `stage:` and validate, turning errors into one clear message."""
    origins = origins or {}
    stage = raw.get("stage")
    valid = ", ".join(STAGE_SCHEMAS.names())
    if stage is None:
        raise RecipeError(f"{default_source}: missing key 'stage' (one of {valid})")
    if not isinstance(stage, str) or stage not in STAGE_SCHEMAS:
        source = origin_of("stage", origins, default_source)
        detail = STAGE_SCHEMAS.unknown_message(stage) if isinstance(stage, str) else f"expected one of {valid}, got {stage!r}"
        raise RecipeError(f"{source}: key 'stage': {detail}")
    schema = STAGE_SCHEMAS.get(stage)
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        lines = describe_errors(schema, err.errors(), origins, default_source)
        raise RecipeError(f"invalid {stage} recipe:\n  " + "\n  ".join(lines)) from None


def describe_errors(schema: type[BaseModel], errors: list[dict], origins: dict[str, str], default_source: str) -> list[str]:
    """One line per bad key; the alternatives of a union (str or list[str]) are merged into one line."""
    grouped: dict[tuple, list[dict]] = {}
    for error in errors:
        keys = tuple(error["loc"]) if error["type"] == "extra_forbidden" else _recipe_keys(schema, tuple(error["loc"]))
        grouped.setdefault(keys, []).append(error)
    return [describe_error(schema, keys, group, origins, default_source) for keys, group in grouped.items()]


def describe_error(schema: type[BaseModel], loc: tuple, errors: list[dict], origins: dict[str, str], default_source: str) -> str:
    error = errors[0]
    dotted = ".".join(str(p) for p in loc)
    source = origin_of(dotted, origins, default_source)
    if error["type"] == "extra_forbidden":
        valid = field_names_at(schema, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"; did you mean {'.'.join(map(str, (*loc[:-1], close[0])))!r}?" if close else ""
        return f"{source}: unknown key {dotted!r}{hint} (valid here: {', '.join(valid)})"
    if error["type"] == "missing":
        field = _field_at(schema, loc)
        about = f" ({field.description})" if field is not None and field.description else ""
        return f"{source}: missing required key {dotted!r}{about}"
    expected = " or ".join(dict.fromkeys(e["msg"].replace("Value error, ", "") for e in errors))
    got = error.get("input")
    where = f"key {dotted!r}" if dotted else "recipe"
    if isinstance(got, dict):  # a rule across the fields of a section: the section is the input
        return f"{source}: {where}: {expected}"
    return f"{source}: {where}: {expected}, got {got!r}"


def origin_of(dotted: str, origins: dict[str, str], default: str) -> str:
    """The file that set this key, else the closest enclosing key's, else every file that set keys inside it."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:end]))
        if found:
            return found
    prefix = dotted + "."
    inside = dict.fromkeys(src for key, src in origins.items() if key.startswith(prefix))
    return ", ".join(inside) if inside else default  # a rule across a section's keys names every file that set them


def _recipe_keys(schema: type[BaseModel], loc: tuple) -> tuple:
    """The part of a pydantic error location that is recipe keys and list indices.

    Pydantic appends the alternative's type to the location of a union error
    (`lora.target_modules.list[str].0`); those tags are not keys of the recipe.
    """
    annotation: Any = schema
    for depth, part in enumerate(loc):
        annotation = _strip_optional(annotation)
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and part in annotation.model_fields:
            annotation = annotation.model_fields[part].annotation
        elif origin in (list, tuple) and isinstance(part, int):
            args = typing.get_args(annotation)
            annotation = args[min(part, len(args) - 1)] if origin is tuple and Ellipsis not in args else args[0]
        elif origin is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return loc[:depth]
    return loc


def _strip_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None))
    return annotation


def _field_at(schema: type[BaseModel], loc: tuple) -> Any:
    """The pydantic FieldInfo named by `loc` (list indices skipped), or None."""
    model = _walk_models(schema, loc[:-1]) if loc else None
    return model.model_fields.get(loc[-1]) if model is not None else None


def _walk_models(schema: type[BaseModel], loc: tuple) -> Any:
    """The BaseModel reached by following field names in `loc` (ints: list items), or None."""
    model: Any = schema
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = _model_in(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def field_names_at(schema: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys of the (possibly nested, possibly inside a list) model at `loc`."""
    model = _walk_models(schema, loc)
    return sorted(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside Optional[...] / list[...] / Union[...], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------
# Writing down what ran


def to_dict(config: BaseModel) -> dict:
    """The resolved recipe as plain JSON-compatible data (tuples become lists)."""
    return config.model_dump(mode="json")


def config_hash(config: BaseModel) -> str:
    """A stable hash of the resolved recipe (keys sorted), for manifests and caches."""
    text = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dump_yaml(config: BaseModel) -> str:
    """The resolved recipe as YAML, in schema order; `load_recipe` reads it back to an equal config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)
