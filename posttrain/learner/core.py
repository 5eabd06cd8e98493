"""The learner: one training rank's model, optimizer, schedule and gradient steps.

Every stage trains through this class (SFT, DPO and RLVR alike); it runs
inside a Ray actor (`posttrain.orchestration.learner_group`) or in-process.

- Model: `transformers.AutoModelForCausalLM` from `model.path`, in
  `model.dtype`, with `model.attn_implementation`; optional gradient
  checkpointing; optional LoRA adapters through `peft` (`lora:`).
- Optimizer: AdamW (`optim.betas`, `optim.weight_decay` on matrices only:
  norms, biases and other 1-D parameters are not decayed), peak
  `optim.lr`, schedule from `posttrain.learner.schedule` (linear warmup by
  `optim.warmup_ratio`, then `optim.schedule` decay), clipping at
  `optim.max_grad_norm`.
- Backend: DeepSpeed ZeRO (`deepspeed.*`) or plain torch/DDP, see
  `posttrain.learner.backends`. gloo on CPU, nccl on GPU.

A step is `train_step(micro_batches, loss_fn, **kw)`: for each micro-batch,
`loss, stats = loss_fn(model, batch, **kw)`, backward; then one optimizer
step. The loss function normalises over the whole step (all micro-batches
and ranks), which is what makes k micro-batches of size b equal one batch of
k*b (tests/test_learner.py). Stats are summed over the micro-batches.

`named_weights()` yields (Hugging Face name, whole tensor) with LoRA merged,
gathering ZeRO-3 partitions one parameter at a time (call it on every rank);
`export(dir)` writes them as a Hugging Face checkpoint from rank 0. RLVR
sends the same iterator to its rollout engines: rank 0 broadcasts it
(`broadcast_weights`), or every rank hands it to its colocated engine through
shared memory (`share_weights`), or rank 0 returns it (`weight_list`).

Colocated RLVR (`distributed.colocate`): `offload_states()` moves the
training state off the GPU while the engines beside the ranks generate
(`posttrain.learner.backends`: nothing moves on a CPU); any method that needs
the state brings it back first (`reload_states`), so no caller can train,
save or send weights from an offloaded learner.
"""

from __future__ import annotations

import functools
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from posttrain.config import DeepSpeedSection, LoraSection, ModelSection, OptimSection, StageConfig
from posttrain.learner.backends import DeepSpeedBackend, TorchBackend, deepspeed_config, iter_named_full
from posttrain.learner.schedule import LRLambda, warmup_steps

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LossFn = Callable[..., "tuple[torch.Tensor, dict[str, float]]"]


@dataclass
class LearnerSpec:
    """Everything a learner rank needs, picklable (it travels to Ray actors)."""

    model: ModelSection
    optim: OptimSection
    deepspeed: DeepSpeedSection
    lora: LoraSection
    micro_batch_size: int
    accumulation: int  # micro-batches per rank per optimizer step (DeepSpeed's batch bookkeeping)
    total_steps: int  # optimizer steps of the whole run, for the schedule
    seed: int = 0
    use_gpu: bool = False
    backend: str = "auto"  # torch.distributed backend: auto, gloo, nccl
    cpus_per_worker: float = 1.0

    @classmethod
    def from_config(cls, config: StageConfig, *, accumulation: int, total_steps: int) -> "LearnerSpec":
        return cls(model=config.model, optim=config.optim, deepspeed=config.deepspeed, lora=config.lora,
                   micro_batch_size=config.batch.micro_batch_size, accumulation=accumulation,
                   total_steps=total_steps, seed=config.seed, use_gpu=config.distributed.use_gpu,
                   backend=config.distributed.backend, cpus_per_worker=config.distributed.cpus_per_worker)

    @property
    def dist_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "nccl" if self.use_gpu else "gloo"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def init_process_group(spec: LearnerSpec, rank: int, world_size: int) -> None:
    """Join the ranks' process group from MASTER_ADDR/MASTER_PORT (set by the learner group)."""
    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world_size))
    os.environ.setdefault("LOCAL_RANK", "0")
    if spec.deepspeed.enabled:
        import deepspeed

        deepspeed.init_distributed(dist_backend=spec.dist_backend, auto_mpi_discovery=False,
                                   rank=rank, world_size=world_size)
    elif world_size > 1:
        torch.distributed.init_process_group(backend=spec.dist_backend, rank=rank, world_size=world_size)


def load_model(spec: LearnerSpec) -> nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        spec.model.path, dtype=DTYPES[spec.model.dtype], attn_implementation=spec.model.attn_implementation,
        trust_remote_code=spec.model.trust_remote_code,
    )
    model.config.use_cache = False  # training: a cache also disables packed-document masking
    if spec.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                          target_modules=spec.lora.target_modules, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (ndim >= 2) only; norms, biases and scalars keep their values (usual AdamW practice)."""
    decay, keep = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else keep).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0})
    return groups


def _resident(method):
    """The method needs the training state on its device: reload it first when `offload_states` moved it."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self.reload_states()
        return method(self, *args, **kwargs)
    return wrapper


class Learner:
    """One rank: model + optimizer + schedule + backend. See the module docstring."""

    def __init__(self, spec: LearnerSpec, rank: int = 0, world_size: int = 1):
        self.spec, self.rank, self.world_size = spec, rank, world_size
        if spec.use_gpu and torch.cuda.is_available():
            torch.cuda.set_device(0)  # Ray gives each rank its own GPU as device 0
            self.device = torch.device("cuda", 0)
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(max(1, int(spec.cpus_per_worker)))
            if spec.model.attn_implementation == "flex_attention":
                raise ValueError("model.attn_implementation=flex_attention trains on CUDA GPUs only (torch has no flex "
                                 "attention backward on the CPU): use sdpa on the CPU")
        init_process_group(spec, rank, world_size)
        seed_everything(spec.seed)  # same LoRA init on every rank
        model = load_model(spec).to(self.device)
        optimizer = torch.optim.AdamW(param_groups(model, spec.optim.weight_decay), lr=spec.optim.lr,
                                      betas=tuple(spec.optim.betas))
        schedule = LRLambda(spec.total_steps, warmup_steps(spec.total_steps, spec.optim.warmup_ratio),
                            spec.optim.schedule)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        if spec.deepspeed.enabled:
            config = deepspeed_config(spec.deepspeed, micro_batch_size=spec.micro_batch_size,
                                      accumulation=spec.accumulation, max_grad_norm=spec.optim.max_grad_norm,
                                      dtype=spec.model.dtype, world_size=world_size)
            self.backend = DeepSpeedBackend(model, optimizer, scheduler, config)
        else:
            self.backend = TorchBackend(model, optimizer, scheduler, max_grad_norm=spec.optim.max_grad_norm,
                                        world_size=world_size)
        self.scheduler = self.backend.scheduler
        seed_everything(spec.seed + rank)  # dropout and sampling differ per rank
        self.steps_done = 0
        self.offloaded = False

    # ------------------------------------------------------------------ training

    @property
    def model(self) -> nn.Module:
        """The module to call for forward passes (the DeepSpeed engine or the DDP wrapper)."""
        return self.backend.module

    def current_lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    @_resident
    def train_step(self, micro_batches: list, loss_fn: LossFn, **loss_kwargs) -> dict[str, float]:
        """Forward/backward every micro-batch with `loss_fn`, then one optimizer step.

        Returns the loss function's stats summed over micro-batches, plus
        `grad_norm` (before clipping) and `lr` (the rate this step used).
        """
        if not micro_batches:
            raise ValueError("train_step needs at least one micro-batch (send an empty one to idle ranks)")
        self.model.train()
        totals: dict[str, float] = {}
        for index, batch in enumerate(micro_batches):
            loss, stats = loss_fn(self.model, batch.to(self.device), **loss_kwargs)
            self.backend.backward(loss, last=index == len(micro_batches) - 1)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        lr = self.current_lr()
        grad_norm = self.backend.step()
        self.steps_done += 1
        return {**totals, "grad_norm": grad_norm, "lr": lr}

    @torch.no_grad()
    @_resident
    def evaluate(self, batches: list, loss_fn: LossFn, **loss_kwargs) -> dict[str, float]:
        """`loss_fn` stats summed over `batches`, without gradients (held-out loss, log-probs)."""
        self.model.eval()
        totals: dict[str, float] = {}
        for batch in batches:
            _, stats = loss_fn(self.model, batch.to(self.device), **loss_kwargs)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        return totals

    @torch.no_grad()
    @_resident
    def infer(self, batches: list, fn: Callable, **kwargs) -> list:
        """`fn(model, batch, **kwargs)` for each batch without gradients, outputs in order (e.g. DPO reference log-probs)."""
        self.model.eval()
        return [fn(self.model, batch.to(self.device), **kwargs) for batch in batches]

    @torch.no_grad()
    @_resident
    def token_logprobs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs of `batch.labels` under the current weights: ((B, T) float32, (B, T) bool) on CPU.

        `batch` is an SFTBatch-like object (`model_inputs()`, `labels`); see
        `posttrain.algorithms.losses.token_logprobs` for the alignment.
        """
        from posttrain.objectives.forward import label_logprobs

        self.model.eval()
        batch = batch.to(self.device)
        logps, mask, _ = label_logprobs(self.model, batch.model_inputs(), batch.labels,
                                        chunk=self.spec.model.loss_chunk_tokens)
        return logps.cpu(), mask.cpu()

    # ------------------------------------------------------------------ state

    @_resident
    def save_state(self, directory: str | Path) -> None:
        """Write this rank's resumable state (model, optimizer, scheduler, RNG) into `directory` (collective)."""
        directory = Path(directory)
        self.backend.save(directory)
        torch.save({"rng": rng_state(), "steps_done": self.steps_done}, directory / f"rng_rank{self.rank}.pt")

    @_resident
    def load_state(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.backend.load(directory)
        own = directory / f"rng_rank{self.rank}.pt"
        state = torch.load(own if own.exists() else directory / "rng_rank0.pt", weights_only=False)
        set_rng_state(state["rng"])
        self.steps_done = state["steps_done"]

    def offload_states(self) -> dict:
        """Move the training state off the GPU (colocated engines generate meanwhile); bytes moved and seconds."""
        if self.offloaded:
            return {"bytes": 0, "seconds": 0.0}
        start = time.perf_counter()
        moved = self.backend.offload()
        self.offloaded = moved > 0  # on a CPU nothing moves, and nothing needs to come back
        return {"bytes": moved, "seconds": time.perf_counter() - start}

    def reload_states(self) -> dict:
        """Bring back what `offload_states` moved (a no-op when nothing is away); bytes moved and seconds."""
        if not self.offloaded:
            return {"bytes": 0, "seconds": 0.0}
        start = time.perf_counter()
        moved = self.backend.reload()
        self.offloaded = False
        return {"bytes": moved, "seconds": time.perf_counter() - start}

    # ------------------------------------------------------------------ weights out

    @_resident
    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(Hugging Face name, whole tensor) per parameter, LoRA merged. Collective under ZeRO-3."""
        model = self.backend.unwrapped
        if not self.spec.lora.enabled:
            yield from iter_named_full(self.backend, model.named_parameters())
            return
        yield from self._merged_lora_weights(model)

    def weight_list(self) -> list[tuple[str, torch.Tensor]]:
        """`named_weights()` as a list of CPU tensors on rank 0, empty on the others (call on every rank).

        What RLVR sends to its rollout engines through Ray's object store after each step.
        """
        out = []
        for name, tensor in self.named_weights():  # collective under ZeRO-3
            if self.rank == 0:
                out.append((name, tensor.cpu()))
        return out

    def weight_metadata(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of each tensor `named_weights()` yields, in the same order, without gathering anything."""
        model = self.backend.unwrapped
        if self.spec.lora.enabled:
            named = [(name.replace(".base_layer.", "."), param) for name, param in model.get_base_model().named_parameters()
                     if ".lora_" not in name]
        else:
            named = list(model.named_parameters())
        return [(name, tuple(getattr(param, "ds_shape", param.shape))) for name, param in named]

    # Broadcast weight sync (posttrain.rollout.weight_transfer): rank 0 sends, every rank joins the gathers.

    def open_weight_group(self, host: str, port: int, world_size: int, timeout_s: float) -> None:
        """Rank 0 hosts the weight group's store at host:port and joins as its rank 0; other ranks do nothing."""
        from posttrain.rollout.weight_transfer import WeightGroup

        self.close_weight_group()
        if self.rank == 0:
            self.weight_group = WeightGroup(host, port, 0, world_size, device=self.device, timeout_s=timeout_s)

    @torch.no_grad()
    def broadcast_weights(self, buckets: list) -> int:
        """One broadcast round of `named_weights()` in the plan `buckets` (wire form); bytes sent (0 off rank 0).

        Call on every rank: under ZeRO-3 each tensor is gathered by all ranks.
        """
        from posttrain.rollout.weight_transfer import Bucket, send

        gathered = self.spec.deepspeed.enabled and self.spec.deepspeed.zero_stage == 3
        if self.rank != 0:
            for _ in self.named_weights() if gathered else ():  # only ZeRO-3 gathers need every rank
                pass
            return 0
        named = self.named_weights()
        try:
            if getattr(self, "weight_group", None) is None:
                raise RuntimeError("broadcast_weights before open_weight_group (or after it failed)")
            return send(self.weight_group, [Bucket.from_wire(b) for b in buckets], named)
        except Exception:
            for _ in named:  # keep joining the other ranks' gathers, so only the failed sync is lost
                pass
            raise

    def close_weight_group(self) -> None:
        group, self.weight_group = getattr(self, "weight_group", None), None
        if group is not None:
            group.close()

    # Shared-memory weight sync (rollout.weight_sync: ipc): every rank hands its colocated engine the weights.

    @torch.no_grad()
    def share_weights(self, buckets: list, engine, version: int, round_id: int = 0) -> dict:
        """Ipc round `round_id` of `named_weights()` to `engine`, a Ray handle of this rank's colocated engine actor.

        The plan `buckets` (wire form) is packed into two shared buffers on this rank's device, in turn, and
        handed to the engine a bucket at a time (posttrain.rollout.weight_transfer.share). Call on every rank
        at once: under ZeRO-3 each tensor is gathered by all ranks, and a rank whose `engine` is None only
        joins the gathers. Returns {"bytes": bytes handed over, "seconds": the round's, "load_s": the engine's
        seconds, None without an engine}.
        """
        from posttrain.rollout.weight_transfer import Bucket, share

        gathered = self.spec.deepspeed.enabled and self.spec.deepspeed.zero_stage == 3
        if engine is None:
            for _ in self.named_weights() if gathered else ():  # only ZeRO-3 gathers need every rank
                pass
            return {"bytes": 0, "seconds": 0.0, "load_s": None}
        start = time.perf_counter()
        named = self.named_weights()
        try:
            buffers = self._shared_buffers(max(Bucket.from_wire(b).nbytes for b in buckets))
            sent, load_s = share(engine, buffers, buckets, named, version, round_id)
        except Exception:
            for _ in named:  # keep joining the other ranks' gathers, so only the failed sync is lost
                pass
            raise
        return {"bytes": sent, "seconds": time.perf_counter() - start, "load_s": load_s}

    def _shared_buffers(self, nbytes: int) -> list:
        """Two shared buffers of at least `nbytes` on this rank's device, kept from round to round."""
        from posttrain.rollout.shared_buffer import SharedBuffer

        buffers = getattr(self, "shared_buffers", None)
        if buffers is None or buffers[0].nbytes < nbytes:
            self.close_shared_weights()
            self.shared_buffers = [SharedBuffer.create(nbytes, self.device) for _ in range(2)]
        return self.shared_buffers

    def close_shared_weights(self) -> None:
        """Release the shared buffers (their /dev/shm files are unlinked); the next round makes new ones."""
        for buffer in getattr(self, "shared_buffers", None) or ():
            buffer.close()
        self.shared_buffers = None

    def _merged_lora_weights(self, peft_model) -> Iterator[tuple[str, torch.Tensor]]:
        from peft.tuners.lora import LoraLayer

        base = peft_model.get_base_model()
        lora_layers = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
        for name, param in base.named_parameters():
            if ".lora_" in name:
                continue
            owner, _, leaf = name.rpartition(".base_layer.")
            layer = lora_layers.get(owner) if leaf == "weight" else None
            hf_name = name.replace(".base_layer.", ".")
            if layer is None:
                with self.backend.gathered([param]):
                    yield hf_name, param.detach().clone()
                continue
            adapters = [a for a in layer.active_adapters if a in layer.lora_A]
            extra = [p for a in adapters for p in (*layer.lora_A[a].parameters(), *layer.lora_B[a].parameters())]
            with self.backend.gathered([param, *extra]):
                merged = param.detach().clone()
                for adapter in adapters:
                    merged += layer.get_delta_weight(adapter).to(merged.dtype)
            yield hf_name, merged

    def hf_model(self) -> nn.Module:
        """The underlying transformers model (without the LoRA/DeepSpeed/DDP wrappers)."""
        model = self.backend.unwrapped
        return model.get_base_model() if self.spec.lora.enabled else model

    @_resident
    def export(self, directory: str | Path) -> None:
        """Write the weights (LoRA merged) and model config as a Hugging Face checkpoint; rank 0 writes."""
        weights = {}
        for name, tensor in self.named_weights():  # every rank iterates: ZeRO-3 gathers are collective
            if self.rank == 0:
                weights[name] = tensor.cpu()
        if self.rank != 0:
            return
        model = self.hf_model()
        model.config.use_cache = True  # for inference
        try:
            model.save_pretrained(str(directory), state_dict=weights)
        finally:
            model.config.use_cache = False
