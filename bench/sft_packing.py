"""SFT throughput: packed rows (document-masked) against one padded conversation per row.

    python bench/sft_packing.py [--examples 320] [--max-length 512] [--micro-batch 8]

Workload: a length-skewed set of conversations, as chat data is: 85% short
(16-96 tokens) and 15% long (192-max_length tokens), loss on the second half
of each, in a random order. Model: the tiny Olmo-3 architecture (hidden 256,
4 layers, vocab 2048), randomly initialised, float32, on the CPU (or the
GPU when there is one).

Both sides train through the SFT stage's own path (`posttrain.data.sft.to_rows`
-> `collate` -> `Learner.train_step` with the SFT loss) over the same
examples, once each, `--micro-batch` rows per micro-batch and one optimizer
step per micro-batch. Each side runs in a fresh subprocess so that its peak
memory is its own (resident set on the CPU, `max_memory_allocated` on a GPU).

Prints effective tokens/s (real, non-padding tokens only), the padding
fraction and peak memory of each side, and the ratio packed / padded
(target: at least 2x).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def skewed_examples(n: int, max_length: int, vocab: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        length = rng.randint(16, 96) if rng.random() < 0.85 else rng.randint(192, max_length)
        ids = [rng.randrange(4, vocab) for _ in range(length)]
        labels = [-100] * (length // 2) + ids[length // 2:]
        examples.append({"input_ids": ids, "labels": labels})
    return examples


def build_model(path: str, vocab: int, max_length: int) -> None:
    import torch
    from transformers import Olmo3Config, Olmo3ForCausalLM

    config = Olmo3Config(vocab_size=vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=max(1024, max_length),
                         layer_types=["full_attention"] * 4, sliding_window=4096, tie_word_embeddings=False,
                         pad_token_id=1, eos_token_id=0, bos_token_id=None)
    torch.manual_seed(0)
    Olmo3ForCausalLM(config).save_pretrained(path)


def measure(mode: str, model_path: str, examples: list[dict], max_length: int, micro_batch: int, queue) -> None:
    """One side of the comparison, in its own process: train once over `examples`, report throughput and memory."""
    import torch

    from posttrain.config import DeepSpeedSection, LoraSection, ModelSection, OptimSection
    from posttrain.learner import Learner, LearnerSpec
    from posttrain.objectives.sft import sft_loss
    from posttrain.data.sft import batch_token_counts, collate, to_rows

    gpu = torch.cuda.is_available()
    rows = to_rows(examples, max_length, packing=mode == "packed")
    random.Random(1).shuffle(rows)
    batches = [collate(rows[i:i + micro_batch], pad_token_id=1) for i in range(0, len(rows), micro_batch)]
    spec = LearnerSpec(model=ModelSection(path=model_path), optim=OptimSection(lr=1e-4),
                       deepspeed=DeepSpeedSection(enabled=False), lora=LoraSection(), micro_batch_size=micro_batch,
                       accumulation=1, total_steps=len(batches) + 2, use_gpu=gpu, cpus_per_worker=os.cpu_count() or 1)
    learner = Learner(spec)
    warm = batches[0]
    learner.train_step([warm], sft_loss, normalizer=max(warm.num_loss_tokens, 1), world_size=1)  # first-call costs
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for batch in batches:
        learner.train_step([batch], sft_loss, normalizer=max(batch.num_loss_tokens, 1), world_size=1)
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    counts = batch_token_counts(batches)
    peak = (torch.cuda.max_memory_allocated() if gpu
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    queue.put({"mode": mode, "rows": len(rows), "micro_batches": len(batches), "seconds": seconds,
               "real_tokens": counts["real"], "slots": counts["total"],
               "tokens_per_s": counts["real"] / seconds, "padding_fraction": 1 - counts["real"] / counts["total"],
               "peak_memory_mib": peak / 2**20, "device": "cuda" if gpu else "cpu"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=320)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    vocab = 2048
    examples = skewed_examples(args.examples, args.max_length, vocab)
    with tempfile.TemporaryDirectory() as tmp:
        model_path = str(Path(tmp) / "model")
        build_model(model_path, vocab, args.max_length)
        context = mp.get_context("spawn")
        results = {}
        for mode in ("padded", "packed"):
            queue = context.Queue()
            proc = context.Process(target=measure, args=(mode, model_path, examples, args.max_length,
                                                         args.micro_batch, queue))
            proc.start()
            results[mode] = queue.get()
            proc.join()
    lengths = [len(e["input_ids"]) for e in examples]
    print(f"workload: {len(examples)} conversations, {sum(lengths)} tokens, lengths {min(lengths)}-{max(lengths)} "
          f"(median {sorted(lengths)[len(lengths) // 2]}), max_length {args.max_length}, "
          f"micro-batch {args.micro_batch} rows, device {results['packed']['device']}")
    for mode in ("padded", "packed"):
        r = results[mode]
        print(f"{mode:>6}: {r['rows']:4d} rows in {r['micro_batches']:3d} micro-batches, {r['seconds']:6.1f} s, "
              f"{r['tokens_per_s']:8.0f} real tokens/s, padding {r['padding_fraction']:.1%}, "
              f"peak memory {r['peak_memory_mib']:.0f} MiB")
    ratio = results["packed"]["tokens_per_s"] / results["padded"]["tokens_per_s"]
    memory = results["packed"]["peak_memory_mib"] / results["padded"]["peak_memory_mib"]
    print(f"packed / padded effective tokens/s: {ratio:.2f}x (target >= 2x); peak memory ratio {memory:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
