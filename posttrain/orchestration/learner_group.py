"""Learner ranks as Ray actors forming one torch.distributed process group.

`LearnerGroup(spec, num_workers, ...)` reserves one bundle per rank in a
placement group (checked against the cluster first, see `cluster.reserve`),
starts one `LearnerWorker` actor per bundle, picks rank 0's node address and
a free port as the rendezvous, and builds a `posttrain.learner.Learner` in
every actor at once (their process-group initialisation waits for all).

The driver then calls learner methods on every rank together, which is what
collective operations (ZeRO reductions, gathers, checkpoint writes) need:

    group.call("save_state", directory)                     # same arguments for every rank
    group.call_per_rank("train_step", [(mbs_0,), (mbs_1,)], loss_fn=f, normalizer=n)

Each actor has one role: it holds a learner and runs its methods; the data,
the loop and the files stay with the driver (the stage).
"""

from __future__ import annotations

import socket
from typing import Any, Sequence

import ray

from collections import Counter

from posttrain.orchestration.cluster import COLOCATED_GPU_SHARE, bundle, reserve


class LearnerWorker:
    """One training rank (wrapped with `ray.remote` by `LearnerGroup`)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self.learner = None

    def rendezvous(self) -> tuple[str, int]:
        """This node's address and a free port (asked of rank 0)."""
        address = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return address, port

    def setup(self, spec, master_addr: str, master_port: int) -> dict:
        import os

        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        from posttrain.learner import Learner

        self.learner = Learner(spec, rank=self.rank, world_size=self.world_size)
        params = sum(_numel(p) for p in self.learner.hf_model().parameters())
        trainable = sum(_numel(p) for p in self.learner.backend.unwrapped.parameters() if p.requires_grad)
        return {"parameters": params, "trainable_parameters": trainable}

    def call(self, method: str, *args, **kwargs) -> Any:
        return getattr(self.learner, method)(*args, **kwargs)


def _numel(param) -> int:
    """Elements of a parameter, whole even when ZeRO-3 has partitioned it away (its local numel() is 0)."""
    return int(getattr(param, "ds_numel", param.numel()))


class LearnerGroup:
    """`num_workers` learner ranks under Ray; see the module docstring."""

    def __init__(self, spec, num_workers: int, *, cpus_per_worker: float = 1.0, use_gpu: bool = False,
                 resources: dict[str, float] | None = None, name: str = "learner",
                 colocated: dict[str, float] | None = None):
        self.num_workers = num_workers
        rank = bundle(cpus_per_worker, 1.0 if use_gpu else 0.0, resources)
        # colocated: each bundle also holds an engine's share (placed there by EnginePool), and the GPU is split
        bundles = [dict(Counter(rank) + Counter(colocated or {})) for _ in range(num_workers)]
        self.placement_group = reserve(bundles, f"{name} ({num_workers} ranks)")
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        gpus = (COLOCATED_GPU_SHARE if colocated is not None else 1.0) if use_gpu else 0
        actor = ray.remote(LearnerWorker)
        self.workers = [
            actor.options(
                num_cpus=cpus_per_worker, num_gpus=gpus, name=None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group, placement_group_bundle_index=i),
            ).remote(i, num_workers)
            for i in range(num_workers)
        ]
        master_addr, master_port = ray.get(self.workers[0].rendezvous.remote())
        self.info = ray.get([w.setup.remote(spec, master_addr, master_port) for w in self.workers])[0]

    def call(self, method: str, *args, **kwargs) -> list:
        """Run `learner.method(*args, **kwargs)` on every rank at once; results in rank order."""
        return ray.get([w.call.remote(method, *args, **kwargs) for w in self.workers])

    def call_per_rank(self, method: str, args_per_rank: Sequence[tuple], **kwargs) -> list:
        """Like `call`, with rank r getting the positional arguments `args_per_rank[r]`."""
        if len(args_per_rank) != self.num_workers:
            raise ValueError(f"{method}: {len(args_per_rank)} argument tuples for {self.num_workers} ranks")
        return ray.get([w.call.remote(method, *args, **kwargs) for w, args in zip(self.workers, args_per_rank)])

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
        remove_placement_group(self.placement_group)
