"""vLLM against the `hf` engine: generated tokens/s and weight-load seconds, measured side by side.

Workload (as in RLVR, where generation dominates): a random-init Olmo 3 of
about 25M parameters (hidden 512, 8 heads of 64, 6 layers, vocabulary 4096),
`--prompts` prompts of 16-64 tokens, 8 samples each, responses up to 256
tokens. Response lengths vary within and across groups: the eos output row
is aligned with the model's mean final hidden state, so eos gets a steady
per-token probability (3% on random text, less on the model's own output)
and responses stop at random, the longest ones at the 256 cap.

Both engines run with the recipe defaults for their options, each in its own
child process (vLLM's Transformers backend rewrites transformers' Olmo 3
class in the process that builds it) with the same thread count. After a
warm-up call each, the engines alternate for `--rounds` rounds on the same
prompts and seeds; tokens/s is total generated tokens over total seconds.
Weight load: the full state dict through `load_weights`, median of 3.

    python bench/rollout_engines.py [--prompts 8] [--rounds 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

VOCAB, HIDDEN, LAYERS, INTERMEDIATE = 4096, 512, 6, 1536
SAMPLES, MAX_TOKENS = 8, 256
EOS_PROBABILITY = 0.03  # per generated token, on average (random eos gives varied lengths)


def build_model(out: Path) -> tuple[Path, int]:
    """The checkpoint (eos row aligned for random stops); returns (dir, parameter count)."""
    import torch
    from safetensors.torch import load_file, save_file

    from posttrain.rollout.testing import build_checkpoint, word_tokenizer

    build_checkpoint(out, vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, intermediate_size=INTERMEDIATE)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        tokens = torch.randint(4, VOCAB, (8, 64), generator=torch.Generator().manual_seed(0))
        out_ = model(tokens, output_hidden_states=True)
        hidden = out_.hidden_states[-1].reshape(-1, HIDDEN)  # after the final norm
        logits = out_.logits.reshape(-1, VOCAB)
    direction = hidden.mean(0)
    # eos logit = target on average: log p(eos) ~ target - logsumexp(other logits)
    target = torch.logsumexp(logits, -1).mean().item() + torch.log(torch.tensor(EOS_PROBABILITY)).item()
    eos = word_tokenizer(VOCAB).convert_tokens_to_ids("<|im_end|>")
    weights = load_file(str(out / "model.safetensors"))
    weights["lm_head.weight"][eos] = direction * (target / direction.dot(direction))
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out, sum(t.numel() for t in weights.values())


def make_prompts(count: int, seed: int = 0) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (int(torch.randint(16, 65, ()).item()),), generator=g).tolist() for _ in range(count)]


def timed_generate(engine, prompts: list[list[int]], seed: int) -> dict:
    start = time.perf_counter()
    out = engine.generate(prompts, SAMPLES, temperature=1.0, max_tokens=MAX_TOKENS, seed=seed)
    seconds = time.perf_counter() - start
    lengths = [len(c.token_ids) for c in out]
    return {"seconds": seconds, "tokens": sum(lengths), "stopped": sum(c.finish_reason == "stop" for c in out),
            "samples": len(out), "mean_length": statistics.mean(lengths)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="prompts per generate call (x8 samples)")
    parser.add_argument("--rounds", type=int, default=1, help="timed generate calls per engine, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of each engine process")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by both engine processes
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from posttrain.config import RolloutSection
    from posttrain.rollout.testing import EngineProcess

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, params = build_model(Path(tmp) / "model")
        print(f"model: random Olmo 3, {params / 1e6:.1f}M parameters; {args.prompts} prompts x {SAMPLES} samples, "
              f"up to {MAX_TOKENS} tokens; {args.threads} thread(s) per engine", flush=True)
        options = RolloutSection(kv_cache_gib=2, gpu_memory_utilization=0.2, max_prompt_length=128,
                                 max_response_length=MAX_TOKENS)
        engines = {name: EngineProcess(model_dir, options.model_copy(update={"engine": name})) for name in ("vllm", "hf")}
        results = {name: {"start_s": engine.build_seconds, "runs": []} for name, engine in engines.items()}
        prompts = make_prompts(args.prompts)
        for engine in engines.values():  # warm-up: first-call compilation and allocation
            engine.generate(prompts[:2], SAMPLES, max_tokens=16, seed=99)
        for round_ in range(args.rounds):
            for name, engine in engines.items():
                run = timed_generate(engine, prompts, seed=round_)
                results[name]["runs"].append(run)
                print(f"  {name:4s} round {round_}: {run['tokens']} tokens in {run['seconds']:.1f} s "
                      f"({run['stopped']}/{run['samples']} stopped at eos, mean length {run['mean_length']:.0f})", flush=True)
        from safetensors.torch import load_file

        weights = list(load_file(str(model_dir / "model.safetensors")).items())
        for name, engine in engines.items():
            results[name]["load_weights_s"] = statistics.median(engine.load_weights(weights, v) for v in (1, 2, 3))
            engine.close()

    for name, r in results.items():
        r["tokens_per_s"] = sum(x["tokens"] for x in r["runs"]) / sum(x["seconds"] for x in r["runs"])
    ratio = results["vllm"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
    print(f"\n{'engine':6s} {'tokens/s':>9s} {'load_weights s':>15s} {'start-up s':>11s}")
    for name, r in results.items():
        print(f"{name:6s} {r['tokens_per_s']:9.0f} {r['load_weights_s']:15.3f} {r['start_s']:11.1f}")
    print(f"vllm / hf generated tokens/s: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"ratio": ratio, "params": params, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
