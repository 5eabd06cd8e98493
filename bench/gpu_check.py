"""The RLVR pieces on one CUDA GPU, a ~1B model: vLLM rollouts, bf16 learner steps, weight sync.

Run through bench/gpu_check.sh (needs the GPU stack: `make install GPU=1`). With `--torch-only` it runs
bench/gpu_torch.py instead: the learner at Olmo 3 7B shapes with torch and transformers alone. Workload: a random-init
Olmo 3 with the 7B's widths (hidden 4096, MLP 11008, heads of 64) and `--layers` layers (5: about 1.05B
parameters), a 4096-word vocabulary; `--prompts` prompts of 16-64 tokens x 8 samples, responses up to
256 tokens. The engine is an `EngineActor` (vLLM, bf16) holding half the GPU; the learner is a
transformers model in bf16 on the same GPU, trained with this project's GRPO loss and AdamW.

Prints, one line each: generated tokens/s (after a warm-up call), learner tokens/s over `--train-steps`
steps (forward, backward, optimizer), and weight-sync seconds (median of 3) through each path: `reload`
(the state dict over Ray into `load_weights`; an engine built for it, V1 multiprocessing off) and `ipc`
(`rollout.weight_sync: ipc`: the model's weights packed into two CUDA IPC buffers on the GPU and handed to
a second engine, built for it, bucket by bucket: `posttrain.rollout.weight_transfer.share`, what each
learner rank runs in `Learner.share_weights`). After the ipc rounds that engine must report the new policy
version and generate differently, or the script fails.

    python bench/gpu_check.py [--layers 5] [--prompts 64] [--train-steps 4] [--out runs/bench/gpu_check]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from rollout_engines import VOCAB, make_prompts  # bench/: random prompts of 16-64 tokens over this vocabulary

HIDDEN, INTERMEDIATE = 4096, 11008
SAMPLES, MAX_TOKENS, MICRO_BATCH = 8, 256, 8


def generated_tokens_per_s(actor, prompts: list[list[int]], seed: int) -> tuple[float, list]:
    import ray

    start = time.perf_counter()
    completions = ray.get(actor.generate.remote(prompts, SAMPLES, temperature=1.0, max_tokens=MAX_TOKENS,
                                                seed=seed), timeout=900)
    seconds = time.perf_counter() - start
    return sum(len(c.token_ids) for c in completions) / seconds, completions


def learner_tokens_per_s(model, prompts: list[list[int]], completions: list, steps: int) -> float:
    """`steps` GRPO updates (bf16 forward and backward, AdamW) on the sampled responses; trained tokens/s."""
    import torch

    from posttrain.algorithms.losses import gather_logprobs, grpo_clip_loss
    from posttrain.algorithms.masked import token_mean

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    g = torch.Generator().manual_seed(0)
    rows = [(prompts[c.prompt_index], c.token_ids) for c in completions if c.token_ids]
    advantages = torch.randn(len(rows), generator=g)  # random: the speed does not depend on them
    response_tokens = float(sum(len(r) for _, r in rows))  # token-level mean over the whole step
    trained, seconds = 0, 0.0
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for first in range(0, len(rows), MICRO_BATCH):
            chunk = rows[first:first + MICRO_BATCH]
            width = max(len(p) + len(r) for p, r in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.bool)
            for i, (p, r) in enumerate(chunk):
                ids[i, :len(p) + len(r)] = torch.tensor(p + r)
                mask[i, len(p):len(p) + len(r)] = True
            ids, mask = ids.cuda(), mask.cuda()
            logits = model(ids).logits[:, :-1].float()
            logprobs = gather_logprobs(logits, ids[:, 1:])
            target_mask = mask[:, 1:]
            loss, _ = grpo_clip_loss(logprobs, logprobs.detach(), advantages[first:first + len(chunk)].cuda(),
                                     target_mask)
            token_mean(loss, target_mask, normalizer=response_tokens).backward()
            trained += int(target_mask.sum())
        optimizer.step()
        torch.cuda.synchronize()
        seconds += time.perf_counter() - start
    return trained / seconds


def reload_seconds(actor, model, version: int) -> float:
    import ray

    start = time.perf_counter()
    named = [(name, tensor.detach().to("cpu")) for name, tensor in model.state_dict().items()]
    ray.get(actor.load_weights.remote(named, version), timeout=600)
    return time.perf_counter() - start


def ipc_seconds(actor, model, version: int, buffers: list, buckets: list) -> float:
    import ray

    from posttrain.rollout.weight_transfer import share

    start = time.perf_counter()
    held = actor.take_shared_weights.remote(version, 600)  # the driver's part of the round (IpcEngineActor)
    share(actor, buffers, buckets, [(name, param.detach()) for name, param in model.named_parameters()], version,
          round_id=version)
    ray.get(held, timeout=600)
    return time.perf_counter() - start


def spawn_engine(model_dir: Path, weight_sync: str):
    """An engine actor on half the GPU, built for `weight_sync`, once it answers; (actor, start-up seconds)."""
    import ray

    from posttrain.config import RolloutSection
    from posttrain.orchestration.actors import spawn_engine_actor

    options = RolloutSection(engine="vllm", weight_sync=weight_sync, gpu_memory_utilization=0.35, kv_cache_gib=16,
                             max_prompt_length=64, max_response_length=MAX_TOKENS)
    start = time.perf_counter()
    actor = spawn_engine_actor(str(model_dir), options, num_cpus=1, num_gpus=0.5)
    ray.get(actor.ping.remote(), timeout=900)
    return actor, round(time.perf_counter() - start, 1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--torch-only" in argv:  # the learner checks alone: torch and transformers, no vllm, ray or deepspeed
        from gpu_torch import main as torch_only

        return torch_only([a for a in argv if a != "--torch-only"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/gpu_check"))
    args = parser.parse_args(argv)

    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from posttrain.rollout.testing import build_checkpoint, random_weights

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    model_dir = args.out / "model"
    if not (model_dir / "config.json").is_file():
        build_checkpoint(model_dir, vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=args.layers,
                         intermediate_size=INTERMEDIATE, logit_scale=20.0)
    results: dict = {"gpu": torch.cuda.get_device_name(0), "layers": args.layers}

    ray.init(num_gpus=1, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    prompts = make_prompts(args.prompts)
    actor, results["engine_start_s"] = spawn_engine(model_dir, "reload")
    try:
        generated_tokens_per_s(actor, prompts[:8], seed=1)  # warm-up (CUDA graphs, caches)
        results["generate_tokens_per_s"], completions = generated_tokens_per_s(actor, prompts, seed=2)
        print(f"vLLM generate: {results['generate_tokens_per_s']:.0f} tokens/s "
              f"({len(completions)} responses, start-up {results['engine_start_s']} s)", flush=True)

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda()
        results["parameters"] = sum(p.numel() for p in model.parameters())
        results["train_tokens_per_s"] = learner_tokens_per_s(model, prompts, completions, args.train_steps)
        print(f"learner (bf16, {results['parameters'] / 1e9:.2f}B parameters): "
              f"{results['train_tokens_per_s']:.0f} trained tokens/s over {args.train_steps} steps", flush=True)

        results["sync_reload_s"] = statistics.median(reload_seconds(actor, model, v) for v in (1, 2, 3))
        print(f"weight sync, reload (Ray object -> load_weights): {results['sync_reload_s']:.2f} s", flush=True)
    finally:
        ray.kill(actor)

    from posttrain.rollout.shared_buffer import SharedBuffer
    from posttrain.rollout.weight_transfer import plan_buckets

    actor, results["ipc_engine_start_s"] = spawn_engine(model_dir, "ipc")
    try:
        before = ray.get(actor.generate.remote(prompts[:4], 1, temperature=0, max_tokens=8), timeout=300)
        model.load_state_dict({k: v.to(torch.bfloat16) for k, v in random_weights(model_dir, seed=3,
                                                                                logit_scale=20.0).items()})
        plan = plan_buckets([(n, p.shape) for n, p in model.named_parameters()], "bfloat16", 256 * 2**20)
        buffers = [SharedBuffer.create(max(b.nbytes for b in plan), "cuda") for _ in range(2)]
        buckets = [b.to_wire() for b in plan]
        results["sync_ipc_s"] = statistics.median(ipc_seconds(actor, model, v, buffers, buckets) for v in (4, 5, 6))
        after = ray.get(actor.generate.remote(prompts[:4], 1, temperature=0, max_tokens=8), timeout=300)
        version = ray.get(actor.ping.remote())["policy_version"]
        print(f"weight sync, ipc (CUDA IPC buffers, {len(plan)} buckets): {results['sync_ipc_s']:.2f} s", flush=True)
    finally:
        ray.kill(actor)
        ray.shutdown()
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    if version != 6 or [c.token_ids for c in after] == [c.token_ids for c in before]:
        print(f"gpu_check: the ipc round did not take (policy version {version}, outputs unchanged: "
              f"{[c.token_ids for c in after] == [c.token_ids for c in before]})", file=sys.stderr)
        return 1
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
