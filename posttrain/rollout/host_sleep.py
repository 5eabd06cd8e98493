"""Sleep mode where vLLM's allocator does not do it: vLLM-CPU workers, and the hf engine.

vLLM's CPU worker ignores `LLM.sleep` (it logs "not supported"), so
`release` and `restore` do its work in the worker process (called through
`posttrain.rollout.weight_receiver.WeightReceiver`, in-process or in vLLM's
worker processes alike):

- level 1 frees the KV cache; the weights stay (they are in host memory
  already: vLLM's GPU level 1 moves them there).
- level 2 also frees the weights. Buffers (rotary tables, attention scales)
  stay. The next weight round must give every weight: vLLM's layerwise
  reload rebuilds each layer, and only that refills what was freed.

The hf engine frees and offloads its parameters with `free_storages` and
`restore_storages`.

How memory is freed: a tensor's storage is resized to 0 bytes in place and
back to its size on wake (`UntypedStorage.resize_`, as FSDP frees
parameters). Tensor objects and their views stay valid and keep their
shapes; only the contents are lost. The KV cache is one int8 buffer that
every layer's cache views, and the CPU attention kernels take the layer's
tensor at each call (no raw pointers kept), so they see the new memory after
wake; it is zeroed then, as vLLM allocated it.

What the weights are on vLLM-CPU: a linear layer's `weight` parameter is an
empty tensor after loading; the weight lives in the layer's `cpu_linear`
closure, packed for the kernel (a oneDNN matmul handler, or a packed
tensor). That closure is replaced by one that raises, and dropping the old
one frees the packed copy (a oneDNN handler releases its memory when it is
collected); the reload's weight processing builds a new one (a layer the
round leaves out keeps the raising one, so generating fails loudly rather
than with garbage). A handler's bytes are counted as the k x n weight it
packed, in the layer's dtype: the resident memory drops by that much. The
input embedding and the output head hold both a weight parameter and a
packed copy; both are freed.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

import torch


def release(model_runner, level: int, state: dict) -> int:
    """Free the KV cache (level >= 1) and the weights (level 2) of `model_runner`; returns the bytes freed.

    `state` records what was freed ({tag: what free_storages returned}) for `restore`; a tag already
    in it is left as it is.
    """
    if level not in (1, 2):
        raise ValueError(f"sleep level must be 1 or 2, got {level}")
    freed = 0
    if "kv_cache" not in state:
        state["kv_cache"] = free_storages(_kv_cache_tensors(model_runner))
        freed += freed_bytes(state["kv_cache"])
    if level == 2 and "weights" not in state:
        model = model_runner.get_model()
        state["weights"] = free_storages(model.parameters())
        freed += freed_bytes(state["weights"]) + _drop_packed_weights(model)
    return_free_heap()
    return freed


def restore(state: dict, tags: Iterable[str]) -> int:
    """Give back the memory of the tags `release` freed (weights: contents undefined until a reload;
    KV cache: zeroed); returns the bytes allocated."""
    return sum(restore_storages(state.pop(tag, []), zero=tag == "kv_cache") for tag in tags)


# (storage, its size in bytes, its contents in host memory when offloaded, else None)
Freed = tuple[torch.UntypedStorage, int, "torch.Tensor | None"]


def free_storages(tensors: Iterable[torch.Tensor], offload: bool = False) -> list[Freed]:
    """Resize each distinct storage of `tensors` to 0 bytes, first copying it to pinned host memory if `offload`."""
    freed, seen = [], set()
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage._cdata in seen or storage.nbytes() == 0:  # _cdata: the storage itself, shared by every view
            continue
        seen.add(storage._cdata)
        host = None
        if offload:
            host = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=storage.device.type == "cuda")
            host.copy_(_bytes(storage))
        freed.append((storage, storage.nbytes(), host))
        storage.resize_(0)
    return freed


def restore_storages(freed: list[Freed], zero: bool = False) -> int:
    """Resize the storages back; copy their offloaded contents in, else zero them (`zero`) or leave them
    undefined. Returns the bytes allocated."""
    for storage, size, host in freed:
        storage.resize_(size)
        if host is not None:
            _bytes(storage).copy_(host)
        elif zero:
            _bytes(storage).zero_()
    return freed_bytes(freed)


def freed_bytes(freed: list[Freed]) -> int:
    return sum(size for _, size, _ in freed)


def _bytes(storage: torch.UntypedStorage) -> torch.Tensor:
    """The storage's bytes as a flat uint8 tensor (a view, no copy)."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage, 0, (storage.nbytes(),))


def _kv_cache_tensors(model_runner) -> list[torch.Tensor]:
    """The runner's KV caches and the ones bound to its attention layers (the same memory, viewed per layer)."""
    tensors = list(model_runner.kv_caches)
    for layer in model_runner.compilation_config.static_forward_context.values():
        cache = getattr(layer, "kv_cache", None)
        tensors.extend(cache if isinstance(cache, (list, tuple)) else [cache])
    return [t for t in tensors if isinstance(t, torch.Tensor)]


def _drop_packed_weights(model: torch.nn.Module) -> int:
    """Replace every layer's packed `cpu_linear` with one that raises; returns the bytes the old ones held."""
    dropped = 0
    for name, module in model.named_modules():
        linear = module.__dict__.get("cpu_linear")
        if linear is None or getattr(linear, "discarded", False):
            continue
        for cell in getattr(linear, "__closure__", None) or ():
            dropped += _packed_bytes(cell.cell_contents, module)
        module.cpu_linear = _discarded(name)
    return dropped


def _packed_bytes(held, module: torch.nn.Module) -> int:
    if isinstance(held, torch.Tensor):
        return held.untyped_storage().nbytes()
    if type(held).__name__ == "CPUDNNLGEMMHandler":  # oneDNN keeps its own k x n copy, out of torch's sight
        return held.k * held.n * module.weight.element_size()
    return 0


def _discarded(name: str):
    def linear(*args, **kwargs):
        raise RuntimeError(f"{name}: the weights were discarded by sleep(level=2); load new weights first")

    linear.discarded = True
    return linear


def return_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps small freed blocks otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
