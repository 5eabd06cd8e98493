"""What `posttrain sft|dpo|rlvr` share: arguments, recipe loading, handing over to the stage driver.

`posttrain STAGE --recipe PATH [--output-dir DIR] [--resume] [key=value ...]`
loads and validates the recipe before anything heavy is imported, applies
`--output-dir` to `output.dir`, then calls `posttrain.stages.<stage>.run(config,
resume=...)`, which returns the stage's output directory (checkpoint/,
metrics.jsonl, manifest.json).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

from posttrain.config import RecipeError, load_recipe

STAGES = ("sft", "dpo", "rlvr")  # the chain's order
STAGE_PACKAGE = "posttrain.stages"  # drivers live at STAGE_PACKAGE.<stage>, the chain at STAGE_PACKAGE.pipeline
NOT_BUILT = 2  # exit status of a stage (or chain) that is not built yet, and of a bad recipe


def add_stage_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    parser.add_argument("--recipe", required=True, metavar="PATH", help=f"{stage} recipe YAML, e.g. recipes/tiny/think/{stage}.yaml")
    parser.add_argument("--output-dir", metavar="DIR", help="write the run here instead of the recipe's output.dir")
    parser.add_argument("--resume", action="store_true", help="continue from the last resumable checkpoint in the output dir")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. optim.lr=1e-5 model.path=DIR")


def stage_module(name: str):
    """Import the driver `STAGE_PACKAGE.<name>` if it exists; None when it is not built yet.

    Errors raised while importing a driver that does exist (a missing dependency, a bug) propagate.
    """
    module = f"{STAGE_PACKAGE}.{name}"
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a parent package is missing
        found = None
    return importlib.import_module(module) if found is not None else None


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
    driver = stage_module(stage)
    if driver is None:
        print(f"the {stage} stage is not built yet", file=sys.stderr)
        return NOT_BUILT
    out = Path(driver.run(config, resume=args.resume))
    print(f"{stage} done: {out}")
    return 0
