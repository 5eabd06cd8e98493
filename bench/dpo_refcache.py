"""DPO step time with cached reference log-probs vs a live reference model, measured in one run.

    .venv/bin/python bench/dpo_refcache.py [--model DIR] [--data FILE] [--steps 20]

Both modes train the same policy on the same batches with the same loss
(`posttrain.objectives.dpo.dpo_loss_fn`, dpo_norm): forward and backward
of the concatenated chosen+rejected batch, clipping, an AdamW step. The live
mode first runs a second, frozen copy of the model over the batch to get the
reference log-probs (what a trainer without a cache does every step); the
cached mode reads them from `posttrain.data.reference_cache` (computed once
before training, timed separately and reported). Steps alternate between the
modes so that machine noise hits both alike; the medians are compared.

Defaults: the tiny checkpoint and DPO data under runs/tiny (`posttrain tiny
--out runs/tiny`), else a randomly initialised tiny Olmo 3 with toy pairs
built in memory. Prints the ratio cached/live (target: <= 0.6).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from posttrain.data.preference import collate, tokenize_pairs  # noqa: E402
from posttrain.data import reference_cache as R  # noqa: E402
from posttrain.objectives.dpo import dpo_loss_fn, policy_logps  # noqa: E402

LOSS = dict(loss="dpo_norm", beta=5.0, gamma=0.0, label_smoothing=0.0)


def toy_setup(workdir: Path) -> tuple[Path, list[dict]]:
    """A random tiny Olmo 3 checkpoint and toy DPO rows, built from the tiny default's code."""
    from transformers import Olmo3ForCausalLM

    from posttrain.tiny import datasets as D
    from posttrain.tiny.model import tiny_config
    from posttrain.tiny.tokenizer import train_tokenizer

    cfg = D.DataConfig(dpo_train=512, dpo_heldout=8, sft_train=8, sft_heldout=8, rlvr_train=8, rlvr_heldout=8,
                       pool_math=700, pool_ifeval=700, pool_heldout=60)
    rng = random.Random(0)
    rows = D.build_datasets(D.make_pools(cfg, rng), cfg, rng)["dpo_think"]["train"]
    tokenizer = train_tokenizer([m["content"] for r in rows for m in r["chosen"] + r["rejected"]], vocab_size=2048)
    torch.manual_seed(0)
    model = Olmo3ForCausalLM(tiny_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id))
    model.save_pretrained(workdir)
    tokenizer.save_pretrained(workdir)
    return workdir, rows


def read_rows(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "runs/tiny/base")
    parser.add_argument("--data", type=Path, default=REPO / "runs/tiny/data/dpo_think/train.jsonl")
    parser.add_argument("--pairs-per-step", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="measured steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps per mode first")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scratch = tempfile.TemporaryDirectory()
    if args.model.is_dir() and args.data.is_file():
        model_dir, rows, source = args.model, read_rows(args.data), f"{args.model} + {args.data}"
    else:
        model_dir, rows = toy_setup(Path(scratch.name))
        source = "random tiny Olmo 3 + toy pairs (runs/tiny not built)"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad = tokenizer.pad_token_id
    total = (args.steps + args.warmup) * 2 * args.pairs_per_step
    pairs, _ = tokenize_pairs(tokenizer, rows[:total], max_length=512)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5, betas=(0.9, 0.95))

    started = time.perf_counter()
    cache = R.compute(lambda b: policy_logps(reference, b, pad), pairs, batch_size=2 * args.pairs_per_step, pad_id=pad)
    one_off = time.perf_counter() - started

    ref_forward: list[float] = []

    def step(indices: list[int], live: bool) -> float:
        start = time.perf_counter()
        if live:
            batch = collate(pairs, indices, pad)
            with torch.no_grad():
                batch.ref_chosen_logps, batch.ref_rejected_logps = policy_logps(reference, batch, pad)
            ref_forward.append(time.perf_counter() - start)
        else:
            batch = collate(pairs, indices, pad, cache.pair())
        loss, _ = dpo_loss_fn(policy, batch, pad_id=pad, pairs_in_step=len(indices), **LOSS)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[bool, list[float]] = {True: [], False: []}
    n = args.pairs_per_step
    for i in range(args.steps + args.warmup):
        for live in (i % 2 == 0, i % 2 == 1):  # alternate which mode goes first
            start = (2 * i + live) * n % max(len(pairs) - n, 1)
            seconds = step(list(range(start, start + n)), live)
            if i >= args.warmup:
                times[live].append(seconds)
    cached, live = statistics.median(times[False]), statistics.median(times[True])
    params = sum(p.numel() for p in policy.parameters())
    print(f"data: {source}; {len(pairs)} pairs, {n} pairs per step, {args.steps} measured steps per mode, "
          f"{torch.get_num_threads()} threads")
    print(f"reference pass (once, cached): {one_off:.2f}s for {len(pairs)} pairs")
    size = f"{params / 1e6:.2f}M parameters"
    print(f"step, live reference model:   {live * 1000:.1f} ms (median); models in memory: 2 x {size}")
    print(f"  of which the reference forward: {statistics.median(ref_forward) * 1000:.1f} ms (median), "
          "the most a cache can save: it replaces one no-grad forward beside a forward, a backward and an update")
    print(f"step, cached reference:       {cached * 1000:.1f} ms (median); models in memory: 1 x {size}")
    print(f"ratio cached / live: {cached / live:.2f}x (target <= 0.6x)")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
