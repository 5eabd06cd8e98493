"""`posttrain pairs --chosen-model A --rejected-model B --prompts P --out F`: build delta-learning DPO pairs."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "build preference pairs: chosen from a strong model, rejected from a weak one, checked by the rows' verifiers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--chosen-model", required=True, metavar="PATH", help="checkpoint whose answers are chosen (the strong model)")
    add("--rejected-model", required=True, metavar="PATH", help="checkpoint whose answers are rejected (the weak one)")
    add("--prompts", required=True, metavar="FILE",
        help="prompt rows: messages ending in a user turn, optionally a verifier and its ground_truth")
    add("--out", required=True, metavar="FILE", help="preference dataset to write (jsonl: chosen/rejected conversations)")
    add("--verifier-column", default="verifier", help="column naming the row's verifier (rows without one: unchecked)")
    add("--label-column", default="ground_truth", help="column holding the verifier's label")
    add("--id-column", default="id", help="column identifying a prompt for resuming (default: a hash of its messages)")
    add("--max-length-diff", type=int, metavar="N",
        help="drop pairs whose response lengths differ by more than N tokens (Olmo 3 Instruct: 100)")
    add("--pass-threshold", type=float, default=1.0, help="verifier score that counts as a pass")
    add("--engine", choices=("vllm", "hf"), default="vllm",
        help="rollout engine (hf: transformers generate, for tiny models)")
    add("--samples", type=int, default=1, help="samples per prompt and model (more raise the yield of verified pairs)")
    add("--temperature", type=float, default=0.6, help="sampling temperature")
    add("--top-p", type=float, default=0.95, help="nucleus sampling")
    add("--max-tokens", type=int, default=512, help="generated tokens per answer")
    add("--max-prompt-length", type=int, default=2048, help="longest prompt in tokens (sizes the engine's context)")
    add("--chunk-size", type=int, default=64, help="prompts per generate call (and per resumable append)")
    add("--seed", type=int, default=0, help="sampling seed")
    add("--kv-cache-gib", type=float, help="vLLM KV cache size in GiB (set it on CPU builds)")
    add("--gpu-memory-utilization", type=float, default=0.9, help="vLLM memory fraction (CPU memory on vLLM-CPU)")
    add("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from posttrain.data.sources import DataError
    from posttrain.pairs import PairsOptions, build_pairs

    options = PairsOptions(
        chosen_model=args.chosen_model, rejected_model=args.rejected_model, prompts=args.prompts, out=args.out,
        verifier_column=args.verifier_column, label_column=args.label_column, id_column=args.id_column,
        max_length_diff=args.max_length_diff, pass_threshold=args.pass_threshold, engine=args.engine,
        samples=args.samples, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
        max_prompt_length=args.max_prompt_length, chunk_size=args.chunk_size, seed=args.seed,
        kv_cache_gib=args.kv_cache_gib, gpu_memory_utilization=args.gpu_memory_utilization,
        progress=not args.no_progress,
    )
    try:
        report = build_pairs(options)
    except (DataError, ValueError) as err:
        print(err, file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict()))
    print(f"pairs: {report.kept} of {report.prompts} prompts kept -> {args.out}")
    return 0
