"""What `posttrain sft|dpo|rlvr` share: arguments, recipe loading, handing over to the stage driver.

`posttrain STAGE --recipe PATH [--output-dir DIR] [--resume] [key=value ...]`
loads and validates the recipe before anything heavy is imported, applies
`--output-dir` to `output.dir`, then calls `posttrain.stages.<stage>.run(config,
resume=...)`, which returns the stage's output directory (checkpoint/,
metrics.jsonl, manifest.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from posttrain.config import RecipeError, load_recipe


def add_stage_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    parser.add_argument("--recipe", required=True, metavar="PATH", help=f"{stage} recipe YAML, e.g. recipes/tiny/think/{stage}.yaml")
    parser.add_argument("--output-dir", metavar="DIR", help="write the run here instead of the recipe's output.dir")
    parser.add_argument("--resume", action="store_true", help="continue from the last resumable checkpoint in the output dir")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. optim.lr=1e-5 model.path=DIR")


def run_stage(stage: str, args: argparse.Namespace) -> int:
    try:
        config = load_recipe(args.recipe, args.overrides)
    except RecipeError as err:
        print(err, file=sys.stderr)
        return 2
    if config.stage != stage:
        print(f"{args.recipe}: this is a {config.stage} recipe; run it with `posttrain {config.stage}`", file=sys.stderr)
        return 2
    if args.output_dir:
        config.output.dir = str(args.output_dir)
    from posttrain.stages import driver  # (imports nothing heavy; the driver it returns does)

    out = Path(driver(stage)(config, resume=args.resume))
    print(f"{stage} done: {out}")
    return 0
