"""How a learner applies gradients: DeepSpeed ZeRO, or plain torch (DDP across ranks).

Both meet one small protocol (`Backend`): `module` (for forward passes),
`backward(loss, last)`, `step() -> pre-clip grad norm`, `save(dir)` /
`load(dir)` of model + optimizer + scheduler state, `gathered(params)` (a
context in which ZeRO-3-partitioned parameters are whole), and
`offload()` / `reload()`, which move the training state off the GPU and back
while colocated rollout engines use it (bytes moved; 0 on a CPU, where the
state already lives in host memory).

Gradient accumulation is the caller's: it calls `backward` once per
micro-batch (every rank the same number of times) and `step` once per
optimizer step. The loss it backpropagates is already normalised over the
whole step (see `posttrain.learner.Learner.train_step`), so neither backend
rescales it. DeepSpeed runs with `managed_gradient_accumulation: false`: its
`step()` is the accumulation boundary, so a step may hold any number of
micro-batches (the last step of an epoch holds fewer).

DeepSpeed on CPU uses gloo and JIT-builds a small shared-memory op on its
first initialisation on a machine (a few minutes on 2 cores, cached in
~/.cache/torch_extensions).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Protocol

import torch
from torch import nn

from posttrain.config import DeepSpeedSection

DS_TAG = "deepspeed"
TORCH_STATE = "torch_state.pt"


class Backend(Protocol):
    module: nn.Module

    def backward(self, loss: torch.Tensor, last: bool) -> None: ...

    def step(self) -> float: ...

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...

    def gathered(self, params: list[nn.Parameter]) -> contextlib.AbstractContextManager: ...

    def offload(self) -> int: ...

    def reload(self) -> int: ...


def move_optimizer_state(optimizer, device: torch.device | str) -> int:
    """Move every tensor of `optimizer.state` to `device` (pinned when it goes to the host for a GPU); bytes moved."""
    moved, device = 0, torch.device(device)
    pin = device.type == "cpu" and torch.cuda.is_available()
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and value.device != device:
                state[key] = value.to(device, non_blocking=False)
                if pin:
                    state[key] = state[key].pin_memory()
                moved += value.numel() * value.element_size()
    return moved


def _on_gpu(module: nn.Module) -> bool:
    return any(p.is_cuda for p in module.parameters())


# the ZeRO stages that use each tuned key of DeepSpeedSection; other stages are not sent it
_STAGES_USING = {
    "overlap_comm": (1, 2, 3),
    "reduce_bucket_size": (1, 2, 3),
    "allgather_bucket_size": (1, 2),
    "stage3_prefetch_bucket_size": (3,),
    "stage3_param_persistence_threshold": (3,),
    "stage3_max_live_parameters": (3,),
}


def zero_optimization(ds: DeepSpeedSection) -> dict:
    """DeepSpeed's `zero_optimization` block: the stage, offload, and the tuned keys that stage uses."""
    tuned = {
        "overlap_comm": ds.overlap_comm,
        "reduce_bucket_size": ds.reduce_bucket_size,
        "allgather_bucket_size": ds.allgather_bucket_size,
        "stage3_prefetch_bucket_size": ds.stage3_prefetch_bucket_size,
        "stage3_param_persistence_threshold": ds.stage3_param_persistence_threshold,
        "stage3_max_live_parameters": ds.stage3_max_live_parameters,
    }
    zero: dict = {"stage": ds.zero_stage, "contiguous_gradients": True}
    zero.update({key: value for key, value in tuned.items() if ds.zero_stage in _STAGES_USING[key]})
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return zero


def deepspeed_config(ds: DeepSpeedSection, *, micro_batch_size: int, accumulation: int, max_grad_norm: float,
                     dtype: str, world_size: int) -> dict:
    """The DeepSpeed JSON config for one learner (batch bookkeeping, ZeRO, clipping, precision)."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_batch_size * accumulation * world_size,
        "managed_gradient_accumulation": False,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero_optimization(ds),
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "zero_allow_untested_optimizer": True,
        # a torch AdamW with offload works on any machine; DeepSpeedCPUAdam would need another JIT build
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class DeepSpeedBackend:
    """ZeRO stage 0-3 through `deepspeed.initialize` (optimizer and scheduler are ours, passed in)."""

    def __init__(self, model: nn.Module, optimizer, scheduler, config: dict):
        import deepspeed

        self.zero_stage = config["zero_optimization"]["stage"]
        self._norm = float("nan")
        plain_fp32 = not (config["bf16"]["enabled"] or config["fp16"]["enabled"])
        if self.zero_stage == 0 and plain_fp32:
            # DeepSpeed's stage-0 fp32 path clips but discards the norm: clip here instead, on the
            # already-reduced gradients, right before the optimizer applies them.
            params = [p for p in model.parameters() if p.requires_grad]
            max_norm = config["gradient_clipping"]
            config = dict(config, gradient_clipping=0.0)
            optimizer.register_step_pre_hook(lambda *_: self._clip(params, max_norm))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        self.module = self.engine

    def _clip(self, params: list[nn.Parameter], max_norm: float) -> None:
        self._norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else self._norm

    def save(self, directory: Path) -> None:
        # collective: every rank writes its ZeRO partition into the same directory
        self.engine.save_checkpoint(str(directory), tag=DS_TAG, save_latest=False)

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag=DS_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed state under tag {DS_TAG!r}")

    def gathered(self, params: list[nn.Parameter]):
        if self.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def offload(self) -> int:
        """Move the training state to pinned host memory with DeepSpeed's `offload_states`; bytes freed on the GPU.

        ZeRO-1/2: everything (fp32 masters, bf16 parameters, gradients, optimizer state). ZeRO-3: DeepSpeed
        moves Adam state and fp32 masters only for its own FusedAdam, so it moves the bf16 partitions and the
        gradient buffers, and the torch AdamW state (two fp32 tensors per parameter) moves here; the fp32
        master partitions stay. Stage 0: the optimizer state. 0 on a CPU, or when the recipe already offloads.
        """
        if not self._on_gpu():
            return 0
        before = torch.cuda.memory_allocated()
        zero = self.engine.optimizer
        if self.zero_stage == 3:
            from deepspeed.runtime.zero.offload_config import OffloadStateTypeEnum as State

            self.engine.offload_states(include=[State.lp_params, State.lp_grads, State.contiguous_grad_buffer])
            move_optimizer_state(zero.optimizer, "cpu")
        elif hasattr(zero, "offload_states"):
            self.engine.offload_states()
        else:
            move_optimizer_state(self.optimizer, "cpu")
        torch.cuda.empty_cache()
        return max(0, before - torch.cuda.memory_allocated())

    def reload(self) -> int:
        """Undo `offload`; bytes brought back to the GPU."""
        if not self._on_gpu():
            return 0
        before = torch.cuda.memory_allocated()
        zero, device = self.engine.optimizer, torch.device("cuda", torch.cuda.current_device())
        if hasattr(zero, "reload_states"):
            self.engine.reload_states()
        if self.zero_stage == 3:
            move_optimizer_state(zero.optimizer, device)
        elif not hasattr(zero, "reload_states"):
            move_optimizer_state(self.optimizer, device)
        return max(0, torch.cuda.memory_allocated() - before)

    def _on_gpu(self) -> bool:
        """Whether the state lives on a GPU that offloading would free (not with ZeRO-Offload already on)."""
        return (torch.cuda.is_available() and self.engine.device.type == "cuda"
                and not self.engine.zero_offload_param() and not self.engine.zero_offload_optimizer())

    @property
    def unwrapped(self) -> nn.Module:
        return self.engine.module


class TorchBackend:
    """Plain torch: one process, or DDP across ranks; clipping with `clip_grad_norm_`."""

    def __init__(self, model: nn.Module, optimizer, scheduler, *, max_grad_norm: float, world_size: int):
        self.model = model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.max_grad_norm = max_grad_norm
        self.module = model
        if world_size > 1:
            device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
            self.module = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        # DDP all-reduces on the last micro-batch of the step only
        no_sync = self.module.no_sync() if (not last and hasattr(self.module, "no_sync")) else contextlib.nullcontext()
        with no_sync:
            loss.backward()

    def step(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def save(self, directory: Path) -> None:
        if _rank() != 0:
            return  # DDP keeps every rank identical: one copy suffices
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict()}
        torch.save(state, Path(directory) / TORCH_STATE)

    def load(self, directory: Path) -> None:
        state = torch.load(Path(directory) / TORCH_STATE, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def gathered(self, params: list[nn.Parameter]):
        return contextlib.nullcontext()

    def offload(self) -> int:
        """The optimizer state (AdamW: two tensors per parameter) to host memory; parameters stay (DDP holds them)."""
        if not _on_gpu(self.model):
            return 0
        moved = move_optimizer_state(self.optimizer, "cpu")
        torch.cuda.empty_cache()
        return moved

    def reload(self) -> int:
        if not _on_gpu(self.model):
            return 0
        return move_optimizer_state(self.optimizer, next(self.model.parameters()).device)

    @property
    def unwrapped(self) -> nn.Module:
        return self.model


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else int(os.environ.get("RANK", 0))


def iter_named_full(backend, named: Iterator[tuple[str, nn.Parameter]]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor) per parameter, gathering ZeRO-3 partitions one at a time (collective)."""
    for name, param in named:
        with backend.gathered([param]):
            yield name, param.detach().clone()
