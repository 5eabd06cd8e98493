"""Shared weight buffers: a flat byte buffer one process fills and another process on the same device opens.

What `rollout.weight_sync: ipc` hands from a learner rank to its colocated
engine. The owner (`SharedBuffer.create(nbytes, device)`) keeps the buffer and
gives out `handle()`s: plain picklable data (str, int, bytes, lists) that the
other process turns back into a tensor over the same memory with
`open_shared(handle, device)`, no copy. Kinds, by device type (`SHARED_KINDS`):

- `cuda`: a CUDA allocation shared through CUDA IPC
  (`torch.multiprocessing.reductions.reduce_tensor` / `rebuild_cuda_tensor`,
  as vLLM's IPC weight transfer does). Each `handle()` is a fresh export with
  its own reference count, which the opener releases when its tensor goes.
  The handle carries the GPU's UUID: the opener rebuilds it on its own device
  index and refuses a handle from another physical GPU.
- `cpu`: a file in /dev/shm mapped by both sides
  (`torch.from_file(path, shared=True)`), named per owner process; the owner
  unlinks it in `close()` and, failing that, when its process exits normally
  (a process killed outright leaves it behind).

The owner must finish writing before it gives out a handle (`handle()`
synchronises the CUDA stream), and must not overwrite the buffer until the
opener says it is done reading.
"""

from __future__ import annotations

import os
import socket
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from posttrain.registry import Registry

SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class SharedKind:
    """How one device type shares memory."""

    create: Callable[[int, torch.device], tuple[torch.Tensor, Callable[[], None]]]  # -> (buffer, release it)
    handle: Callable[[torch.Tensor], dict]  # the handle's fields, one call per send
    open: Callable[[dict, torch.device], torch.Tensor]  # handle -> the same memory in this process


SHARED_KINDS: Registry[SharedKind] = Registry("shared buffer kind")


class SharedBuffer:
    """The owner's side: `tensor` is (nbytes,) uint8 on `device` (`create`); see the module docstring."""

    def __init__(self, tensor: torch.Tensor, kind: str, release: Callable[[], None]):
        self.tensor, self.kind = tensor, kind
        self._release = weakref.finalize(self, release)  # runs at close, or at a normal interpreter exit

    @classmethod
    def create(cls, nbytes: int, device: torch.device | str = "cpu") -> "SharedBuffer":
        device = torch.device(device)
        tensor, release = SHARED_KINDS.get(device.type).create(int(nbytes), device)
        return cls(tensor, device.type, release)

    @property
    def nbytes(self) -> int:
        return self.tensor.numel()

    def handle(self) -> dict:
        """What another process needs to open this buffer (plain data; see the module docstring)."""
        if self.tensor is None:
            raise RuntimeError("handle() of a closed shared buffer")
        return {"kind": self.kind, **SHARED_KINDS.get(self.kind).handle(self.tensor)}

    def close(self) -> None:
        """Release the buffer (unlink its file); openers' mappings stay valid until they drop them."""
        self.tensor = None
        self._release()


def open_shared(handle: dict, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (nbytes,) uint8 tensor over the memory of `handle` (no copy): on `device` (this process's index of
    the owner's GPU) for a CUDA handle, on the CPU for a /dev/shm one."""
    return SHARED_KINDS.get(handle["kind"]).open(handle, torch.device(device))


# ---------------------------------------------------------------- cpu: a /dev/shm file


def _shm_create(nbytes: int, device: torch.device):
    path = os.path.join(SHM_DIR, f"posttrain-weights-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    tensor = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
    return tensor, lambda: _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _shm_handle(tensor: torch.Tensor) -> dict:
    return {"path": tensor.untyped_storage().filename, "nbytes": tensor.numel(), "host": socket.gethostname()}


def _shm_open(handle: dict, device: torch.device) -> torch.Tensor:
    if handle["host"] != socket.gethostname():
        raise ValueError(f"a shared buffer of host {handle['host']} cannot be opened on {socket.gethostname()}: "
                         "the learner rank and its engine must share a machine (distributed.colocate)")
    if not os.path.exists(handle["path"]):  # from_file(shared=True) would create an empty one
        raise FileNotFoundError(f"shared buffer {handle['path']} is gone (its owner closed it or exited)")
    return torch.from_file(handle["path"], shared=True, size=int(handle["nbytes"]), dtype=torch.uint8)


SHARED_KINDS.register("cpu", SharedKind(_shm_create, _shm_handle, _shm_open))


# ---------------------------------------------------------------- cuda: CUDA IPC


def _cuda_create(nbytes: int, device: torch.device):
    tensor = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return tensor, torch.cuda.ipc_collect  # frees what openers have released


def _gpu_uuid(device: torch.device) -> str:
    return str(torch.cuda.get_device_properties(device).uuid)


def _cuda_handle(tensor: torch.Tensor) -> dict:
    from torch.multiprocessing.reductions import reduce_tensor

    torch.cuda.current_stream(tensor.device).synchronize()  # the opener reads what was written
    _, args = reduce_tensor(tensor)
    # rebuild_cuda_tensor's arguments, the classes and dtype left out (always Tensor, TypedStorage, uint8)
    (_, size, stride, offset, _, _, device, storage, storage_bytes, storage_offset, _, counter, counter_offset,
     event, event_sync) = args
    return {"uuid": _gpu_uuid(tensor.device), "size": list(size), "stride": list(stride), "offset": offset,
            "device": device, "storage": storage, "storage_bytes": storage_bytes, "storage_offset": storage_offset,
            "counter": counter, "counter_offset": counter_offset, "event": event, "event_sync": event_sync}


def _cuda_open(handle: dict, device: torch.device) -> torch.Tensor:
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    index = device.index if device.index is not None else torch.cuda.current_device()
    mine = _gpu_uuid(torch.device("cuda", index))
    if handle["uuid"] != mine:
        raise ValueError(f"a CUDA IPC handle of GPU {handle['uuid']} cannot be opened on GPU {mine}: the learner "
                         "rank and its engine must share one GPU (distributed.colocate)")
    h = handle
    # the owner's device index means nothing here: the same GPU may have another index in this process
    return rebuild_cuda_tensor(torch.Tensor, torch.Size(h["size"]), tuple(h["stride"]), h["offset"],
                               torch.storage.TypedStorage, torch.uint8, index, h["storage"], h["storage_bytes"],
                               h["storage_offset"], False, h["counter"], h["counter_offset"], h["event"],
                               h["event_sync"])


SHARED_KINDS.register("cuda", SharedKind(_cuda_create, _cuda_handle, _cuda_open))
