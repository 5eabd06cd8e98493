"""`posttrain pipeline`: run the chain SFT -> DPO -> RLVR for one variant.

    posttrain pipeline --variant think --run-dir runs/think [--tiny DIR] [--from STAGE] [key=value | STAGE:key=value ...]
    posttrain pipeline --variant instruct --think-run runs/think --run-dir runs/instruct

Each stage reads the checkpoint the previous one wrote and writes
`RUN_DIR/<stage>/` (checkpoint/ with a model card, metrics.jsonl,
manifest.json, plots). The SFT input is `--base`, or for Instruct the Think
chain's SFT checkpoint (`--think-run DIR`, as in Olmo 3), or else the SFT
recipe's `model.path`. A rerun skips the stages whose inputs are unchanged;
`--from STAGE` reruns that stage and the ones after it. The chain lives in
`posttrain.pipeline`.

    posttrain pipeline --variant think --run-dir runs/think --eval-suite olmo3-think --eval-limit 20 eval:sampling.n=1

evaluates each stage's checkpoint on a benchmark suite right after the stage
(RUN_DIR/<stage>/eval/<suite>/); the model cards and `posttrain report` show
its table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from posttrain.stages import CHAIN

HELP = "run SFT -> DPO -> RLVR for one variant (think or instruct), each stage reading the last one's checkpoint"
VARIANTS = ("think", "instruct")
DEFAULT_RECIPES = Path("recipes/tiny")
EVAL_PREFIX = "eval:"  # overrides of the --eval-suite task specs, not of a stage's recipe


def eval_size(text: str) -> int | None:
    """`--eval-size`: "all" (None: the whole held-out split), or a count (0: no evaluation)."""
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or a number of prompts, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 'all' or a number >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, choices=VARIANTS, help="Think (reasons in <think>) or Instruct")
    parser.add_argument("--recipes", metavar="DIR", help="directory holding sft.yaml, dpo.yaml, rlvr.yaml (default: recipes/tiny/VARIANT)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--base", metavar="CKPT", help="checkpoint the SFT stage starts from (default: the SFT recipe's model.path)")
    start.add_argument("--think-run", metavar="DIR",
                       help="instruct: start the SFT from the Think chain's SFT checkpoint DIR/sft/checkpoint, as Olmo 3 does")
    parser.add_argument("--run-dir", required=True, metavar="DIR", help="write RUN_DIR/sft, RUN_DIR/dpo, RUN_DIR/rlvr")
    parser.add_argument("--tiny", metavar="DIR", help="read the tiny default from DIR: recipe paths under runs/tiny/ move under DIR/")
    parser.add_argument("--from", dest="start", choices=CHAIN, default=None,
                        help="rerun this stage and every later one (earlier checkpoints must exist); "
                             "default: run the stages whose inputs changed, skip the others")
    parser.add_argument("--eval-size", type=eval_size, default=None, metavar="all|N",
                        help="after the chain, score the input and every stage's checkpoint on the held-out RLVR prompts "
                             "and DPO pairs, into RUN_DIR/eval.json: all of them (default), the first N, or 0: none")
    parser.add_argument("--eval-suite", metavar="NAME",
                        help="after each stage, evaluate its checkpoint on this benchmark suite (olmo3-think, "
                             "olmo3-instruct) into RUN_DIR/<stage>/eval/NAME/ (posttrain eval)")
    parser.add_argument("--eval-tasks", default="", metavar="a,b", help="--eval-suite: only these of its tasks")
    parser.add_argument("--eval-limit", type=int, metavar="N", help="--eval-suite: the first N items of each task")
    parser.add_argument("--eval-engine", default="vllm", help="--eval-suite: rollout engine, vllm or hf")
    parser.add_argument("--eval-engines", type=int, default=1, metavar="K",
                        help="--eval-suite: engine actors on Ray (0: one engine in this process)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides for every stage (optim.lr=1e-5), or for one stage (rlvr:grpo.steps=20); "
                             "eval:key=value overrides the --eval-suite task specs (eval:sampling.n=2)")


def run(args: argparse.Namespace) -> int:
    from posttrain import pipeline

    recipes = Path(args.recipes) if args.recipes else DEFAULT_RECIPES / args.variant
    relocations = (pipeline.Relocation(pipeline.TINY_ROOT, Path(args.tiny)),) if args.tiny else ()
    try:
        base = Path(args.base) if args.base else None
        if args.think_run:
            if args.variant != "instruct":
                print("--think-run is for the instruct chain (its SFT starts from the Think SFT)", file=sys.stderr)
                return 2
            base = pipeline.think_sft_checkpoint(args.think_run)
        stage_overrides = tuple(o for o in args.overrides if not o.startswith(EVAL_PREFIX))
        suite_eval = None
        if args.eval_suite:
            suite_eval = pipeline.SuiteEval(
                suite=args.eval_suite, limit=args.eval_limit, engine=args.eval_engine, engines=args.eval_engines,
                overrides=tuple(o[len(EVAL_PREFIX):] for o in args.overrides if o.startswith(EVAL_PREFIX)),
                tasks=tuple(t.strip() for t in args.eval_tasks.split(",") if t.strip()))
        out = pipeline.run(
            variant=args.variant,
            recipes=recipes,
            base=base,
            run_dir=Path(args.run_dir),
            start=args.start,
            overrides=stage_overrides,
            relocations=relocations,
            eval_size=args.eval_size,
            suite_eval=suite_eval,
        )
    except pipeline.PipelineError as err:
        print(f"pipeline: {err}", file=sys.stderr)
        return 2
    print(f"{args.variant} chain done: {out}")
    return 0
