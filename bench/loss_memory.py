"""Peak memory and time of the RLVR loss's output layer on the CPU: chunked against whole logits.

One response of T tokens (default 8192) over a V-word vocabulary (default 100K), hidden size H: the
loss path from the final hidden states to log-probs, entropy, a policy-gradient loss and its backward.

- whole: what the RLVR objective did before chunking: (T, V) logits, a tempered copy, float log-probs,
  and the entropy over the whole float tensor;
- chunked: `posttrain.algorithms.chunked.chunked_logprobs` (`model.loss_chunk_tokens` positions at a
  time, recomputed in backward).

Each variant runs in its own process, alternated, `--repeats` times; memory is the process's peak
resident set above what it held once its inputs existed. Prints medians and the ratios chunked / whole
(targets: memory at most 0.25x, time at most 1.2x).

    python bench/loss_memory.py [--tokens 8192] [--vocab 100000] [--hidden 256] [--chunk 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_variant(variant: str, tokens: int, vocab: int, hidden_size: int, chunk: int, temperature: float) -> dict:
    import torch

    from posttrain.algorithms.chunked import chunked_logprobs

    torch.manual_seed(0)
    head = torch.nn.Linear(hidden_size, vocab, bias=False)
    hidden = torch.randn(tokens, hidden_size, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    base = peak_rss_mib()
    start = time.perf_counter()
    if variant == "whole":
        logits = head(hidden)
        logits = logits / temperature  # the old path made this copy at every temperature
        flat = logits.float()
        logps = torch.gather(flat, -1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(flat, dim=-1)
        with torch.no_grad():
            logp = torch.log_softmax(logits.detach().float(), dim=-1)
            entropy = -(logp.exp() * logp).sum(dim=-1)
    else:
        logps, entropy = chunked_logprobs(head, hidden, targets, temperature=temperature, chunk=chunk, entropy=True)
    loss = -(0.5 * torch.exp(logps - logps.detach())).mean()
    loss.backward()
    seconds = time.perf_counter() - start
    return {"variant": variant, "s": seconds, "peak_mib": peak_rss_mib() - base, "entropy": float(entropy.mean()),
            "grad": float(hidden.grad.norm())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=100_000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", choices=["whole", "chunked"], help=argparse.SUPPRESS)  # one measurement
    args = parser.parse_args(argv)
    shape = (args.tokens, args.vocab, args.hidden, args.chunk, args.temperature)
    if args.variant:
        print(json.dumps(run_variant(args.variant, *shape)))
        return 0

    runs: dict[str, list[dict]] = {"whole": [], "chunked": []}
    for rep in range(args.repeats):
        for variant in (("whole", "chunked") if rep % 2 == 0 else ("chunked", "whole")):
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens),
                                  "--vocab", str(args.vocab), "--hidden", str(args.hidden), "--chunk", str(args.chunk),
                                  "--temperature", str(args.temperature)],
                                 check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            runs[variant].append(result)
            print(f"{variant:>8}: {result['s']:.2f} s, peak +{result['peak_mib']:.0f} MiB", flush=True)
    whole, chunked = runs["whole"], runs["chunked"]
    assert abs(whole[0]["grad"] - chunked[0]["grad"]) <= 1e-4 * max(1.0, whole[0]["grad"]), "gradients differ"
    memory = statistics.median(r["peak_mib"] for r in chunked) / statistics.median(r["peak_mib"] for r in whole)
    seconds = statistics.median(r["s"] for r in chunked) / statistics.median(r["s"] for r in whole)
    print(f"T={args.tokens} V={args.vocab} H={args.hidden} chunk={args.chunk}: peak memory chunked/whole "
          f"{memory:.3f}x (target <= 0.25x), time {seconds:.2f}x (target <= 1.2x); medians of {args.repeats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
