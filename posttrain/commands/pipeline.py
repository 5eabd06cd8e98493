"""`posttrain pipeline`: run the chain SFT -> DPO -> RLVR for one variant.

Each stage reads the checkpoint the previous one wrote: the SFT recipe's
`model.path` becomes `--base`, and every stage writes under
`RUN_DIR/<stage>/` (checkpoint/, metrics.jsonl, manifest.json). The chain
itself lives in `posttrain.stages.pipeline`, whose contract is
`run(variant, recipes, base, run_dir, start="sft", overrides=()) -> Path`
(the last stage's output directory).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from posttrain.commands._stage import NOT_BUILT, STAGES, stage_module

HELP = "run SFT -> DPO -> RLVR for one variant (think or instruct), each stage reading the last one's checkpoint"
VARIANTS = ("think", "instruct")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, choices=VARIANTS, help="Think (reasons in <think>) or Instruct")
    parser.add_argument("--recipes", metavar="DIR", help="directory holding sft.yaml, dpo.yaml, rlvr.yaml (default: recipes/tiny/VARIANT)")
    parser.add_argument("--base", metavar="CKPT", help="base checkpoint the SFT stage starts from (default: the SFT recipe's model.path)")
    parser.add_argument("--run-dir", required=True, metavar="DIR", help="write RUN_DIR/sft, RUN_DIR/dpo, RUN_DIR/rlvr")
    parser.add_argument("--from", dest="start", choices=STAGES, default=STAGES[0], help="start the chain at this stage (earlier outputs must exist)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides applied to every stage")


def run(args: argparse.Namespace) -> int:
    pipeline = stage_module("pipeline")
    if pipeline is None:
        print("the pipeline is not built yet", file=sys.stderr)
        return NOT_BUILT
    recipes = Path(args.recipes) if args.recipes else Path("recipes/tiny") / args.variant
    out = pipeline.run(
        variant=args.variant,
        recipes=recipes,
        base=Path(args.base) if args.base else None,
        run_dir=Path(args.run_dir),
        start=args.start,
        overrides=tuple(args.overrides),
    )
    print(f"{args.variant} chain done: {out}")
    return 0
