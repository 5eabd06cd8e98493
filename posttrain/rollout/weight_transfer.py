"""Broadcast weight transfer: flat buckets over one collective group, learner rank 0 to every engine worker.

The group (`WeightGroup`) is its own torch.distributed process group, made
from a TCPStore that learner rank 0 hosts: gloo on CPUs, NCCL on GPUs. It
never touches the default process group, so the learner's DeepSpeed group and
vLLM's own groups are left alone. Ranks: 0 is the sender (learner rank 0);
engine e's tensor-parallel worker w is 1 + e * tensor_parallel_size + w.

The weights travel in the order the learner yields them (layer by layer), in
buckets: `plan_buckets` cuts the (name, shape) list into flat buffers of at
most `bucket_bytes` (a larger tensor gets a bucket of its own), in the
engine's dtype. Both sides compute nothing else: the sender packs a bucket and
broadcasts it; a receiver broadcasts into an empty buffer of the same size and
hands views of it (`unpack`) to the model's weight loader. Memory on either
side is bounded by a bucket (or the largest tensor, when larger), not the
model; a receiver whose loader holds a layer's tensors until the layer is
complete (vLLM) holds the buckets that layer spans.

`rollout.weight_sync: ipc` cuts and packs its buckets the same way, into
shared buffers (posttrain.rollout.shared_buffer) that the sender hands to one
colocated engine a bucket at a time (`share`) instead of broadcasting them.
"""

from __future__ import annotations

import datetime
import math
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

DEFAULT_BUCKET_BYTES = 256 * 2**20


@dataclass(frozen=True)
class TensorSlot:
    """One tensor's place in a bucket: elements [offset, offset + numel) of the flat buffer."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Bucket:
    """A flat buffer of `numel` elements of `dtype` holding `slots`, sent as one broadcast."""

    dtype: str
    numel: int
    slots: tuple[TensorSlot, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.torch_dtype).element_size()

    def to_wire(self) -> list:
        """Plain lists (what vLLM's RPC serialiser carries); `Bucket.from_wire` reverses it."""
        return [self.dtype, self.numel, [[s.name, list(s.shape), s.offset] for s in self.slots]]

    @classmethod
    def from_wire(cls, wire: Sequence) -> "Bucket":
        dtype, numel, slots = wire
        return cls(dtype, int(numel), tuple(TensorSlot(n, tuple(shape), int(o)) for n, shape, o in slots))


def plan_buckets(metadata: Iterable[tuple[str, Sequence[int]]], dtype: str,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> list[Bucket]:
    """Cut (name, shape) pairs, in order, into buckets of at most `bucket_bytes` (one tensor per bucket when larger).

    >>> [len(b.slots) for b in plan_buckets([("a", (4,)), ("b", (4,)), ("c", (8,))], "float32", 32)]
    [2, 1]
    """
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    limit = max(1, bucket_bytes // itemsize)
    buckets, slots, used = [], [], 0
    for name, shape in metadata:
        numel = math.prod(shape)
        if slots and used + numel > limit:
            buckets.append(Bucket(dtype, used, tuple(slots)))
            slots, used = [], 0
        slots.append(TensorSlot(name, tuple(int(d) for d in shape), used))
        used += numel
    if slots:
        buckets.append(Bucket(dtype, used, tuple(slots)))
    return buckets


def pack(bucket: Bucket, tensors: Sequence[torch.Tensor], device: torch.device | str = "cpu",
         out: torch.Tensor | None = None) -> torch.Tensor:
    """The bucket's flat buffer filled with `tensors` (one per slot, cast to the bucket's dtype).

    `out`: a byte buffer of at least `bucket.nbytes` to fill (its start, viewed in the bucket's dtype, is
    returned) instead of a new buffer on `device`.
    """
    if len(tensors) != len(bucket.slots):
        raise ValueError(f"bucket of {len(bucket.slots)} tensors given {len(tensors)}")
    if out is None:
        flat = torch.empty(bucket.numel, dtype=bucket.torch_dtype, device=device)
    elif out.numel() * out.element_size() < bucket.nbytes:
        raise ValueError(f"a bucket of {bucket.nbytes} bytes does not fit a buffer of {out.numel() * out.element_size()}")
    else:
        flat = out[: bucket.nbytes].view(bucket.torch_dtype)
    for slot, tensor in zip(bucket.slots, tensors):
        if tuple(tensor.shape) != slot.shape:
            raise ValueError(f"{slot.name}: shape {tuple(tensor.shape)} where the bucket plan has {slot.shape}")
        flat[slot.offset: slot.offset + slot.numel].copy_(tensor.reshape(-1))
    return flat


def unpack(bucket: Bucket, flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, view of `flat`) per slot: no copies."""
    for slot in bucket.slots:
        yield slot.name, flat[slot.offset: slot.offset + slot.numel].view(slot.shape)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class WeightGroup:
    """A standalone process group for weight broadcasts (see the module docstring).

    Rank 0 hosts the store (and must be created on `host`); the others connect
    to it. Every member must call `broadcast` with a buffer of the same size and
    dtype, in the same order. A member that dies makes the others' pending and
    later broadcasts fail (or time out after `timeout_s`): the group is then
    closed and a new one formed.
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, *, device: torch.device | str = "cpu",
                 timeout_s: float = 300.0):
        from torch.distributed import PrefixStore, TCPStore

        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        timeout = datetime.timedelta(seconds=timeout_s)
        # The host's constructor returns at once (wait_for_workers=False); the group forms when all have joined.
        store = TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
        self._store = store
        prefix = PrefixStore("posttrain/weights", store)
        if self.device.type == "cuda":
            options = torch.distributed.ProcessGroupNCCL.Options()
            options._timeout = timeout  # else NCCL's default (10 min) applies, then its watchdog ends the process
            self._group = torch.distributed.ProcessGroupNCCL(prefix, rank, world_size, options)
        else:
            self._group = torch.distributed.ProcessGroupGloo(prefix, rank, world_size, timeout)

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Broadcast `tensor` from rank 0 into every member's `tensor` (in place); returns it."""
        options = torch.distributed.BroadcastOptions()
        options.rootRank = 0
        self._group.broadcast([tensor], options).wait()
        if tensor.is_cuda:
            torch.cuda.current_stream().synchronize()
        return tensor

    def close(self) -> None:
        group, self._group = self._group, None
        if group is not None:
            # abort, not a graceful shutdown: after a failed round the peers may be dead or stuck
            stop = getattr(group, "abort", None) or getattr(group, "shutdown", None)
            if stop is not None:
                stop()
        self._store = None


def grouped(buckets: Sequence[Bucket], named: Iterable[tuple[str, torch.Tensor]]
            ) -> Iterator[tuple[Bucket, list[torch.Tensor]]]:
    """(bucket, its tensors) per bucket of the plan, drawing the named tensors in plan order (lazily: a bucket's
    tensors are drawn only when it is asked for). Raises when the names leave the plan."""
    named = iter(named)
    for bucket in buckets:
        tensors = []
        for slot in bucket.slots:
            name, tensor = next(named, (None, None))
            if name is None:
                raise ValueError(f"the weights end before {slot.name!r} of the bucket plan")
            if name != slot.name:
                raise ValueError(f"weights arrive as {name!r} where the bucket plan has {slot.name!r}")
            tensors.append(tensor)
        yield bucket, tensors
    leftover = next(named, None)
    if leftover is not None:
        raise ValueError(f"the bucket plan ends before {leftover[0]!r}")


def send(group: WeightGroup, buckets: Sequence[Bucket], named: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Sender side: pack the named tensors (in plan order) bucket by bucket and broadcast each; bytes sent."""
    sent = 0
    for bucket, tensors in grouped(buckets, named):
        flat = group.broadcast(pack(bucket, tensors, group.device))
        sent += flat.numel() * flat.element_size()
    return sent


def share(engine, buffers: Sequence, buckets: Sequence[list], named: Iterable[tuple[str, torch.Tensor]],
          version: int, round_id: int) -> tuple[int, float]:
    """Ipc sender side: round `round_id` of the named tensors (in plan order) to `engine`, a Ray handle of an
    `IpcEngineActor` (posttrain.orchestration.actors) that can open `buffers` (SharedBuffer, two or more).

    Calls `begin_shared_weights`, then `load_shared_bucket(bucket, handle)` per bucket of the plan `buckets`
    (wire form), each packed into the next buffer in turn, then `end_shared_weights(version)`; after a failure,
    `abort_shared_weights`. Packing bucket k+1 overlaps the engine loading bucket k; a buffer is refilled only
    once the engine has acknowledged the bucket it held (the engine copies each bucket out). Returns (bytes
    handed over, the engine's seconds). The driver holds the engine for the round meanwhile
    (`take_shared_weights`).
    """
    import ray

    refs = [engine.begin_shared_weights.remote(round_id)]
    held = [None] * len(buffers)  # per buffer: the ack of the bucket it holds
    sent = 0
    try:
        for k, (bucket, tensors) in enumerate(grouped([Bucket.from_wire(b) for b in buckets], named)):
            slot = k % len(buffers)
            if held[slot] is not None:
                ray.get(held[slot])
            with torch.no_grad():
                pack(bucket, tensors, out=buffers[slot].tensor)
            held[slot] = engine.load_shared_bucket.remote(buckets[k], buffers[slot].handle())
            refs.append(held[slot])
            sent += bucket.nbytes
        refs.append(engine.end_shared_weights.remote(round_id, version))
        return sent, ray.get(refs)[-1]
    except Exception as error:
        engine.abort_shared_weights.remote(round_id, repr(error))  # not awaited: the engine may be dead
        raise


def receive(group: WeightGroup, buckets: Sequence[Bucket]) -> Iterator[tuple[str, torch.Tensor]]:
    """Receiver side: the (name, tensor) stream of one broadcast round, a bucket at a time (lazily)."""
    for bucket in buckets:
        flat = group.broadcast(torch.empty(bucket.numel, dtype=bucket.torch_dtype, device=group.device))
        yield from unpack(bucket, flat)
