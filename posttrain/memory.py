"""Per-GPU memory of a recipe's learners and (RLVR) inference engines, worked out before anything runs.

`posttrain plan` prints these figures and refuses a recipe that does not fit,
naming the changes that would make it fit, the largest saving first. They are
estimates of the big terms (within some 10-20%), not a profiler; GB here are
10^9 bytes, as GPUs are sold.

A learner rank, for N parameters, R learner ranks, b bytes per value of the
training dtype (bfloat16: 2), L layers, hidden H, KV = kv_heads x head_dim,
MLP width I, vocabulary V, and T tokens per forward pass:

- model states (Rajbhandari et al. 2020, "ZeRO"): weights bN, gradients bN,
  AdamW 12N (an fp32 master copy 4N, none when training in fp32, and two fp32
  moments 8N). ZeRO-1 divides the optimizer state by R, ZeRO-2 the gradients
  too, ZeRO-3 the weights too; `deepspeed.offload_optimizer` moves the
  optimizer state to the CPU, `offload_params` the weights.
- ZeRO-3 gathers: the largest module whole (the embedding, V x H, or one
  layer) plus `stage3_prefetch_bucket_size` elements, b bytes each.
- communication buckets: `reduce_bucket_size` (+ `allgather_bucket_size` at
  ZeRO-1/2) elements of b bytes, times 4.5 with `overlap_comm` (the rule of
  the transformers DeepSpeed guide: 5e8-element buckets cost 9 GB).
- activations: one layer's full activations are T x b x (8H + 4KV + 4I)
  bytes (norm inputs and outputs, q, k, v, the attention output, the
  residual; the gated MLP's gate, up, activation and product). Attention is
  taken to be memory-efficient (SDPA, flex, flash): no T x T term. With
  `model.gradient_checkpointing`: L x T x H x b (every layer's input kept)
  plus one layer's full activations (recomputed in backward); without: L
  layers' full activations.
- the loss: C x V x 4 bytes x 5 (fp32 (C, V) tensors alive at once in a
  chunk's backward, as measured by bench/loss_memory.py), C =
  `model.loss_chunk_tokens` positions, at most T; 0: T.
- full fine-tuning: LoRA's smaller gradients and optimizer state are not
  modelled, so a LoRA recipe's figure is an upper bound.

An engine GPU: the weights 2N / `rollout.tensor_parallel_size` (bfloat16);
the KV cache holds, per token and layer, K and V of kv_heads / TP heads (at
least one: vLLM replicates KV heads when TP exceeds them) in bfloat16, where a
sliding-window layer (`layer_types` "sliding_attention", Olmo 3: 3 of every 4)
keeps at most `sliding_window` tokens of a sequence. vLLM takes
`rollout.gpu_memory_utilization` of the GPU; what the weights leave is KV
cache, reported as sequences of the longest length held at once (vLLM's own
activation peak and CUDA graphs also come out of it: read it as an upper bound).

Refusals: a learner above `MARGIN` (90%) of the GPU (the rest goes to the
CUDA context, allocator fragmentation, NCCL and what this count leaves out),
an engine whose weights leave no room for one sequence of the longest length.

Imports only the standard library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

GB = 1e9
MARGIN = 0.90  # refuse a learner above this fraction of the GPU
GPUS = {"h100": 80 * GB, "h200": 141 * GB, "a100": 80 * GB}  # capacity as sold (A100: the 80 GB model)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}  # "auto": an engine on GPU serves bfloat16
LOSS_TEMPORARIES = 5  # fp32 (C, V) tensors alive at once in a chunk's backward: measured by bench/loss_memory.py
OVERLAP_BUFFERS = 4.5  # bucket-size multiple that overlap_comm allocates


def olmo3_shape(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> dict:
    """A published Olmo 3 config's shape keys: 3 of every 4 layers slide over 4,096 tokens, the 4th sees everything."""
    return {"model_type": "olmo3", "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "intermediate_size": intermediate, "vocab_size": 100_278,
            "tie_word_embeddings": False, "sliding_window": 4096,
            "layer_types": ["full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(layers)]}


# allenai/Olmo-3-1025-7B and allenai/Olmo-3-1125-32B (config.json on the hub; olmo3-reference.md: layers, hidden, heads)
OLMO3_SHAPES = {"7b": olmo3_shape(4096, 32, 32, 32, 11_008), "32b": olmo3_shape(5120, 64, 40, 8, 27_648)}


@dataclass(frozen=True)
class Shape:
    """The dimensions memory depends on, from a Hugging Face config."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    sliding_layers: int = 0  # layers whose attention keeps at most `sliding_window` tokens
    sliding_window: Optional[int] = None

    @classmethod
    def from_hf(cls, hf: dict) -> "Shape":
        heads = hf["num_attention_heads"]
        window = hf.get("sliding_window")
        sliding = sum(kind == "sliding_attention" for kind in hf.get("layer_types") or []) if window else 0
        return cls(hidden=hf["hidden_size"], layers=hf["num_hidden_layers"], heads=heads,
                   kv_heads=hf.get("num_key_value_heads") or heads,
                   head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, intermediate=hf["intermediate_size"],
                   vocab=hf["vocab_size"], sliding_layers=sliding, sliding_window=window if sliding else None)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


# --------------------------------------------------------------------------
# Learners


@dataclass(frozen=True)
class LearnerSetup:
    """What one learner rank's memory depends on (recipe values, resolved)."""

    params: int
    ranks: int  # data-parallel learner ranks the ZeRO states are sharded over
    dtype_bytes: int
    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    overlap_comm: bool
    reduce_bucket: int
    allgather_bucket: int
    prefetch_bucket: int
    checkpointing: bool
    micro_batch: int  # items per forward pass
    item_tokens: int  # tokens per item (a DPO item is a pair: 2 x max_length)
    loss_chunk: int  # 0: the whole forward pass at once

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.item_tokens


# what ZeRO divides by the ranks: (weights, gradients, optimizer state) per stage
_SHARDED = {0: (False, False, False), 1: (False, False, True), 2: (False, True, True), 3: (True, True, True)}


def model_states(s: LearnerSetup) -> dict[str, float]:
    """Weights, gradients and AdamW state on one rank, in bytes (see the module docstring)."""
    optimizer_bytes = (0 if s.dtype_bytes == 4 else 4) + 8  # fp32 master copy (mixed precision) + 2 fp32 moments
    whole = (s.dtype_bytes * s.params, s.dtype_bytes * s.params, optimizer_bytes * s.params)
    states = [size / s.ranks if sharded else size for size, sharded in zip(whole, _SHARDED[s.zero_stage])]
    on_cpu = (s.offload_params, False, s.offload_optimizer)
    weights, gradients, optimizer = (0.0 if away else size for size, away in zip(states, on_cpu))
    return {"weights": weights, "gradients": gradients, "AdamW": optimizer}


def zero_buffers(shape: Shape, s: LearnerSetup) -> float:
    """DeepSpeed's communication buckets, and at ZeRO-3 the parameters gathered whole, in bytes."""
    if s.zero_stage == 0:
        return 0.0
    elements = s.reduce_bucket + (s.allgather_bucket if s.zero_stage < 3 else 0)
    buckets = elements * s.dtype_bytes * (OVERLAP_BUFFERS if s.overlap_comm else 1.0)
    if s.zero_stage < 3:
        return buckets
    largest = max(shape.vocab * shape.hidden, layer_parameters(shape))
    return buckets + (largest + s.prefetch_bucket) * s.dtype_bytes


def layer_parameters(shape: Shape) -> int:
    """One layer's matrices: q and o (H x heads x head_dim each), k and v (H x KV each), the gated MLP (3 x H x I)."""
    attention = 2 * shape.hidden * shape.heads * shape.head_dim + 2 * shape.hidden * shape.kv_dim
    return attention + 3 * shape.hidden * shape.intermediate


def layer_activations(shape: Shape, tokens: int, dtype_bytes: int) -> float:
    """One layer's saved activations for `tokens` positions, in bytes: T x b x (8H + 4KV + 4I)."""
    return tokens * dtype_bytes * (8 * shape.hidden + 4 * shape.kv_dim + 4 * shape.intermediate)


def activations(shape: Shape, tokens: int, dtype_bytes: int, checkpointing: bool) -> float:
    """Activations kept for backward: every layer's input plus one layer when checkpointing, else every layer."""
    layer = layer_activations(shape, tokens, dtype_bytes)
    if checkpointing:
        return shape.layers * tokens * shape.hidden * dtype_bytes + layer
    return shape.layers * layer


def loss_peak(vocab: int, tokens: int, chunk: int) -> float:
    """The output layer and loss over `chunk` positions at a time (0 or more than T: all T), in bytes."""
    positions = min(chunk, tokens) if chunk > 0 else tokens
    return positions * vocab * 4 * LOSS_TEMPORARIES


def learner_memory(shape: Shape, s: LearnerSetup) -> dict[str, float]:
    """One learner rank's memory by part, in bytes."""
    return {**model_states(s), "ZeRO buffers": zero_buffers(shape, s),
            "activations": activations(shape, s.tokens, s.dtype_bytes, s.checkpointing),
            "loss": loss_peak(shape.vocab, s.tokens, s.loss_chunk)}


# (advice, the setup with it applied); `posttrain plan` lists those that save memory, the largest saving first
LEARNER_FIXES: list[tuple[str, Callable[[Shape, LearnerSetup], LearnerSetup]]] = [
    ("raise deepspeed.zero_stage to 3", lambda shape, s: dataclasses.replace(s, zero_stage=3)),
    ("turn on model.gradient_checkpointing", lambda shape, s: dataclasses.replace(s, checkpointing=True)),
    ("lower model.loss_chunk_tokens (e.g. 1024)",
     lambda shape, s: dataclasses.replace(s, loss_chunk=min(s.loss_chunk or s.tokens, 1024))),
    ("lower batch.micro_batch_size", lambda shape, s: dataclasses.replace(s, micro_batch=max(1, s.micro_batch // 2))),
    ("set deepspeed.offload_optimizer", lambda shape, s: dataclasses.replace(s, offload_optimizer=True)),
    ("lower deepspeed.reduce_bucket_size and allgather_bucket_size (e.g. hidden^2)",
     lambda shape, s: dataclasses.replace(s, reduce_bucket=min(s.reduce_bucket, shape.hidden ** 2),
                                          allgather_bucket=min(s.allgather_bucket, shape.hidden ** 2))),
    ("raise distributed.num_workers (ZeRO shards over more ranks)",
     lambda shape, s: dataclasses.replace(s, ranks=s.ranks * 2) if s.zero_stage else s),
]


# --------------------------------------------------------------------------
# Engines


@dataclass(frozen=True)
class EngineSetup:
    """What one inference GPU's memory depends on."""

    params: int
    tensor_parallel: int
    dtype_bytes: int
    utilization: float  # the fraction of the GPU vLLM takes
    max_tokens: int  # the longest sequence: prompt + response


def kv_bytes_per_token(shape: Shape, tensor_parallel: int, dtype_bytes: int = 2) -> float:
    """K and V of one token in one layer on one GPU, in bytes: 2 x kv heads per GPU x head_dim x b."""
    heads_per_gpu = max(1, shape.kv_heads // tensor_parallel)
    return 2 * heads_per_gpu * shape.head_dim * dtype_bytes


def kv_bytes_per_sequence(shape: Shape, tokens: int, tensor_parallel: int, dtype_bytes: int = 2) -> float:
    """One sequence's KV cache on one GPU: full layers hold all its tokens, sliding layers at most the window."""
    windowed = min(tokens, shape.sliding_window) if shape.sliding_window else tokens
    held = (shape.layers - shape.sliding_layers) * tokens + shape.sliding_layers * windowed
    return held * kv_bytes_per_token(shape, tensor_parallel, dtype_bytes)


def engine_memory(shape: Shape, e: EngineSetup, capacity: float) -> dict[str, float]:
    """An engine GPU: its budget, the weights, the KV cache they leave, and how many longest sequences that holds."""
    budget = e.utilization * capacity
    weights = e.params * e.dtype_bytes / e.tensor_parallel
    kv = max(0.0, budget - weights)
    per_sequence = kv_bytes_per_sequence(shape, e.max_tokens, e.tensor_parallel, e.dtype_bytes)
    return {"budget": budget, "weights": weights, "KV cache": kv, "per sequence": per_sequence,
            "sequences": kv // per_sequence}


ENGINE_FIXES: list[tuple[str, Callable[[EngineSetup], EngineSetup]]] = [
    ("raise rollout.tensor_parallel_size", lambda e: dataclasses.replace(e, tensor_parallel=e.tensor_parallel * 2)),
    ("raise rollout.gpu_memory_utilization", lambda e: dataclasses.replace(e, utilization=max(e.utilization, 0.95))),
]


# --------------------------------------------------------------------------
# Verdicts


def learner_fixes(shape: Shape, s: LearnerSetup) -> list[str]:
    """The advice of LEARNER_FIXES that lowers this learner's memory, the largest saving first, with the saving."""
    total = sum(learner_memory(shape, s).values())
    savings = [(total - sum(learner_memory(shape, fix(shape, s)).values()), advice) for advice, fix in LEARNER_FIXES]
    return [f"{advice} (-{saved / GB:.1f} GB)" for saved, advice in sorted(savings, reverse=True) if saved > 0.01 * GB]


def engine_fixes(shape: Shape, e: EngineSetup, capacity: float) -> list[str]:
    """The advice of ENGINE_FIXES that makes room for more sequences."""
    now = engine_memory(shape, e, capacity)["sequences"]
    return [advice for advice, fix in ENGINE_FIXES if engine_memory(shape, fix(e), capacity)["sequences"] > now]


def gb(parts: dict[str, float]) -> str:
    """`weights 14.6, gradients 0.9, ...` in GB."""
    return ", ".join(f"{name} {size / GB:.1f}" for name, size in parts.items())
