"""Weight sync, learner -> two vLLM-CPU engines: broadcast against reload (and ipc), side by side in one run.

Workload: a random-initialised Olmo 3 of >= 100M parameters (hidden 512, 16 layers, 32,768 vocabulary,
float32), one learner rank (torch backend) on Ray and two vLLM-CPU engine actors, placed and driven
exactly as the RLVR stage does (`EnginePool`, `WEIGHT_SYNCS`). `ipc` pairs each engine with a learner rank
of its own (two ranks, as colocation places them; every rank holds the whole model). For each strategy:

- seconds per sync: `settle(push(version))` as the stage waits for it (the learner's gather and send, every
  engine's load), median of `--syncs` rounds after one warm-up round;
- generation throughput while syncs are under way: both engines generate for `--window` seconds while the
  driver pushes a sync every `--every` seconds, against the same window without syncs (tokens/s ratio).

Target: broadcast seconds per sync at most 0.3x reload's.

    python bench/weight_sync.py [--syncs 5] [--window 60] [--every 5] [--syncs-to-compare broadcast,reload,ipc]
                                [--out runs/bench/weight_sync]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MIN_PARAMS = 100_000_000
PROMPT = list(range(10, 42))


def build_model(out: Path) -> tuple[Path, int]:
    """A random Olmo 3 of >= MIN_PARAMS parameters with a word tokenizer (reused when already there)."""
    import torch
    from transformers import Olmo3Config, Olmo3ForCausalLM

    from posttrain.rollout.testing import word_tokenizer

    if not (out / "config.json").is_file():
        tokenizer = word_tokenizer(32_768)
        config = Olmo3Config(vocab_size=32_768, hidden_size=512, intermediate_size=2048, num_hidden_layers=16,
                             num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                             tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        Olmo3ForCausalLM(config).save_pretrained(out)
        tokenizer.save_pretrained(out)
    params = sum(t.numel() for t in Olmo3ForCausalLM(Olmo3Config.from_pretrained(out)).parameters())
    if params < MIN_PARAMS:
        raise SystemExit(f"the bench model has {params} parameters, fewer than {MIN_PARAMS}")
    return out, params


def recipe(model: Path, weight_sync: str):
    from posttrain.config import RLVRConfig

    return RLVRConfig.model_validate({
        "stage": "rlvr", "model": {"path": str(model)}, "data": {"train": [{"path": "unused.jsonl"}]},
        "output": {"dir": "unused"}, "optim": {"lr": 1e-5}, "batch": {"micro_batch_size": 1},
        "grpo": {"prompts_per_step": 1, "samples_per_prompt": 2},
        "rollout": {"engine": "vllm", "num_engines": 2, "cpus_per_engine": 1, "kv_cache_gib": 1,
                    "gpu_memory_utilization": 0.1, "max_prompt_length": 64, "max_response_length": 64,
                    "weight_sync": weight_sync},
        "distributed": {"cpus_per_worker": 1},
        "verifiers": {"cpus_per_worker": 0},
    })


def generated_tokens(engines, window: float, sync=None, every: float = 0.0) -> tuple[float, int]:
    """Both engines generate back to back for `window` seconds (a sync pushed every `every` s when given);
    (tokens/s over the window, syncs done)."""
    import ray

    def submit(actor):  # small calls, so that many finish inside the window (a 100M model on one CPU thread)
        return actor.generate.remote([PROMPT] * 2, 2, temperature=1.0, max_tokens=16)

    start, tokens, syncs, version = time.perf_counter(), 0, 0, 100
    inflight = {submit(a): a for a in engines.actors}
    rounds, next_sync = [], start + every
    while time.perf_counter() - start < window:
        if sync is not None and time.perf_counter() >= next_sync:
            version += 1
            rounds.append(sync.push(version))
            next_sync += every
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.2)
        for ref in ready:
            actor = inflight.pop(ref)
            tokens += sum(len(c.token_ids) for c in ray.get(ref))
            inflight[submit(actor)] = actor
    elapsed = time.perf_counter() - start
    ray.get(list(inflight))
    for round_ in rounds:
        sync.settle(round_)
        syncs += 1
    return tokens / elapsed, syncs


def measure(model: Path, weight_sync: str, args) -> dict:
    from posttrain.learner import LearnerSpec
    from posttrain.orchestration.learner_group import LearnerGroup
    from posttrain.orchestration.topology import EnginePool
    from posttrain.orchestration.weight_sync import WEIGHT_SYNCS

    config = recipe(model, weight_sync)
    spec = LearnerSpec.from_config(config, accumulation=1, total_steps=1)
    ranks = 2 if weight_sync == "ipc" else 1  # ipc: rank i -> engine i
    learners = LearnerGroup(spec, ranks, cpus_per_worker=1 / ranks)
    engines = EnginePool(config, str(model))
    try:
        engines.wait_ready()
        sync = WEIGHT_SYNCS.get(weight_sync)(learners, engines, config)
        sync.connect()
        sync.settle(sync.push(1))  # warm-up: first gathers, first loads
        seconds, loads = [], []
        for version in range(2, 2 + args.syncs):
            start = time.perf_counter()
            loads.append(max(sync.settle(sync.push(version))))
            seconds.append(time.perf_counter() - start)
        quiet, _ = generated_tokens(engines, args.window)
        busy, syncs = generated_tokens(engines, args.window, sync, args.every)
        sync.close()
    finally:
        engines.shutdown()
        learners.shutdown()
    result = {"weight_sync": weight_sync, "sync_s": statistics.median(seconds), "sync_s_all": seconds,
              "engine_load_s": statistics.median(loads), "tokens_per_s": quiet, "tokens_per_s_with_syncs": busy,
              "syncs_in_window": syncs}
    print(f"{weight_sync:>9}: {result['sync_s']:.3f} s per sync (engine load {result['engine_load_s']:.3f} s; "
          f"all {', '.join(f'{s:.2f}' for s in seconds)}); generation {quiet:.0f} tokens/s, "
          f"{busy:.0f} with a sync every {args.every:g} s ({syncs} syncs)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--syncs", type=int, default=5)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=REPO / "runs/bench/weight_sync")
    parser.add_argument("--syncs-to-compare", default="broadcast,reload,ipc", help="strategies, comma-separated")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from posttrain.orchestration.cluster import init_ray

    model, params = build_model(args.out / "model")
    print(f"model: random Olmo 3, {params / 1e6:.1f}M parameters, float32 ({params * 4 / 2**20:.0f} MiB)")
    init_ray(num_cpus=4, env={"HF_HUB_OFFLINE": "1"})  # learner 1 + engines 2 x 1 (+ spare) logical CPUs
    results = {name: measure(model, name, args) for name in args.syncs_to_compare.split(",")}
    ratio = results["broadcast"]["sync_s"] / results["reload"]["sync_s"]
    summary = {"parameters": params, "results": results, "broadcast_over_reload": ratio,
               "target": "<= 0.3", "met": ratio <= 0.3}
    if "ipc" in results:
        summary["ipc_over_reload"] = results["ipc"]["sync_s"] / results["reload"]["sync_s"]
        print(f"ipc / reload seconds per sync: {summary['ipc_over_reload']:.3f}")
    for name, r in results.items():
        quiet = r["tokens_per_s"]  # 0 when no call finished inside the window: no ratio
        summary[f"{name}_generation_with_syncs_over_without"] = r["tokens_per_s_with_syncs"] / quiet if quiet else None
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"broadcast / reload seconds per sync: {ratio:.3f} (target <= 0.3: {'met' if ratio <= 0.3 else 'NOT met'})")
    for name in results:
        ratio = summary[f"{name}_generation_with_syncs_over_without"]
        print(f"{name}: generation with syncs / without: " + (f"{ratio:.2f}" if ratio is not None else
                                                               "no call finished in the window (raise --window)"))


if __name__ == "__main__":
    main()
