"""Verifier throughput, measured side by side in one run.

- math: items per second through `rewards.score_batch` (reward worker
  processes), on RL-shaped data: prompts x 8 samples, answers boxed in
  varied but equivalent forms, half of them wrong; integers, fractions and
  symbolic expressions. Target: over 500 items/s on 2 cores.
- code_stdio: programs x stdin/stdout tests through `score_batch` (all
  tests of a program in one sandbox, sandboxes in parallel workers) against
  the naive way: one fresh `python -c` subprocess per test, one after the
  other, unsandboxed. Target: at least 3x the naive rate. The same ratio
  against a naive run that skips site initialisation (`python -I -S`) is
  printed too, as a stricter comparison.

    python bench/verifiers.py [--workers 2] [--math-items 4000] [--programs 24] [--tests 8]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time

import rewards
from rewards.code import normalize_output

SAMPLES = 8  # completions per prompt, as in a GRPO group


def math_items(n: int, seed: int = 0) -> list[dict]:
    """Prompt groups whose samples answer in equivalent or wrong forms."""
    rng = random.Random(seed)
    items = []
    while len(items) < n:
        kind = rng.random()
        if kind < 0.6:
            value = rng.randint(-50, 2000)
            gold, right, wrong = str(value), [str(value), f"{value}.0", f"{value:,}"], [str(value + rng.randint(1, 9))]
        elif kind < 0.8:
            a, b = rng.randint(1, 30), rng.randint(2, 30)
            gold = f"\\frac{{{a}}}{{{b}}}"
            right = [gold, f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}", f"\\frac{{{2 * a}}}{{{2 * b}}}"]
            wrong = [f"\\frac{{{a + 1}}}{{{b}}}", f"\\frac{{{b}}}{{{a}}}"]
        else:
            k = rng.randint(2, 9)
            gold = rng.choice([f"{k}\\sqrt{{2}}", f"x^2 + {2 * k}x + {k * k}", f"\\frac{{\\pi}}{{{k}}}"])
            right = {f"{k}\\sqrt{{2}}": [f"\\sqrt{{{2 * k * k}}}", f"{k}\\sqrt{{2}}"],
                     f"x^2 + {2 * k}x + {k * k}": [f"(x+{k})^2", f"x^2+{2 * k}x+{k * k}"],
                     f"\\frac{{\\pi}}{{{k}}}": [f"\\pi/{k}", f"\\frac{{\\pi}}{{{k}}}"]}[gold]
            wrong = [f"{k + 1}\\sqrt{{2}}", f"(x+{k + 1})^2", f"\\pi/{k + 1}"]
        for _ in range(SAMPLES):
            answer = rng.choice(right if rng.random() < 0.5 else wrong)
            text = f"<think>Let me work it out step by step.</think>We compute carefully. The answer is $\\boxed{{{answer}}}$."
            items.append({"verifier": "math", "prediction": text, "label": gold})
    return items[:n]


PROGRAMS = {
    "sum": ("import sys\nprint(sum(map(int, sys.stdin.read().split())))", lambda xs: str(sum(xs))),
    "max": ("n = list(map(int, input().split()))\nprint(max(n))", lambda xs: str(max(xs))),
    "sorted": ("import sys\nprint(*sorted(map(int, sys.stdin.read().split())))", lambda xs: " ".join(map(str, sorted(xs)))),
    "wrong_sum": ("import sys\nprint(sum(map(int, sys.stdin.read().split())) + 1)", lambda xs: str(sum(xs))),
    "squares": ("for x in map(int, input().split()):\n    print(x * x)", lambda xs: "\n".join(str(x * x) for x in xs)),
    "crash_on_negative": ("xs = list(map(int, input().split()))\nassert min(xs) >= 0\nprint(sum(xs))", lambda xs: str(sum(xs))),
}


def code_items(programs: int, tests: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    names = sorted(PROGRAMS)
    items = []
    for p in range(programs):
        source, solve = PROGRAMS[names[p % len(names)]]
        cases = []
        for _ in range(tests):
            xs = [rng.randint(-20, 99) for _ in range(rng.randint(1, 8))]
            cases.append({"input": " ".join(map(str, xs)) + "\n", "output": solve(xs)})
        items.append({"verifier": "code_stdio", "prediction": f"```python\n{source}\n```", "label": {"tests": cases}})
    return items


def naive_code(items: list[dict], flags: tuple[str, ...] = ()) -> list[float]:
    """The baseline: each test in a fresh interpreter, sequentially, no sandbox."""
    scores = []
    for item in items:
        program = rewards.code.extract_program(item["prediction"])
        passed = 0
        for test in item["label"]["tests"]:
            run = subprocess.run([sys.executable, *flags, "-c", program], input=test["input"], capture_output=True, text=True, timeout=10)
            passed += run.returncode == 0 and normalize_output(run.stdout) == normalize_output(test["output"])
        scores.append(passed / len(item["label"]["tests"]))
    return scores


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--math-items", type=int, default=4000)
    parser.add_argument("--programs", type=int, default=24)
    parser.add_argument("--tests", type=int, default=8)
    args = parser.parse_args()

    # Start the workers once (a fork server warming math-verify, langdetect and Punkt); not part of the rates.
    _, startup = timed(rewards.score_batch, math_items(64, seed=99) + code_items(2, 2, seed=99), max_workers=args.workers)
    print(f"reward workers: {args.workers}, start-up {startup:.1f} s (once per process, not counted below)")

    items = math_items(args.math_items)
    results, seconds = timed(rewards.score_batch, items, max_workers=args.workers)
    rate = len(items) / seconds
    accuracy = sum(r.score for r in results) / len(results)
    print(f"math: {len(items)} items in {seconds:.2f} s = {rate:.0f} items/s (mean score {accuracy:.2f}; target > 500)")

    code = code_items(args.programs, args.tests)
    ours, ours_s = timed(rewards.score_batch, code, max_workers=args.workers)
    naive, naive_s = timed(naive_code, code)
    strict, strict_s = timed(naive_code, code, ("-I", "-S"))
    agree = [r.score for r in ours] == naive == strict
    n = args.programs * args.tests
    print(f"code_stdio: {args.programs} programs x {args.tests} tests ({n} runs)")
    print(f"  sandboxed score_batch: {ours_s:.2f} s = {n / ours_s:.1f} tests/s")
    print(f"  naive python -c per test: {naive_s:.2f} s = {n / naive_s:.1f} tests/s -> {naive_s / ours_s:.1f}x (target >= 3x)")
    print(f"  naive python -I -S -c per test: {strict_s:.2f} s -> {strict_s / ours_s:.1f}x")
    print(f"  scores agree with the baseline: {agree}")
    rewards.close_pools()
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
