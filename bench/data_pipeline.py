"""SFT data preparation: the token cache (index arrays over memory-mapped stores) against the per-row path.

    python bench/data_pipeline.py [--rows 100000] [--big-rows 1000000] [--max-length 4096] [--num-proc N] [--quick]

Workload: conversations shaped like the released Olmo 3 SFT data (Dolci), in
Parquet shards of the released column shape (`id`, `messages` as a list of
{role, content, functions, function_calls}, `dataset_source`): 1-3 exchanges,
a think block on most assistant turns, and a third of them tool-use rows
(`functions` on the system turn, an assistant turn with only
`function_calls`, an `environment` turn with the output, then the answer).
Lengths 200-4000 tokens of the tiny tokenizer (log-uniform). The tokenizer is
the tiny one (`posttrain.tiny.tokenizer.train_tokenizer`, vocab 2048) trained
on a sample of the workload.

Each measurement runs in a fresh subprocess, with its own empty datasets
cache, so that neither its time nor its memory includes another's:
- per-row: `load_split_per_row` (rows as Python dicts, one `tokenize_row`
  per row) + `pack_examples`, the path before the cache;
- cached, first run: `load_split` (datasets.map, `--num-proc` processes,
  flat arrays written to an empty cache) + `to_rows` (bins over the lengths);
- cached, second run: the same against the cache the first one wrote;
- cached, first run at `--big-rows`, for memory growth.
Peak memory is the high-water mark of the proportional set size (PSS: the
resident set with pages shared between processes split among them, so a
forked worker does not count its parent's pages again) summed over the
process tree (the map's worker processes included), sampled every 20 ms.

Prints rows/s and tokens/s side by side and the ratio (target >= 3x on 2
cores), peak memory at both sizes (target: growth <= 1.5x for 10x rows, under
4 GiB), and the second run's time against the first (target < 5%). Also the
time to read every packed row once from the memory map, which training
pays a step at a time. `--quick`: 2K and 20K rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORDS = ("the a of to and in is it that for on with as was at by be this from or have an are not but what all "
         "were when we there can your which their if do will each about how up out them then she many some so "
         "these would other into has more her two like him see time could no make than first been its who now "
         "people my made over did down only way find use may water long little very after words called just "
         "where most know get through back much before go good new write our used me man too any day same right "
         "look think also around another came come work three word must because does part even place well such "
         "number sum prime function value result answer check step therefore hence equation solve python code "
         "list return print loop array index string weather city temperature convert search query").split()
SHARD_ROWS = 10_000


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, k=words)).capitalize() + "."


def text(rng: random.Random, words: int) -> str:
    out, left = [], words
    while left > 0:
        n = min(left, rng.randint(6, 18))
        out.append(sentence(rng, n))
        left -= n
    return " ".join(out)


def conversation(rng: random.Random, index: int) -> dict:
    """One row in the released Dolci SFT shape, about `target` tokens of the tiny tokenizer long."""
    target = int(math.exp(rng.uniform(math.log(200), math.log(4000))))
    tool = rng.random() < 1 / 3
    exchanges = rng.randint(1, 3)
    per_turn = max(20, target // (exchanges * (5 if tool else 3)))

    def turn(role, content, functions=None, function_calls=None):
        return {"role": role, "content": content, "functions": functions, "function_calls": function_calls}

    messages = []
    if tool:
        spec = json.dumps([{"name": "get_weather", "description": text(rng, 8),
                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}])
        messages.append(turn("system", "You are a helpful assistant with tools.", functions=spec))
    elif rng.random() < 0.3:
        messages.append(turn("system", text(rng, 12)))
    for _ in range(exchanges):
        messages.append(turn("user", text(rng, per_turn)))
        if tool:
            messages.append(turn("assistant", "", function_calls=f'get_weather(city="{rng.choice(WORDS)}")'))
            messages.append(turn("environment", json.dumps({"temperature_c": rng.randint(-5, 35),
                                                            "sky": text(rng, per_turn)})))
        think = f"<think>{text(rng, per_turn)}</think>" if rng.random() < 0.8 else ""
        messages.append(turn("assistant", think + text(rng, per_turn)))
    return {"id": f"bench-{index}", "messages": messages, "dataset_source": "tool" if tool else "chat"}


def write_shard(args: tuple[str, int, int]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, start, count = args
    rng = random.Random(start)
    rows = [conversation(rng, start + i) for i in range(count)]
    turn = pa.struct([("role", pa.string()), ("content", pa.string()), ("functions", pa.string()),
                      ("function_calls", pa.string())])
    schema = pa.schema([("id", pa.string()), ("messages", pa.list_(turn)), ("dataset_source", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def generate(directory: Path, rows: int, shard: int, processes: int) -> None:
    """`rows` conversations in shards of `shard` rows, `train-NNNNN-of-MMMMM.parquet`."""
    from multiprocessing import Pool

    directory.mkdir(parents=True)
    shards = math.ceil(rows / shard)
    jobs = [(str(directory / f"train-{i:05d}-of-{shards:05d}.parquet"), i * shard, min(shard, rows - i * shard))
            for i in range(shards)]
    with Pool(processes) as pool:
        pool.map(write_shard, jobs)


def build_tokenizer(path: Path) -> None:
    from posttrain.tiny.tokenizer import train_tokenizer

    rng = random.Random(7)
    sample = [json.dumps(conversation(rng, i)) for i in range(300)]
    train_tokenizer(sample, vocab_size=2048, model_max_length=1 << 20).save_pretrained(str(path))


# --------------------------------------------------------------------------- one measurement (a subprocess)


def measure(mode: str, data: str, tokenizer_path: str, cache: str, max_length: int, num_proc) -> dict:
    from transformers import AutoTokenizer

    from posttrain.config import validate
    from posttrain.data import sft as D
    from posttrain.data.packing import pack_examples

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = validate({"stage": "sft", "model": {"path": "unused"}, "output": {"dir": "unused"},
                       "optim": {"lr": 1e-3}, "batch": {"tokens": 8 * max_length, "micro_batch_size": 1},
                       "data": {"train": [{"path": data}], "max_length": max_length, "overlong": "truncate",
                                "cache_dir": cache, "num_proc": num_proc}})
    start = time.perf_counter()
    if mode == "per-row":
        examples, report = D.load_split_per_row(config, tokenizer, "train")
        rows = pack_examples(examples, max_length)
    else:
        examples, report = D.load_split(config, tokenizer, "train")
        rows = D.to_rows(examples, max_length, packing=True)
    seconds = time.perf_counter() - start
    out = {"seconds": seconds, "rows": report.rows, "examples": report.examples, "tokens": report.tokens,
           "target_tokens": report.target_tokens, "packed": len(rows)}
    if mode != "per-row":
        start = time.perf_counter()
        for r in range(len(rows)):
            rows[r]
        out["read_seconds"] = time.perf_counter() - start
    return out


def run_measured(args: list[str], env: dict) -> dict:
    """Run this script's `--measure` in a subprocess; its result and two peaks of its process tree's memory.

    PSS counts every resident page, file-backed ones included: the pages of the memory-mapped token files a
    run has read, which the kernel reclaims under pressure like any page cache. Anonymous memory (RSS minus
    file-backed and shared pages, summed over the tree; copy-on-write pages of forked workers counted in each)
    is what a node must actually hold.
    """
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, env=env, text=True)
    peak, peak_anon, done = 0, 0, threading.Event()

    def sample():
        nonlocal peak, peak_anon
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [p for p in (root, *root.children(recursive=True)) if p.is_running()]
                peak = max(peak, sum(p.memory_full_info().pss for p in tree))
                peak_anon = max(peak_anon, sum(m.rss - m.shared for m in (p.memory_info() for p in tree)))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"measurement {args} failed with exit status {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mib"], result["anon_mib"] = peak / 2**20, peak_anon / 2**20
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--num-proc", type=int, default=None, help="tokenising processes (default: CPUs, at most 16)")
    parser.add_argument("--quick", action="store_true", help="2K and 20K rows")
    parser.add_argument("--measure", nargs=4, metavar=("MODE", "DATA", "TOKENIZER", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.max_length, args.num_proc)))
        return 0
    if args.quick:
        args.rows, args.big_rows = 2_000, 20_000
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        build_tokenizer(tmp / "tokenizer")
        shard = math.gcd(args.rows, SHARD_ROWS)  # the small set is the big one's first shards
        generate(tmp / "big", args.big_rows, shard, processes=os.cpu_count() or 1)
        small = tmp / "small"
        small.mkdir()
        for path in sorted((tmp / "big").glob("*.parquet"))[:args.rows // shard]:
            os.link(path, small / path.name)
        print(f"workload: {args.rows} and {args.big_rows} conversations generated in "
              f"{time.perf_counter() - started:.0f} s; max_length {args.max_length}, {os.cpu_count()} CPUs")

        def run(mode, data, cache, name):
            env = dict(os.environ, HF_DATASETS_CACHE=str(tmp / f"hf-{name}"), HF_HUB_OFFLINE="1",
                       TOKENIZERS_PARALLELISM="false")
            extra = ["--max-length", str(args.max_length)] + (["--num-proc", str(args.num_proc)] if args.num_proc else [])
            return run_measured(["--measure", mode, str(data), str(tmp / "tokenizer"),
                                 str(tmp / cache), *extra], env)

        old = run("per-row", small, "unused", "old")
        first = run("cached", small, "cache-small", "first")
        second = run("cached", small, "cache-small", "second")
        big = run("cached", tmp / "big", "cache-big", "big")
    same = all(old[k] == first[k] for k in ("rows", "examples", "tokens", "target_tokens", "packed"))
    print(f"{'':>22} {'rows':>8} {'tokens':>11} {'seconds':>8} {'rows/s':>8} {'tokens/s':>10} {'peak PSS':>11} "
          f"{'peak anon':>11}")
    for name, r in (("per-row + pack", old), ("cache, first run", first), ("cache, second run", second),
                    (f"cache, first, {args.big_rows}", big)):
        print(f"{name:>22} {r['rows']:8d} {r['tokens']:11d} {r['seconds']:8.2f} {r['rows'] / r['seconds']:8.0f} "
              f"{r['tokens'] / r['seconds']:10.0f} {r['peak_mib']:7.0f} MiB {r['anon_mib']:7.0f} MiB")
    print(f"same examples, tokens and packed rows on both paths: {'yes' if same else 'NO'}")
    print(f"tokenise+pack throughput, cache first run / per-row: {old['seconds'] / first['seconds']:.2f}x (target >= 3x)")
    for label, key in (("PSS (file-backed pages of the mapped cache included)", "peak_mib"),
                       ("anonymous memory", "anon_mib")):
        print(f"peak {label}: {big[key]:.0f} MiB at {args.big_rows} rows vs {first[key]:.0f} MiB at {args.rows}: "
              f"{big[key] / first[key]:.2f}x (target <= 1.5x, under 4096 MiB)")
    print(f"second run / first run: {second['seconds'] / first['seconds']:.1%} (target < 5%)")
    print(f"reading every packed row once from the memory map (paid a step at a time in training): "
          f"{first['read_seconds']:.2f} s for {first['packed']} rows at {args.rows}, "
          f"{big['read_seconds']:.2f} s for {big['packed']} rows at {args.big_rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
