"""`posttrain eval`: benchmark tasks on one checkpoint (`posttrain.eval.runner`).

    posttrain eval CKPT --suite olmo3-think [--tasks a,b] [--limit N] [--output DIR]
                   [--engine vllm|hf] [--engines K] [--stage sft|dpo|final] [key=value | TASK:key=value ...]

Writes DIR/results.json, DIR/<suite>.md (with the released Olmo 3 numbers
beside ours) and DIR/<task>.jsonl; responses are cached under DIR/cache/, so
a rerun only scores again and a killed run resumes. Overrides go into the
task specs (`sampling.n=4`, `humaneval:sampling.max_tokens=256`,
`verifier_options.endpoint=http://...`) or, as `rollout.key=value`, into the
engines' settings (`rollout.kv_cache_gib=2`).
"""

from __future__ import annotations

import argparse
import sys

HELP = "evaluate a checkpoint on benchmark tasks (a suite such as olmo3-think, or named tasks)"
INTERMIXED = True  # CKPT first, key=value overrides after the options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="a Hugging Face checkpoint directory")
    parser.add_argument("--suite", help="a suite of tasks: olmo3-think, olmo3-instruct")
    parser.add_argument("--tasks", default="", metavar="a,b",
                        help="only these tasks of the suite, or (without --suite) these tasks by name or YAML path")
    parser.add_argument("--limit", type=int, metavar="N", help="the first N items of each task (default: all)")
    parser.add_argument("--output", default="eval", metavar="DIR", help="where results, tables and the cache go")
    parser.add_argument("--engine", default="vllm", help="rollout engine: vllm or hf")
    parser.add_argument("--engines", type=int, default=1, metavar="K",
                        help="K engine actors on Ray splitting the prompts; 0: one engine in this process, no Ray")
    parser.add_argument("--stage", choices=("sft", "dpo", "final"),
                        help="the released Olmo 3 column to compare with (default: from the checkpoint's manifest)")
    parser.add_argument("--data", action="append", default=[], metavar="TASK=PATH",
                        help="read a task's items from a local file instead of its dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="task spec overrides for every task (sampling.n=4) or one (humaneval:sampling.n=4); "
                             "rollout.key=value for the engines")


def run(args: argparse.Namespace) -> int:
    from posttrain.eval.runner import EvalError, evaluate, parse_paths

    if args.limit is not None and args.limit < 1:
        print("eval: --limit must be >= 1", file=sys.stderr)
        return 2
    try:
        content = evaluate(args.checkpoint, suite=args.suite, tasks=[t.strip() for t in args.tasks.split(",")],
                           limit=args.limit, output=args.output, overrides=args.overrides, engine=args.engine,
                           engines=args.engines, paths=parse_paths(args.data), stage=args.stage, seed=args.seed)
    except EvalError as err:
        print(f"eval: {err}", file=sys.stderr)
        return 2
    from posttrain.eval.results import markdown, markdown_name

    print(markdown(content))
    print(f"written: {args.output}/results.json, {args.output}/{markdown_name(content)}, "
          + ", ".join(f"{args.output}/{t}.jsonl" for t in content["tasks"]))
    return 0
